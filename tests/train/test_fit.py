"""The training loop: metrics in the logs, bit-exact resume, NaN diagnosis, warnings."""
import io
import os

import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn
from dlprimer.autograd import Function
from dlprimer.data import DataLoader, load_dataset
from dlprimer.logs import read_jsonl
from dlprimer.optim import SGD, Adam, lr_scheduler
from dlprimer.train import (EPOCH_METRICS, STEP_METRICS, DyingReLUWarning,
                            ExplodingGradientWarning, TrainingDiverged,
                            VanishingGradientWarning, evaluate, fit)


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


def _setup(iris, seed=0, dropout=0.0, lr=1e-2, hidden=16, loader_seed=1):
    dp.manual_seed(seed)
    model = nn.MLP([4, hidden, hidden, 3], dropout=dropout)
    opt = Adam(model.parameters(), lr=lr)
    train = DataLoader(iris.train, batch_size=16, shuffle=True, seed=loader_seed)
    val = DataLoader(iris.val, batch_size=64)
    return model, opt, train, val


def test_logs_hold_every_metric(iris, tmp_path):
    model, opt, train, val = _setup(iris)
    res = fit(model, opt, train, val, epochs=2, log_dir=tmp_path, progress=False, memory_every=3)
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in recs if r["event"] == "step"]
    epochs = [r for r in recs if r["event"] == "epoch"]
    assert len(steps) == 2 * len(train) == res.step and len(epochs) == 2
    for k in STEP_METRICS:
        assert all(k in r for r in steps), k
    for k in EPOCH_METRICS:
        assert all(k in r for r in epochs), k
    assert any("mem_peak" in r for r in steps) and epochs[0]["mem_peak"] > 0
    layers = [n.rsplit(".", 1)[0] for n, _ in model.named_parameters()]
    for lay in layers:
        assert f"grad_norm/{lay}" in steps[0] and f"update_ratio/{lay}" in steps[0]
    assert "dead_relu/0" in steps[0] and "dead_relu/1" in steps[0]
    assert np.isclose(steps[0]["grad_norm"], np.sqrt(sum(steps[0][f"grad_norm/{lay}"] ** 2
                                                         for lay in dict.fromkeys(layers))))
    assert 0 <= epochs[-1]["val_acc"] <= 1 and epochs[-1]["train_loss"] < epochs[0]["train_loss"] * 1.5
    assert recs[0]["event"] == "config" and recs[0]["optimizer"] == "Adam"
    tb = tmp_path / "tensorboard"
    try:
        import tensorboardX  # noqa: F401  (the `log` extra)
    except ImportError:
        assert not tb.exists()
    else:
        assert tb.is_dir() and any(n.startswith("events.out") for n in os.listdir(tb))


def test_a_meter_that_sees_the_warm_up_skips_the_first_step(iris, monkeypatch):
    """The JIT's meter would count numba's compiles and cache loads (Python objects that
    tracemalloc sees) as the step's allocations: the run's first step is then warm-up,
    neither metered nor timed, and the next one is the first metered step."""
    model, *_ = _setup(iris)
    meter = next(iter(model.parameters())).backend.memory
    for sees in (False, True):
        monkeypatch.setattr(meter, "sees_warm_up", sees)
        model, opt, train, _ = _setup(iris)
        res = fit(model, opt, train, epochs=1, progress=False, memory_every=2)
        n = len(res.steps)
        first = 2 if sees else 1
        metered = [s["step"] for s in res.steps if "mem_peak" in s]
        assert n > 4 and metered == sorted({first} | {k for k in range(first, n + 1) if k % 2})
        assert all(res.steps[k - 1]["mem_peak"] > 0 for k in metered)
        untimed = set(metered) | ({1} if sees else set())
        assert res.epochs[0]["time_train"] == pytest.approx(
            sum(s["time_step"] for s in res.steps if s["step"] not in untimed))


def test_resume_after_crash_is_bit_exact(iris, tmp_path):
    def run(ckdir, steps, crash_at=None, resume=False, seed=0):
        model, opt, train, val = _setup(iris, seed=seed, dropout=0.2, loader_seed=seed + 1)
        sched = lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        calls = {"n": 0}

        def loss_fn(out, y):
            calls["n"] += 1
            if crash_at is not None and calls["n"] == crash_at:
                raise KeyboardInterrupt
            return nn.functional.cross_entropy(out, y)

        res = fit(model, opt, train, val, steps=steps, loss_fn=loss_fn, scheduler=sched,
                  clip=1.0, checkpoint_dir=ckdir, checkpoint_every=3, log_dir=ckdir / "logs",
                  resume=resume, progress=False)
        return model, res

    ref_model, ref = run(tmp_path / "a", steps=17)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", steps=17, crash_at=11)  # dies after the step-9 checkpoint (mid-epoch 2)
    model, res = run(tmp_path / "b", steps=17, resume=True, seed=123)
    assert res.resumed_from.endswith("-00000009.safetensors")  # ckpt-<run id>-<step>
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), n
    a = read_jsonl(tmp_path / "a" / "logs" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "logs" / "metrics.jsonl")
    losses = lambda recs: [(r["step"], r["loss"], r["lr"]) for r in recs if r["event"] == "step"]
    assert losses(a) == losses(b)  # steps 1..17 once each, same values
    ep = lambda recs: [(r["train_loss"], r["val_loss"]) for r in recs if r["event"] == "epoch"]
    assert ep(a) == ep(b)


def test_step_budget_then_resume_for_more_steps(iris, tmp_path):
    def run(d, steps, resume):
        model, opt, train, val = _setup(iris, seed=4)
        fit(model, opt, train, val, steps=steps, checkpoint_dir=d, resume=resume, progress=False)
        return np.concatenate([p.numpy().ravel() for p in model.parameters()])
    full = run(tmp_path / "a", 13, False)
    run(tmp_path / "b", 5, False)  # stops mid-epoch: the final checkpoint keeps its position
    assert np.array_equal(run(tmp_path / "b", 13, True), full)



def test_resume_of_a_finished_run_takes_no_more_steps(iris, tmp_path):
    """Re-running the same command with resume after it finished is a no-op: neither a
    completed step budget nor an early stop trains further."""
    def run(d, resume, lr=None, **kw):
        model, opt, train, val = _setup(iris, seed=4)
        if lr is not None:
            opt = SGD(model.parameters(), lr=lr)
        res = fit(model, opt, train, val, checkpoint_dir=d, resume=resume, progress=False, **kw)
        return res, np.concatenate([p.numpy().ravel() for p in model.parameters()])
    first, w = run(tmp_path / "s", False, steps=5)
    again, w2 = run(tmp_path / "s", True, steps=5)
    assert first.step == again.step == 5 and np.array_equal(w, w2)
    stopped, w = run(tmp_path / "e", False, lr=0.0, epochs=10, early_stopping=1)
    assert stopped.stopped_early and stopped.step < 10 * 8
    again, w2 = run(tmp_path / "e", True, lr=0.0, epochs=10, early_stopping=1)
    assert again.stopped_early and again.step == stopped.step and np.array_equal(w, w2)


class InjectNaN(nn.Module):
    """Multiplies by NaN on its ``at``-th call: a layer whose output goes bad mid-training."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        return x * float("nan") if self.calls >= self.at else x  # the op the report names


def test_nan_in_a_layer_stops_training_naming_the_op(iris, tmp_path):
    dp.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), InjectNaN(at=4), nn.Linear(8, 3))
    train = DataLoader(iris.train, batch_size=16, shuffle=True, seed=0)
    with pytest.raises(TrainingDiverged) as ei:
        fit(model, SGD(model.parameters(), lr=0.1), train, epochs=1, log_dir=tmp_path, progress=False)
    msg = str(ei.value)
    assert ei.value.step == 4 and ei.value.report["layer"] == "2"
    assert "training stopped at step 4: the loss is nan" in msg
    assert "layer '2' (InjectNaN)" in msg and "Mul (created at" in msg and "test_fit.py" in msg
    rec = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["event"] == "diverged"]
    assert rec and rec[0]["op"] == "Mul"


def test_nan_weights_name_the_layer(iris):
    dp.manual_seed(0)
    model = nn.MLP([4, 8, 3])
    opt = SGD(model.parameters(), lr=0.1)
    model[2].weight.data[0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match=r"layer '2' \(Linear\).*op Linear.*non-finite "
                                               r"parameters: 2.weight") as ei:
        fit(model, opt, DataLoader(iris.train, 16), epochs=1, progress=False)
    assert ei.value.report["bad_parameters"] == ["2.weight"]


class BadGrad(Function):
    """Identity forward, NaN backward: a broken gradient formula."""

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy * np.nan


class BadGradLayer(nn.Module):
    def forward(self, x):
        return BadGrad.apply(x)


def test_nan_in_backward_names_the_function(iris):
    dp.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), BadGradLayer(), nn.Linear(8, 3))
    with pytest.raises(TrainingDiverged, match=r"gradient norm is nan.*backward of BadGrad "
                                               r"\(created at .*test_fit.py"):
        fit(model, SGD(model.parameters(), lr=0.1), DataLoader(iris.train, 16), epochs=1,
            progress=False)


def test_warnings_vanishing_exploding_dying(iris, tmp_path):
    model, opt, train, val = _setup(iris)
    with pytest.warns(VanishingGradientWarning, match="vanishing gradients"):
        fit(model, opt, train, epochs=1, vanishing_threshold=1e6, vanishing_patience=2,
            progress=False)
    model, opt, train, val = _setup(iris)
    with pytest.warns(ExplodingGradientWarning, match="exploding gradients"):
        fit(model, opt, train, epochs=2, exploding_factor=1e-3, progress=False)
    model, opt, train, val = _setup(iris)
    model[0].bias.data[...] = -1e3  # every unit of the first ReLU is off for every sample
    with pytest.warns(DyingReLUWarning) as caught:
        res = fit(model, opt, train, epochs=1, log_dir=tmp_path, progress=False)
    assert any("dying ReLUs: 100% of the units of ReLU #0" in str(w.message) for w in caught)
    assert res.steps[0]["dead_relu/0"] == 1.0
    assert any(r["event"] == "warning" for r in read_jsonl(tmp_path / "metrics.jsonl"))


def test_early_stopping_and_restore_best(iris):
    model, _, train, val = _setup(iris)
    opt = SGD(model.parameters(), lr=0.0)  # nothing improves after the first epoch
    res = fit(model, opt, train, val, epochs=10, early_stopping=2, progress=False)
    assert res.stopped_early and len(res.epochs) == 3 and res.epochs[-1]["stopped_early"]
    model, opt, train, val = _setup(iris, lr=0.05)
    res = fit(model, opt, train, val, epochs=4, early_stopping={"patience": 10},
              restore_best=True, progress=False)
    assert np.isclose(evaluate(model, val)["val_loss"], res.best_val_loss)



@pytest.mark.filterwarnings("ignore::dlprimer.train.TrainingWarning")
def test_restore_best_survives_a_resume(iris, tmp_path):
    """The best epoch comes before the resume (lr 1.0: epoch 3 of 6): the resumed run
    must still end on that epoch's weights, exactly as the uninterrupted run does."""
    def run(d, epochs, resume):
        model, _, train, val = _setup(iris)
        opt = Adam(model.parameters(), lr=1.0)
        res = fit(model, opt, train, val, epochs=epochs, early_stopping=10, restore_best=True,
                  checkpoint_dir=d, resume=resume, progress=False)
        return res, np.concatenate([p.numpy().ravel() for p in model.parameters()])
    full, w = run(tmp_path / "a", 6, False)
    losses = [e["val_loss"] for e in full.epochs]
    assert int(np.argmin(losses)) < 3  # the premise: the best epoch is before the resume
    run(tmp_path / "b", 3, False)
    resumed, w2 = run(tmp_path / "b", 6, True)
    assert resumed.best_val_loss == full.best_val_loss and np.array_equal(w, w2)


def test_plateau_scheduler_and_epoch_interval(iris):
    model, opt, train, val = _setup(iris)
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    fit(model, opt, train, val, epochs=3, scheduler=sched, progress=False)
    model, opt, train, val = _setup(iris)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    res = fit(model, opt, train, epochs=2, scheduler=sched, scheduler_interval="epoch",
              progress=False)
    assert res.steps[-1]["lr"] == pytest.approx(0.005)


def test_progress_plain_lines_without_a_terminal(iris):
    model, opt, train, val = _setup(iris)
    out = io.StringIO()
    fit(model, opt, train, val, epochs=2, stream=out)
    lines = out.getvalue().splitlines()
    assert any(ln.startswith("epoch 1/2  step") and "val_acc" in ln for ln in lines)
    assert any(ln.startswith("step ") for ln in lines)
    out = io.StringIO()
    fit(model, opt, train, epochs=1, stream=out, progress=False)
    assert out.getvalue() == ""


def test_regression_default_loss():
    s = load_dataset("regression", n_samples=100)
    model = nn.MLP([10, 8, 1])
    res = fit(model, SGD(model.parameters(), lr=0.01), DataLoader(s.train, 20),
              DataLoader(s.val, 20), epochs=1, progress=False)
    assert "val_loss" in res.final and "val_acc" not in res.final


def test_bad_arguments(iris, tmp_path):
    model, opt, train, val = _setup(iris)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(model, opt, train, epochs=0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        fit(model, opt, train, steps=-1)
    with pytest.raises(ValueError, match="scheduler_interval"):
        fit(model, opt, train, scheduler_interval="batch")
    with pytest.raises(ValueError, match="clip must be a positive"):
        fit(model, opt, train, clip=0)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fit(model, opt, train, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_dir"):
        fit(model, opt, train, checkpoint_every=5, progress=False)  # was silently ignored
    with pytest.raises(ValueError, match="early_stopping watches the validation loss"):
        fit(model, opt, train, early_stopping=3)
    with pytest.raises(ValueError, match="unknown keys"):
        fit(model, opt, train, val, early_stopping={"patience": 1, "mode": "max"})
    with pytest.raises(TypeError, match="model must be a Module"):
        fit(lambda x: x, opt, train)
    with pytest.raises(TypeError, match="optimizer needs step"):
        fit(model, object(), train)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        fit(model, opt, train, scheduler=lr_scheduler.ReduceLROnPlateau(opt))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage!" * 4)
    with pytest.raises(dp.CheckpointError, match="bad.safetensors"):
        fit(model, opt, train, resume=bad, progress=False)
