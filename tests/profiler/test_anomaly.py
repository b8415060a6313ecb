"""Anomaly mode names the op and the user's line behind an injected NaN, also
inside a profiled step and inside a checkpointed segment."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.autograd import AnomalyError, Function
from _toy_modules import Linear, Seq, Toy, mse


class PoisonBackward(Function):
    """Identity forward; backward injects a NaN into the gradient."""

    def forward(self, x):
        return x

    def backward(self, gy):
        g = gy.copy()
        g.reshape(-1)[0] = np.nan
        return g


class Poison(Toy):
    def forward(self, x):
        return PoisonBackward.apply(x)


def test_injected_nan_names_op_and_line(rng):
    x = dp.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    with dp.detect_anomaly():
        y = PoisonBackward.apply(x * 2)  # LINE-MARK
        with pytest.raises(AnomalyError) as ei:
            (y * y).sum().backward()
    err = ei.value
    assert err.op == "PoisonBackward"
    assert "PoisonBackward" in str(err) and "LINE-MARK" in str(err)
    assert err.location.endswith(f"test_anomaly.py:{_line_of('LINE-MARK')}")


def test_nan_in_a_layer_of_a_profiled_model_names_the_op(rng):
    net = Seq(Linear(4, 4, rng=rng), Poison(), Linear(4, 2, rng=rng))
    x = dp.tensor(rng.standard_normal((5, 4)))
    y = dp.tensor(rng.standard_normal((5, 2)))
    with dp.detect_anomaly(), pytest.raises(AnomalyError) as ei:
        dp.profiler.profile(net, mse, (x, y), warmup=1, repeats=1, memory=False)
    assert ei.value.op == "PoisonBackward" and "test_anomaly.py" in ei.value.location


def test_nan_inside_checkpoint_is_caught(rng):
    net = Seq(Linear(4, 4, rng=rng), Poison(), Linear(4, 4, rng=rng), Linear(4, 2, rng=rng))
    x = dp.tensor(rng.standard_normal((5, 4)))
    with dp.detect_anomaly(), pytest.raises(AnomalyError) as ei:
        mse(dp.checkpoint_sequential(net, 2, x), 0.0).backward()
    assert ei.value.op == "PoisonBackward"


def test_without_anomaly_mode_nan_passes_silently(rng):
    x = dp.tensor(rng.standard_normal((2, 2)), requires_grad=True)
    PoisonBackward.apply(x).sum().backward()
    assert np.isnan(x.grad.numpy()).any()


def _line_of(marker):
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return i
    raise AssertionError(marker)
