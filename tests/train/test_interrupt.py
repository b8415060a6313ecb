"""Ctrl-C (SIGINT) during training (issue 15, point 10): the running step finishes, a
checkpoint of it is written, the message names that step, and a resume continues to
the same weights as an uninterrupted run."""
import signal
import sys

import numpy as np
import pytest

from dlprimer.train.checkpoints import read_checkpoint

from ._slow_fit import spawn, wait_for

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                                reason="needs POSIX SIGINT")

def _child(d, marker, resume, wait_sigint=0):
    return spawn(d, marker, resume, 30, 10, 3, 5, 0.05, 1, wait_sigint)


def test_sigint_checkpoints_the_step_it_names_and_resumes_exactly(tmp_path):
    ref = _child(tmp_path / "ref", tmp_path / "m0", 0)
    out_ref, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    p = _child(tmp_path / "run", tmp_path / "m1", 0, wait_sigint=1)
    wait_for(tmp_path / "m1", p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    line = out.strip().splitlines()[-1]
    assert line.startswith("INTERRUPTED interrupted at step "), line
    step = int(line.split("interrupted at step ")[1].split(":")[0])
    path = line.split("checkpoint ")[1].split(" holds step ")[0]
    assert line.endswith(f"holds step {step}") and 5 <= step < 30
    state = read_checkpoint(path)
    assert state["step"] == step
    r = _child(tmp_path / "run", tmp_path / "m2", 1)
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    done = out.split()
    assert done[:3] == ["DONE", path, "30"]
    a = read_checkpoint(out_ref.split()[-1])["model"]
    b = read_checkpoint(done[3])["model"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
