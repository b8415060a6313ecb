"""Ctrl-C (SIGINT) during training (issue 15, point 10): the running step finishes, a
checkpoint of it is written, the message names that step, and a resume continues to
the same weights as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dlprimer.train.checkpoints import read_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                                reason="needs POSIX SIGINT")

CHILD = textwrap.dedent("""
    import sys, time
    import dlprimer as dp
    from dlprimer import nn
    from dlprimer.data import DataLoader, load_dataset
    from dlprimer.optim import Adam
    from dlprimer.train import Extension, fit

    d, marker, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

    class Slow(Extension):
        def on_step_end(self, trainer, rec):
            if trainer.step == 5:
                open(marker, "w").close()
            time.sleep(0.05)

    iris = load_dataset("iris", seed=0)
    dp.manual_seed(1)
    model = nn.MLP([4, 8, 3])
    opt = Adam(model.parameters(), lr=1e-2)
    train = DataLoader(iris.train, batch_size=16, shuffle=True, seed=1)
    try:
        res = fit(model, opt, train, steps=30, checkpoint_dir=d, checkpoint_every=10,
                  progress=False, resume=resume, extensions=[Slow()])
    except KeyboardInterrupt as e:
        print("INTERRUPTED", e)
        sys.exit(130)
    print("DONE", res.resumed_from, res.step, res.checkpoint)
""")


def _child(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigint_checkpoints_the_step_it_names_and_resumes_exactly(tmp_path):
    ref = _child(tmp_path / "ref", tmp_path / "m0", 0)
    out_ref, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    p = _child(tmp_path / "run", tmp_path / "m1", 0)
    deadline = time.monotonic() + 120
    while not os.path.exists(tmp_path / "m1"):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
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
