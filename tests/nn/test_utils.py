"""dp.nn.utils.clip_grad_norm_ (``dp.utils.clip_grad_norm_`` is the same function):
PyTorch's semantics, over an arena or plain parameters."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter

SHAPES = [(5, 4), (4,), (3, 3)]


def _setup(seed, scale, in_arena, backend=None):
    rng = np.random.default_rng(seed)
    params = [Parameter(dp.tensor(rng.standard_normal(s).astype(np.float32), backend=backend))
              for s in SHAPES]
    if in_arena:
        dp.optim.SGD(params, lr=0.1)
    grads = [rng.standard_normal(s).astype(np.float32) * scale for s in SHAPES]
    for p, g in zip(params, grads):
        p._accumulate_grad(p.backend.asarray(g))
    return params, grads


def _ref(grads, max_norm, p):
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    total = np.abs(flat).max() if p == float("inf") else (np.abs(flat) ** p).sum() ** (1 / p)
    coef = min(max_norm / (total + 1e-6), 1.0)
    return total, [g * coef for g in grads]


@pytest.mark.parametrize("in_arena", [True, False])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clip_matches_reference(in_arena, norm_type, scale):
    params, grads = _setup(1, scale, in_arena)
    total = dp.utils.clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
    want_total, want = _ref(grads, 1.0, norm_type)
    assert isinstance(total, dp.Tensor) and total.dtype == dp.float32
    assert total.item() == pytest.approx(want_total, rel=1e-5)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.grad.numpy(), w, rtol=1e-5, atol=1e-8)
    if scale == 10.0:
        after = dp.utils.clip_grad_norm_(params, 1.0, norm_type).item()
        assert after == pytest.approx(1.0, rel=1e-4)


def test_arena_is_clipped_in_one_reduction(monkeypatch):
    params, grads = _setup(2, 5.0, in_arena=True)
    seen = []
    be = params[0].backend
    orig = be.grad_norm
    monkeypatch.setattr(be, "grad_norm", lambda arrays, p=2.0: seen.append(arrays) or orig(arrays, p))
    dp.utils.clip_grad_norm_(params, 1.0)
    assert len(seen[0]) == 1 and seen[0][0].size == sum(g.size for g in grads)
    # one parameter without a gradient: its stale arena slot must not count
    params[1].grad = None
    seen.clear()
    total = dp.utils.clip_grad_norm_(params, 100.0).item()
    assert len(seen[0]) == 2
    assert total == pytest.approx(float(np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum()
                                                    for p in params if p.grad is not None))),
                                  rel=1e-5)


def test_clip_matches_torch():
    torch = pytest.importorskip("torch")
    params, grads = _setup(3, 3.0, in_arena=True)
    tps = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    for t, g in zip(tps, grads):
        t.grad = torch.tensor(g)
    total = dp.utils.clip_grad_norm_(params, 0.5)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, 0.5)
    assert total.item() == pytest.approx(ttotal.item(), rel=1e-6)
    for p, t in zip(params, tps):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_clip_edge_cases():
    p = Parameter(dp.ones(3))
    assert dp.utils.clip_grad_norm_([p], 1.0).item() == 0.0  # no gradients at all
    p.grad = dp.tensor(np.array([3.0, 4.0, 0.0], np.float32))
    assert dp.utils.clip_grad_norm_(p, 10.0).item() == pytest.approx(5.0)  # single tensor
    np.testing.assert_array_equal(p.grad.numpy(), [3.0, 4.0, 0.0])  # below max: unchanged
    p.grad = dp.tensor(np.array([np.nan, 1.0, 0.0], np.float32))
    assert np.isnan(dp.utils.clip_grad_norm_([p], 1.0).item())  # NaN propagates, as PyTorch


@pytest.mark.parametrize("args,exc,what", [
    (dict(max_norm=-1.0), ValueError, "max_norm"),
    (dict(max_norm=float("nan")), ValueError, "max_norm"),
    (dict(max_norm=1.0, norm_type=0), ValueError, "norm_type"),
    (dict(max_norm=1.0, norm_type=-2), ValueError, "norm_type"),
])
def test_clip_bad_arguments(args, exc, what):
    p = Parameter(dp.ones(3))
    with pytest.raises(exc, match=what):
        dp.utils.clip_grad_norm_([p], **args)
    with pytest.raises(TypeError, match=r"params\[0\] is a ndarray"):
        dp.utils.clip_grad_norm_([np.ones(3)], 1.0)
