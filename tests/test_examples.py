"""The examples keep working: each runs as a user would run it."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_digits_example_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"DLPRIMER_BACKEND": "cpu", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(ROOT)})   # this checkout, installed or not
    assert out.returncode == 0, out.stderr
    accs = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", out.stdout)]
    assert accs and accs[-1] >= 0.9, out.stdout
    assert "backward/forward time ratio" in out.stdout
