"""A checkpoint write killed with SIGKILL at any point leaves the previous one loadable.

The child process saves checkpoints in a loop through the real writer; its
``_write_all`` is slowed (64 KiB chunks with a pause) so a kill lands inside a
write, not between writes. One trial kills at a known point mid-write
(deterministic); the others at random moments.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dlprimer.train.checkpoints import CheckpointManager, read_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import dlprimer.train.checkpoints as ck

    directory, marker, mid_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real_write = os.write
    writes = {"n": 0}

    def slow_write_all(fd, data):
        view = memoryview(data)
        while view:
            n = real_write(fd, view[:65536])
            view = view[n:]
            writes["n"] += 1
            if mid_after and writes["n"] == mid_after:
                open(marker, "w").close()   # the parent kills us now, mid-write
                time.sleep(60)
            time.sleep(0.002)

    ck._write_all = slow_write_all
    m = ck.CheckpointManager(directory, keep=2)
    step = 0
    while True:
        step += 1
        m.save(step, extra={"w": np.full(400_000, step, np.float32)}, rng=False)
        if step == 1:
            open(marker + ".first", "w").close()
""")


def _run_and_kill(tmp_path, trial, mid_after, delay):
    d = tmp_path / f"t{trial}"
    d.mkdir()
    marker = str(tmp_path / f"marker{trial}")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(d), marker, str(mid_after)], env=env)
    try:
        wait_for = marker if mid_after else marker + ".first"
        deadline = time.monotonic() + 60
        while not os.path.exists(wait_for):
            assert p.poll() is None, "checkpoint writer exited early"
            assert time.monotonic() < deadline, "checkpoint writer never got going"
            time.sleep(0.01)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    return d


def _check_last_good_loads(d):
    m = CheckpointManager(d)
    temporaries = [n for n in os.listdir(d) if ".tmp-" in n]
    path = m.latest()
    assert path is not None
    state = read_checkpoint(path)
    w = state["extra"]["w"]
    assert w.shape == (400_000,) and np.all(w == state["step"])
    m.clean_temporaries()
    assert not [n for n in os.listdir(d) if ".tmp-" in n]
    return state["step"], temporaries


def test_kill_mid_write_keeps_previous_checkpoint(tmp_path):
    d = _run_and_kill(tmp_path, 0, mid_after=30, delay=0.0)  # 30 of ~25 chunks: in write #2
    step, temporaries = _check_last_good_loads(d)
    assert step == 1 and temporaries  # killed inside the second write: first one survives


def test_kill_at_random_moments(tmp_path):
    rng = np.random.default_rng()
    for trial in range(1, 4):
        d = _run_and_kill(tmp_path, trial, mid_after=0, delay=float(rng.uniform(0.0, 0.4)))
        _check_last_good_loads(d)
