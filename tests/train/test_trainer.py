"""The Trainer and its extensions (issue 14): a user extension sees every named point in
order, priorities order the extensions, state survives a resume, and the README's
extension example runs on its own."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn
from dlprimer.data import DataLoader, load_dataset
from dlprimer.optim import SGD
from dlprimer.train import PRIORITY_ACT, PRIORITY_SAVE, Extension, Trainer, fit
from dlprimer.train.extensions import GradientClipping, LRSchedule, MetricLog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


class Recorder(Extension):
    def __init__(self, name, log, priority=None):
        self.name, self.log = name, log
        if priority is not None:
            self.priority = priority

    def __getattribute__(self, attr):
        if attr.startswith("on_"):
            log = object.__getattribute__(self, "log")
            name = object.__getattribute__(self, "name")
            return lambda trainer, *a: log.append((name, attr, trainer.step))
        return object.__getattribute__(self, attr)


def _parts(iris, seed=0):
    dp.manual_seed(seed)
    model = nn.MLP([4, 8, 3])
    return model, SGD(model.parameters(), lr=0.1), DataLoader(iris.train, 40, shuffle=True,
                                                              seed=seed)


def test_named_points_in_order(iris):
    log = []
    model, opt, train = _parts(iris)
    t = Trainer(model, opt, train, DataLoader(iris.val, 64), epochs=2,
                extensions=[Recorder("r", log)])
    res = t.run()
    points = [p for _, p, _ in log]
    n = len(train)
    assert res.step == 2 * n and t.completed
    step = ["on_step_start", "on_backward_end", "on_step_end"]
    epoch = ["on_epoch_start", *step * n, "on_evaluate_end", "on_epoch_end"]
    assert points == ["on_run_start", *epoch * 2, "on_run_end"]
    assert [s for _, p, s in log if p == "on_step_end"] == list(range(1, 2 * n + 1))


def test_priorities_order_extensions(iris):
    log = []
    model, opt, train = _parts(iris)
    exts = [Recorder("save", log, PRIORITY_SAVE), Recorder("plain", log),
            Recorder("act", log, PRIORITY_ACT)]
    Trainer(model, opt, train, steps=1, extensions=exts).run()
    assert [n for n, p, _ in log if p == "on_step_end"] == ["act", "plain", "save"]
    with pytest.raises(TypeError, match="Extension instances"):
        Trainer(model, opt, train, extensions=[object()])


def test_trainer_by_hand_equals_fit(iris, tmp_path):
    """A Trainer assembled from extensions trains exactly as fit with the same arguments."""
    def weights(m):
        return np.concatenate([p.numpy().ravel() for p in m.parameters()])
    model, opt, train = _parts(iris, seed=5)
    sched = dp.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    fit(model, opt, train, epochs=3, scheduler=sched, clip=0.5, progress=False,
        log_dir=tmp_path / "a")
    m2, opt2, train2 = _parts(iris, seed=5)
    sched2 = dp.optim.lr_scheduler.StepLR(opt2, step_size=3, gamma=0.5)
    Trainer(m2, opt2, train2, epochs=3, extensions=[
        LRSchedule(sched2), GradientClipping(0.5), MetricLog(tmp_path / "b")]).run()
    assert np.array_equal(weights(model), weights(m2))
    assert os.path.exists(tmp_path / "b" / "metrics.jsonl")


def test_extension_state_survives_a_resume(iris, tmp_path):
    class Counter(Extension):
        def __init__(self):
            self.seen = 0

        def on_step_end(self, trainer, rec):
            self.seen += 1

        def state_dict(self):
            return {"counter_seen": self.seen}

        def load_state_dict(self, run):
            self.seen = run.get("counter_seen", 0)

    model, opt, train = _parts(iris)
    fit(model, opt, train, steps=5, checkpoint_dir=tmp_path, progress=False, extensions=[Counter()])
    c = Counter()
    model, opt, train = _parts(iris)
    fit(model, opt, train, steps=9, checkpoint_dir=tmp_path, resume=True, progress=False,
        extensions=[c])
    assert c.seen == 9


def test_readme_extension_example_runs_alone(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if "class StopAtAccuracy(Extension)" in b]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    epochs, acc = re.fullmatch(r"(\d+) epochs, val_acc ([\d.]+)\n", p.stdout).groups()
    assert float(acc) >= 0.9 and int(epochs) < 100
