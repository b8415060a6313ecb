"""A training child for the kill/interrupt tests: fit on iris, slowed by an extension
that sleeps after each step and touches ``marker`` at ``marker_step``.

python _slow_fit.py DIR MARKER RESUME(0|1) STEPS CHECKPOINT_EVERY KEEP MARKER_STEP SLEEP SEED
[WAIT_SIGINT(0|1)]; with WAIT_SIGINT 1 the step after the marker waits (up to 120 s) until the
trainer has seen a Ctrl-C, so a loaded machine cannot let the run end before the signal lands.
Prints ``DONE <resumed_from> <step> <checkpoint>``, or ``INTERRUPTED <message>`` and
exits 130 on Ctrl-C.
"""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def spawn(*args):
    """Start this script with ``args`` in a child process (stdout/stderr piped)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # SIGINT at its default in the child even when the test runs in a background job (where
    # the shell ignores it and an ignored SIGINT is inherited): Python then installs its
    # KeyboardInterrupt handler, which the trainer's deferral needs
    return subprocess.Popen([sys.executable, HERE, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the training child never got going"
        time.sleep(0.01)


def main(d, marker, resume, steps, every, keep, marker_step, sleep, seed, wait_sigint="0"):
    import dlprimer as dp
    from dlprimer import nn
    from dlprimer.data import DataLoader, load_dataset
    from dlprimer.optim import Adam
    from dlprimer.train import Extension, fit

    class Slow(Extension):
        def on_step_end(self, trainer, rec):
            if trainer.step == int(marker_step):
                open(marker, "w").close()
            elif trainer.step == int(marker_step) + 1 and wait_sigint == "1":
                deadline = time.monotonic() + 120
                while not trainer._sigint and time.monotonic() < deadline:
                    time.sleep(0.01)
            time.sleep(float(sleep))

    iris = load_dataset("iris", seed=0)
    dp.manual_seed(int(seed))
    model = nn.MLP([4, 8, 3])
    opt = Adam(model.parameters(), lr=1e-2)
    train = DataLoader(iris.train, batch_size=16, shuffle=True, seed=int(seed))
    try:
        res = fit(model, opt, train, steps=int(steps), checkpoint_dir=d,
                  checkpoint_every=int(every), keep_checkpoints=int(keep), progress=False,
                  resume=resume == "1", extensions=[Slow()])
    except KeyboardInterrupt as e:
        print("INTERRUPTED", e, flush=True)
        sys.exit(130)
    print("DONE", res.resumed_from, res.step, res.checkpoint, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
