"""The backend's fused updates over a flat arena equal the per-parameter references,
including parameters that straddle the CPU backend's cache blocks."""
import numpy as np
import pytest

import dlprimer as dp

from .optim_refs import RefAdam, RefLAMB, RefLARS, RefSGD

SIZES = [37, 1, 100, 64, 3]  # with 64-element blocks, parameters straddle blocks


@pytest.fixture
def small_blocks(backend, monkeypatch):
    """The backend object, with 64-element blocks on the CPU so parameters straddle them."""
    be = dp.get_backend()
    if hasattr(be, "OPT_BLOCK"):
        monkeypatch.setattr(be, "OPT_BLOCK", 64)
        monkeypatch.setattr(be, "_opt_scratch_cache", {}, raising=False)
    return be


def _arena(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    w = rng.standard_normal(offsets[-1]).astype(dtype)
    return offsets, w, [rng.standard_normal(offsets[-1]).astype(dtype) for _ in range(3)]


def _split(a, offsets):
    return [a[offsets[i]:offsets[i + 1]].copy() for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                                dict(momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_sgd_update(small_blocks, kw):
    be = small_blocks
    offsets, w, grads = _arena(0)
    p, buf = be.asarray(w.copy()), be.asarray(np.zeros_like(w))
    ref, ws = RefSGD(lr=0.1, **kw), _split(w, offsets)
    for t, g in enumerate(grads):
        be.sgd_update(p, be.asarray(g), buf if kw.get("momentum") else None, 0.1,
                      first_step=(t == 0), **kw)
        ref.step(ws, _split(g, offsets))
        np.testing.assert_allclose(be.to_numpy(p), np.concatenate(ws), rtol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update(small_blocks, decoupled):
    be = small_blocks
    offsets, w, grads = _arena(1)
    p, m, v = be.asarray(w.copy()), be.asarray(np.zeros_like(w)), be.asarray(np.zeros_like(w))
    ref, ws = RefAdam(lr=0.01, weight_decay=0.1, decoupled=decoupled), _split(w, offsets)
    for t, g in enumerate(grads):
        be.adam_update(p, be.asarray(g), m, v, 0.01, 0.9, 0.999, 1e-8, 0.1, t + 1,
                       decoupled=decoupled)
        ref.step(ws, _split(g, offsets))
        np.testing.assert_allclose(be.to_numpy(p), np.concatenate(ws), rtol=1e-12)


def test_lamb_update(small_blocks):
    be = small_blocks
    offsets, w, grads = _arena(2)
    p, m, v = be.asarray(w.copy()), be.asarray(np.zeros_like(w)), be.asarray(np.zeros_like(w))
    ref, ws = RefLAMB(lr=0.05, weight_decay=0.02), _split(w, offsets)
    for t, g in enumerate(grads):
        be.lamb_update(p, be.asarray(g), m, v, offsets, 0.05, 0.9, 0.999, 1e-6, 0.02, t + 1)
        ref.step(ws, _split(g, offsets))
        np.testing.assert_allclose(be.to_numpy(p), np.concatenate(ws), rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lars_update(small_blocks, momentum):
    be = small_blocks
    offsets, w, grads = _arena(3)
    w[offsets[1]:offsets[2]] = 0.0  # a zero-norm parameter: trust ratio 1
    p, buf = be.asarray(w.copy()), be.asarray(np.zeros_like(w))
    ref, ws = RefLARS(lr=0.5, momentum=momentum, weight_decay=0.01, trust_coefficient=0.02), \
        _split(w, offsets)
    for g in grads:
        be.lars_update(p, be.asarray(g), buf if momentum else None, offsets, 0.5, momentum,
                       0.01, 0.02)
        ref.step(ws, _split(g, offsets))
        np.testing.assert_allclose(be.to_numpy(p), np.concatenate(ws), rtol=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 2.5, float("inf")])
def test_grad_norm(small_blocks, norm_type):
    be = small_blocks
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(300,), (7, 9), (0,), ()]]
    flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    want = np.abs(flat).max() if norm_type == float("inf") else (
        (np.abs(flat) ** norm_type).sum() ** (1 / norm_type))
    got = be.grad_norm([be.asarray(a) for a in arrays], norm_type)
    assert isinstance(got, float) and got == pytest.approx(want, rel=1e-6)
    assert be.grad_norm([], norm_type) == 0.0
