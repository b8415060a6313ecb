"""The fused classifier (issue 17, point 2): cross-entropy on a device backend keeps only
O(N) row statistics for backward, never the N x C probabilities, and writes the logits
gradient over the logits when nothing else holds them.

Runs on the fake device (``tests/_fake_device.py``: the generic xp form of
``Backend.fused_classifier_*``); the CUDA kernels' math is compared with NumPy in
``test_cuda_host_math.py`` and their launches in ``test_cuda_launch_args.py``.
"""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer.ops.loss import CrossEntropy

from _fake_device import installed


@pytest.fixture
def dev(monkeypatch):
    with installed(monkeypatch) as d:
        yield d


def _saved_bytes(node, inputs):
    """Bytes a node holds for backward beyond its own inputs (held by the graph anyway)."""
    ids = {id(a) for a in inputs}
    return sum(a.nbytes for a in node.saved if hasattr(a, "nbytes") and id(a) not in ids)


def test_saved_bytes_do_not_grow_with_the_class_count(dev):
    rng = np.random.default_rng()
    n = int(rng.integers(4, 64))
    saved = {}
    for c in (10, 1000, 5000):
        logits = dp.tensor(rng.normal(size=(n, c)).astype(np.float32)).to("cuda").requires_grad_()
        target = dp.tensor(rng.integers(0, c, n)).to("cuda")
        loss = F.cross_entropy(logits, target, label_smoothing=0.1)
        node = loss._node
        assert isinstance(node, CrossEntropy) and node.fused
        saved[c] = _saved_bytes(node, (logits.data, target.data))
    assert saved[10] == saved[1000] == saved[5000] == n * 2 * 4, saved
    with dp.use_backend("cpu"):  # the CPU path keeps the probabilities: N x C
        x = dp.randn(n, 1000, requires_grad=True)
        node = F.cross_entropy(x, dp.tensor(rng.integers(0, 1000, n)))._node
        assert _saved_bytes(node, (x.data,)) >= n * 1000 * 4


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_classifier_equals_the_cpu_loss_and_gradient(dev, eps, reduction):
    rng = np.random.default_rng()
    n, c = int(rng.integers(1, 40)), int(rng.integers(2, 300))
    x = (rng.normal(size=(n, c)) * 5).astype(np.float64)
    x[0, 0] = 1e4
    t = rng.integers(0, c, n)
    gy = rng.normal(size=n) if reduction == "none" else None
    grads = {}
    for name in ("cpu", "cuda"):
        logits = dp.tensor(x).to(name).requires_grad_()
        loss = F.cross_entropy(logits, dp.tensor(t).to(name), label_smoothing=eps,
                               reduction=reduction)
        loss.backward(None if gy is None else dp.tensor(gy).to(name))
        grads[name] = (loss.numpy(), logits.grad.numpy())
    np.testing.assert_allclose(grads["cuda"][0], grads["cpu"][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["cuda"][1], grads["cpu"][1], rtol=1e-10, atol=1e-14)


def test_fused_classifier_gradcheck(dev):
    rng = np.random.default_rng()
    x = dp.tensor(rng.normal(size=(5, 7))).to("cuda").requires_grad_()
    t = dp.tensor(rng.integers(0, 7, 5)).to("cuda")
    dp.gradcheck(lambda a: F.cross_entropy(a * 1.0, t, label_smoothing=0.1), (x,))


def _spy(monkeypatch, dev):
    calls = []
    real = dev.fused_classifier_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("inplace"))
        return real(*args, **kwargs)
    monkeypatch.setattr(dev, "fused_classifier_backward", spy)
    return calls


def test_the_logits_gradient_is_written_in_place_only_when_nothing_holds_the_logits(
        dev, monkeypatch):
    rng = np.random.default_rng()
    calls = _spy(monkeypatch, dev)
    xn, wn = rng.normal(size=(6, 4)), rng.normal(size=(4, 9))
    t = rng.integers(0, 9, 6)
    with dp.use_backend("cpu"):
        w_ref = dp.tensor(wn, requires_grad=True)
        F.cross_entropy(dp.tensor(xn) @ w_ref, dp.tensor(t)).backward()
    x, y = dp.tensor(xn).to("cuda"), dp.tensor(t).to("cuda")
    w = dp.tensor(wn).to("cuda").requires_grad_()
    F.cross_entropy(x @ w, y).backward()  # the logits Tensor is gone: gradient in place
    assert calls == [True]
    np.testing.assert_allclose(w.grad.numpy(), w_ref.grad.numpy(), rtol=1e-12)
    w.grad = None
    out = x @ w  # the caller keeps the logits: they must survive backward
    kept = out.numpy().copy()
    F.cross_entropy(out, y).backward()
    assert calls == [True, False]
    np.testing.assert_array_equal(out.numpy(), kept)
    np.testing.assert_allclose(w.grad.numpy(), w_ref.grad.numpy(), rtol=1e-12)
    w.grad = None
    loss = F.cross_entropy(x @ w, y)
    loss.backward(retain_graph=True)  # a second backward needs the saved logits
    loss.backward()
    assert calls == [True, False, False, True]
    np.testing.assert_allclose(w.grad.numpy(), 2 * w_ref.grad.numpy(), rtol=1e-12)


def test_fusion_off_runs_the_probabilities_path(dev):
    x = dp.tensor(np.random.default_rng().normal(size=(3, 4))).to("cuda").requires_grad_()
    with dp.fusion(False):
        loss = F.cross_entropy(x, dp.tensor([0, 1, 3]).to("cuda"))
    assert not loss._node.fused
