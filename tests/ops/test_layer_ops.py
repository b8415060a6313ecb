"""The ops beyond the MLP -- embedding, conv2d, max/avg pooling, scaled dot-product
attention: float64 finite-difference gradients on fresh random inputs, forward and
backward equal to PyTorch's (float64 to 1e-9, float32 at rounding), and the
bad-input errors naming the shapes."""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F

try:
    import torch
    TF = torch.nn.functional
except ImportError:      # the gradchecks and error tests run without PyTorch
    torch = TF = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _t(a, backend, grad=True, dtype="float64"):
    return dp.tensor(np.asarray(a), dtype=dtype, requires_grad=grad, backend=backend)


def _torch(a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _close(ours, theirs, dtype):
    ours = np.asarray(ours.numpy() if hasattr(ours, "numpy") and not isinstance(ours, np.ndarray) else ours)
    theirs = theirs.detach().numpy()
    if dtype == "float64":
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5)


def _compare(fn_dp, fn_torch, arrays, backend, dtype, rng):
    """Run both frameworks on the same arrays, contract with the same random weights,
    and compare outputs and every input gradient."""
    ours = [_t(a, backend, dtype=dtype) for a in arrays]
    theirs = [_torch(np.asarray(a, dtype=dtype)) for a in arrays]
    y, ty = fn_dp(*ours), fn_torch(*theirs)
    _close(y, ty, dtype)
    w = rng.standard_normal(ty.shape).astype(dtype)
    (y * dp.tensor(w, backend=backend)).sum().backward()
    (ty * torch.tensor(w)).sum().backward()
    for a, b in zip(ours, theirs):
        _close(a.grad, b.grad, dtype)


# -- embedding --------------------------------------------------------------------------------
def test_embedding_gradcheck_and_repeated_indices(backend, rng):
    w = _t(rng.standard_normal((7, 5)), backend)
    idx = dp.tensor(rng.integers(0, 7, size=(4, 6)), backend=backend)
    assert dp.gradcheck(lambda w: F.embedding(idx, w), (w,))
    w.grad = None
    idx_rep = dp.tensor([[2, 2, 2], [2, 0, 1]], backend=backend)
    F.embedding(idx_rep, w).sum().backward()
    g = w.grad.numpy()
    np.testing.assert_allclose(g[2], np.full(5, 4.0))      # row 2 picked four times
    np.testing.assert_allclose(g[[3, 4, 5, 6]], 0.0)


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_embedding_matches_torch(backend, rng, dtype):
    w = rng.standard_normal((11, 4))
    idx = rng.integers(0, 11, size=(3, 9))
    ours = _t(w, backend, dtype=dtype)
    theirs = _torch(w.astype(dtype))
    y = F.embedding(dp.tensor(idx, backend=backend), ours)
    ty = TF.embedding(torch.tensor(idx), theirs)
    _close(y, ty, dtype)
    g = rng.standard_normal(ty.shape).astype(dtype)
    y.backward(dp.tensor(g, backend=backend))
    ty.backward(torch.tensor(g))
    _close(ours.grad, theirs.grad, dtype)


def test_embedding_bad_input(backend):
    w = dp.randn(5, 3, backend=backend)
    with pytest.raises(IndexError, match="index 5 is out of range for a table of 5 rows"):
        F.embedding(dp.tensor([0, 5], backend=backend), w)
    with pytest.raises(IndexError, match="index -1"):
        F.embedding(dp.tensor([-1], backend=backend), w)
    with pytest.raises(TypeError, match="indices must be integers.*float32"):
        F.embedding(dp.tensor([0.0, 1.0], backend=backend), w)
    with pytest.raises(ValueError, match="2-D"):
        F.embedding(dp.tensor([0], backend=backend), dp.randn(5, backend=backend))


# -- conv2d and pooling -------------------------------------------------------------------------
CONV_CASES = [  # (N, C, H, W), (O, KH, KW), stride, padding
    ((2, 3, 7, 6), (4, 3, 3), 1, 0),
    ((2, 2, 8, 8), (3, 3, 2), 2, 1),
    ((1, 1, 5, 5), (2, 5, 5), 1, 0),
    ((3, 2, 6, 9), (2, 1, 3), (2, 3), (0, 1)),
]


@pytest.mark.parametrize("xs,ws,stride,padding", CONV_CASES)
def test_conv2d_gradcheck(backend, rng, xs, ws, stride, padding):
    x = _t(rng.standard_normal(xs), backend)
    w = _t(rng.standard_normal((ws[0], xs[1], ws[1], ws[2])), backend)
    b = _t(rng.standard_normal(ws[0]), backend)
    assert dp.gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, padding), (x, w, b))


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("xs,ws,stride,padding", CONV_CASES)
def test_conv2d_matches_torch(backend, rng, dtype, xs, ws, stride, padding):
    arrays = [rng.standard_normal(xs), rng.standard_normal((ws[0], xs[1], ws[1], ws[2])),
              rng.standard_normal(ws[0])]
    _compare(lambda x, w, b: F.conv2d(x, w, b, stride, padding),
             lambda x, w, b: TF.conv2d(x, w, b, stride, padding), arrays, backend, dtype, rng)


POOL_CASES = [((2, 3, 8, 8), 2, None, 0), ((1, 2, 7, 9), 3, 2, 1), ((2, 1, 6, 6), (2, 3), (1, 2), 0)]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs,k,s,p", POOL_CASES)
def test_pool_gradcheck(backend, rng, kind, xs, k, s, p):
    ours = F.max_pool2d if kind == "max" else F.avg_pool2d
    x = _t(rng.standard_normal(xs), backend)
    assert dp.gradcheck(lambda x: ours(x, k, s, p), (x,))


@needs_torch
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs,k,s,p", POOL_CASES)
def test_pool_matches_torch(backend, rng, kind, xs, k, s, p):
    ours = F.max_pool2d if kind == "max" else F.avg_pool2d
    theirs = TF.max_pool2d if kind == "max" else TF.avg_pool2d
    for dtype in ("float64", "float32"):
        _compare(lambda x: ours(x, k, s, p), lambda x: theirs(x, k, s, p),
                 [rng.standard_normal(xs)], backend, dtype, rng)


def test_conv_and_pool_bad_input(backend):
    x = dp.randn(2, 3, 5, 5, backend=backend)
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 5\) has 3 channels but weight of shape \(4, 2, 3, 3\)"):
        F.conv2d(x, dp.randn(4, 2, 3, 3, backend=backend))
    with pytest.raises(ValueError, match=r"kernel \(7, 7\) is larger than the padded input \(6, 6\)"):
        F.conv2d(dp.randn(2, 3, 4, 4, backend=backend), dp.randn(4, 3, 7, 7, backend=backend),
                 padding=1)
    with pytest.raises(ValueError, match="4-D"):
        F.conv2d(dp.randn(3, 5, 5, backend=backend), dp.randn(4, 3, 3, 3, backend=backend))
    with pytest.raises(ValueError, match="bias of shape"):
        F.conv2d(x, dp.randn(4, 3, 3, 3, backend=backend), dp.randn(3, backend=backend))
    with pytest.raises(ValueError, match="stride must be"):
        F.conv2d(x, dp.randn(4, 3, 3, 3, backend=backend), stride=0)
    with pytest.raises(ValueError, match="kernel_size .* larger than the padded input"):
        F.max_pool2d(x, 6)
    with pytest.raises(ValueError, match="padding"):
        F.avg_pool2d(x, 2, padding=2)


# -- attention ------------------------------------------------------------------------------------
def _bool_mask(rng, shape):
    m = rng.random(shape) > 0.3
    m[..., 0] = True            # every query sees at least one key
    return m


@pytest.mark.parametrize("case", ["plain", "causal", "bool", "float", "cross"])
def test_sdpa_gradcheck(backend, rng, case):
    L, S = (5, 7) if case in ("cross", "bool", "float") else (6, 6)
    q = _t(rng.standard_normal((2, 3, L, 4)), backend)
    k = _t(rng.standard_normal((2, 3, S, 4)), backend)
    v = _t(rng.standard_normal((2, 3, S, 5)), backend)
    mask = None
    if case == "bool":
        mask = dp.tensor(_bool_mask(rng, (L, S)), backend=backend)
    elif case == "float":
        mask = dp.tensor(rng.standard_normal((2, 1, L, S)), backend=backend)
    causal = case == "causal"
    assert dp.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal), (q, k, v))


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["plain", "causal", "bool", "float", "broadcast"])
def test_sdpa_matches_torch(backend, rng, dtype, case):
    L, S = (4, 6) if case != "causal" else (6, 6)
    qs, ks = (2, 2, L, 8), (2, 2, S, 8)
    if case == "broadcast":
        ks = (1, 2, S, 8)
    arrays = [rng.standard_normal(qs), rng.standard_normal(ks), rng.standard_normal(ks[:-1] + (3,))]
    mask = tmask = None
    if case == "bool":
        m = _bool_mask(rng, (L, S))
        mask, tmask = dp.tensor(m, backend=backend), torch.tensor(m)
    elif case == "float":
        m = rng.standard_normal((L, S)).astype(dtype)
        mask, tmask = dp.tensor(m, backend=backend), torch.tensor(m)
    causal = case == "causal"
    _compare(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal),
             lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=tmask, is_causal=causal),
             arrays, backend, dtype, rng)


def test_sdpa_dropout_gradcheck_and_mean(backend, rng):
    q = _t(rng.standard_normal((1, 4, 6)), backend)
    k = _t(rng.standard_normal((1, 5, 6)), backend)
    v = _t(rng.standard_normal((1, 5, 3)), backend)
    seed = int(rng.integers(1 << 30))

    def fn(q, k, v):                      # same dropout mask on every evaluation
        dp.manual_seed(seed)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    assert dp.gradcheck(fn, (q, k, v))
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)


def test_sdpa_bad_input(backend):
    q, k = dp.randn(2, 4, 8, backend=backend), dp.randn(2, 5, 8, backend=backend)
    with pytest.raises(ValueError, match=r"query \(2, 4, 8\), key \(2, 5, 7\)"):
        F.scaled_dot_product_attention(q, dp.randn(2, 5, 7, backend=backend), k)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 4\) does not broadcast"):
        F.scaled_dot_product_attention(q, k, k, attn_mask=dp.ones(4, 4, dtype="bool", backend=backend))
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, k, k, attn_mask=dp.ones(4, 5, dtype="bool", backend=backend),
                                       is_causal=True)


def test_new_ops_state_flops(backend):
    """Every new Function states forward and backward FLOPs (the 2x rule for the products)."""
    from dlprimer.autograd import observe

    class Rec:
        def __init__(self):
            self.nodes = []

        def on_forward(self, node):
            self.nodes.append(node)
    x = dp.randn(2, 3, 8, 8, requires_grad=True, backend=backend)
    w = dp.randn(4, 3, 3, 3, requires_grad=True, backend=backend)
    q = dp.randn(2, 5, 8, requires_grad=True, backend=backend)
    e = dp.randn(10, 4, requires_grad=True, backend=backend)
    with observe(Rec()) as rec:
        F.max_pool2d(F.conv2d(x, w, padding=1), 2)
        F.avg_pool2d(x, 2)
        F.scaled_dot_product_attention(q, q, q)
        F.embedding(dp.tensor([1, 2, 2], backend=backend), e)
    got = {n.name: n.flops() for n in rec.nodes}
    assert got["Conv2d"] == (2 * 2 * 4 * 27 * 64, 2 * 2 * 2 * 4 * 27 * 64)
    fwd, bwd = got["ScaledDotProductAttention"]
    assert (fwd, bwd) == (2 * 50 * 16 + 5 * 50, 4 * 50 * 16 + 4 * 50)   # 2x less the softmax
    assert got["MaxPool2d"][0] > 0 and got["AvgPool2d"][0] > 0 and got["Embedding"] == (0, 12)


# -- linear over stacked inputs -----------------------------------------------------------------
@pytest.mark.parametrize("xs", [(3, 5, 4), (2, 3, 2, 4), (4,)])
def test_linear_stacked_and_strided_inputs_gradcheck(backend, rng, xs):
    # the forward multiplies (..., in) as one (M, in) product; a transposed (strided)
    # input and a 1-D one must give the same gradients
    x = _t(rng.standard_normal(xs), backend)
    w, b = _t(rng.standard_normal((6, 4)), backend), _t(rng.standard_normal(6), backend)
    assert dp.gradcheck(lambda x, w, b: F.linear(x, w, b), (x, w, b))
    if len(xs) == 3:
        xt = _t(rng.standard_normal((xs[1], xs[0], xs[2])), backend)
        assert dp.gradcheck(lambda x, w, b: F.linear(x.transpose(1, 0, 2), w, b), (xt, w, b))


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_stacked_matches_torch(backend, rng, dtype):
    x, w, b = rng.standard_normal((5, 7, 8)), rng.standard_normal((3, 8)), rng.standard_normal(3)
    _compare(lambda x, w, b: F.linear(x, w, b), TF.linear, [x, w, b], backend, dtype, rng)
    xt = rng.standard_normal((7, 5, 8))
    _compare(lambda x, w, b: F.linear(x.transpose(1, 0, 2), w, b),
             lambda x, w, b: TF.linear(x.transpose(0, 1), w, b), [xt, w, b], backend, dtype, rng)


# -- the bias gradient: column sums as a product with a vector of ones -----------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_bias_gradient_for_any_row_count_after_longer_and_shorter_ones(backend, rng,
                                                                               dtype):
    """The ones vector is kept per backend and dtype and grown: rows fewer, more, then
    fewer again than any seen before give each its own exact column sums."""
    from dlprimer.ops.linear import _column_sums
    xp = dp.backend.backend_for(backend).xp
    be = dp.backend.backend_for(backend)
    for m in (int(rng.integers(1, 9)), int(rng.integers(200, 300)), 0, int(rng.integers(9, 50))):
        g = rng.standard_normal((m, 7)).astype(dtype)
        ref = g.astype(np.float64).sum(axis=0)
        got = be.to_numpy(_column_sums(xp, be, be.asarray(g)))
        out = xp.empty(7, dtype)
        assert _column_sums(xp, be, be.asarray(g), out) is out
        tol = 1e-12 if dtype == "float64" else 1e-5 * max(1.0, np.sqrt(m))
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
        np.testing.assert_array_equal(be.to_numpy(out), got)
        assert got.dtype == np.dtype(dtype)


def test_linear_bias_gradient_of_nan_and_inf_propagates(backend, rng):
    from dlprimer.ops.linear import _column_sums
    be = dp.backend.backend_for(backend)
    g = rng.standard_normal((5, 4))
    g[1, 0], g[2, 1], g[3, 2], g[4, 2] = np.nan, np.inf, np.inf, -np.inf
    with np.errstate(invalid="ignore"):   # inf - inf: NumPy's sum warns alike
        got = be.to_numpy(_column_sums(be.xp, be, be.asarray(g)))
    assert np.isnan(got[0]) and got[1] == np.inf and np.isnan(got[2]) and np.isfinite(got[3])


def test_linear_bias_gradient_into_the_arena_matches_the_plain_one(backend, rng):
    """The bias gradient computed into an optimizer's arena slot equals the one computed
    without an arena, and the column sums of the incoming gradient in float64."""
    lin = dp.nn.Linear(5, 3, dtype="float64")
    opt = dp.optim.SGD(lin.parameters(), lr=0.1)
    x = dp.tensor(rng.standard_normal((int(rng.integers(2, 40)), 5)), dtype="float64")
    opt.zero_grad()
    lin(x).tanh().sum().backward()
    assert lin.bias.grad.data.base is not None          # computed in its arena slot
    b = dp.tensor(lin.bias.numpy(), dtype="float64", requires_grad=True)
    F.linear(x, lin.weight.detach(), b).tanh().sum().backward()
    ref = (1 - np.tanh(x.numpy() @ lin.weight.numpy().T + lin.bias.numpy()) ** 2).sum(axis=0)
    np.testing.assert_allclose(lin.bias.grad.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), ref, rtol=1e-12)
