"""Every ```python block of README.md runs on its own, as a user would paste it: alone,
in an empty folder, in a fresh interpreter (issue 15: blocks 2 and 3 needed names from
block 1). Blocks added later are covered without touching this file."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """(line number, source) of each ```python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_the_readme_has_python_blocks_and_the_extractor_finds_them():
    sample = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(sample) == [(2, "a = 1\n"), (8, "b = 2\n")]
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("line,src", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs_alone_in_an_empty_folder(line, src, tmp_path):
    (tmp_path / "block.py").write_text(src)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DLPRIMER_BACKEND="cpu", MPLBACKEND="Agg")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (f"README.md block at line {line} failed when run alone "
                                 f"({time.perf_counter() - t0:.1f} s):\n{src}\n{out.stderr[-3000:]}")
