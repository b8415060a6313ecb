"""MetricLogger: metrics.jsonl and TensorBoard agree after a resume."""
import json
import os
import struct
import subprocess
import sys

import pytest

from dlprimer.logs import MetricLogger, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tb_events(directory):
    """(step, purge-start?) of every event in a TensorBoard directory (TFRecord framing:
    u64 length, u32 crc, payload, u32 crc)."""
    from tensorboardX.proto import event_pb2
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            buf = f.read()
        i = 0
        while i + 12 <= len(buf):
            (n,) = struct.unpack("<Q", buf[i:i + 8])
            ev = event_pb2.Event.FromString(buf[i + 12:i + 12 + n])
            out.append((ev.step, ev.HasField("session_log")
                        and ev.session_log.status == event_pb2.SessionLog.START))
            i += 12 + n + 4
    return out


def test_resume_purges_tensorboard_past_the_checkpoint(tmp_path):
    """A resumed run rewrites metrics.jsonl to the checkpoint's step; TensorBoard must drop
    the killed run's later points too (a purge marker at resume_step + 1), else its curves
    show both runs' steps after the checkpoint."""
    pytest.importorskip("tensorboardX")
    with MetricLogger(tmp_path, mlflow=False) as log:
        for s in range(1, 9):
            log.log({"event": "step", "step": s, "loss": 1.0 / s})
    with MetricLogger(tmp_path, mlflow=False, resume_step=5) as log:
        log.log({"event": "step", "step": 6, "loss": 0.5})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    purges = [step for step, start in _tb_events(tmp_path / "tensorboard") if start]
    assert purges[-1] == 6


def test_tensorboard_logging_does_not_import_torch(tmp_path):
    """tensorboardX imports PyTorch whenever it can (seconds of a primer run); the logger
    imports it with torch held off, writes its events, and leaves torch importable."""
    pytest.importorskip("tensorboardX")
    code = (
        "import importlib.util, json, sys\n"
        "from dlprimer.logs import MetricLogger\n"
        f"log = MetricLogger({str(tmp_path)!r}, tensorboard=True, mlflow=False)\n"
        "log.log({'event': 'step', 'step': 1, 'loss': 0.5}); log.close()\n"
        "had = 'torch' in sys.modules\n"
        "later = None\n"
        "if importlib.util.find_spec('torch') is not None:\n"
        "    import torch; later = torch.ones(2).sum().item()\n"
        "print(json.dumps([had, later]))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    had, later = json.loads(out.stdout.strip().splitlines()[-1])
    assert had is False and later in (None, 2.0)
    assert [s for s, _ in _tb_events(tmp_path / "tensorboard") if s == 1]
