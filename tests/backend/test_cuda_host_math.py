"""The CUDA kernels' per-element math, compiled for the host, against NumPy.

``kernels/*.cuh`` hold the math of every kernel as ``__host__ __device__``
functions; here the host C++ compiler builds them (``kernel_host.py``) and each is
compared on fresh random inputs plus +-1e4, zeros, -0.0 and NaN with

* the NumPy backend's fused op (``CPUBackend``), the reference the GPU must match;
* an independent float64 NumPy evaluation of the formula, and PyTorch where installed.

float32 results are compared with float32-rounding tolerances (:func:`assert_close`);
NaN must appear exactly where the reference has NaN. The dropout hash must agree
bit for bit. No GPU is needed; the test skips only without a host C++ compiler.
"""
import math

import numpy as np
import pytest
import scipy.special as sp

from . import kernel_host
from ._activation_ref import FROM_OUTPUT, PARAM, reference
from .cuda_testing import SeededRng, assert_close, grads, sample
from dlprimer.backend.cpu import CPUBackend

DTYPES = (np.float32, np.float64)


@pytest.fixture
def rng():
    return SeededRng(int(np.random.SeedSequence().entropy % 2**32))


@pytest.fixture(scope="module")
def cpu():
    return CPUBackend()


def cpu_op(cpu, name, *args, **kwargs):
    """Call a CPU backend fused op; skip (naming the op) where it is not implemented yet."""
    try:
        return getattr(cpu, name)(*args, **kwargs)
    except NotImplementedError:
        pytest.skip(f"CPUBackend.{name} is not implemented on this branch")


# -- activations ------------------------------------------------------------------------
def cpu_activation(cpu, name, x, gy, a):
    base = {"gelu_erf": "gelu", "gelu_tanh": "gelu"}.get(name, name)
    kw = {"approximate": "tanh" if name == "gelu_tanh" else "none"} if base == "gelu" else {}
    args = (a,) if name in PARAM else ()
    y = cpu_op(cpu, f"{base}_forward", x, *args, **kw)
    first = y if name in FROM_OUTPUT else x
    gx = cpu_op(cpu, f"{base}_backward", first, gy, *args, **kw)
    return y, gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", kernel_host.ACTS)
def test_activation_matches_numpy_backend(host, cpu, rng, name, dtype):
    x = sample(rng, dtype)
    gy = grads(rng, x)
    a = PARAM.get(name, 0.0)
    y = host.act_forward(name, x, a)
    gx = host.act_backward(name, y if name in FROM_OUTPUT else x, gy, a)
    y_cpu, gx_cpu = cpu_activation(cpu, name, x, gy, a)
    tag = f"{name} {np.dtype(dtype).name} (seed {rng.seed_used})"
    assert_close(y, y_cpu, x, what=f"{tag} forward vs CPUBackend", factor=2)
    assert_close(gx, gx_cpu, x, gy, what=f"{tag} backward vs CPUBackend", factor=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", kernel_host.ACTS)
def test_activation_matches_float64_formula(host, rng, name, dtype):
    x = sample(rng, dtype)
    gy = grads(rng, x)
    a = PARAM.get(name, 1.0)
    y = host.act_forward(name, x, a)
    gx = host.act_backward(name, y if name in FROM_OUTPUT else x, gy, a)
    y_ref, gx_ref = reference(name, x, gy, a)
    tag = f"{name} {np.dtype(dtype).name} (seed {rng.seed_used})"
    assert_close(y, y_ref, x, what=f"{tag} forward")
    if name in FROM_OUTPUT:
        # these differentiate from y: NaN in y zeroes relu's mask, as the CPU backend
        gx_ref = host.act_backward(name, y.astype(np.float64), gy.astype(np.float64), a)
        assert_close(gx, gx_ref, x, gy, what=f"{tag} backward (from y, float64 host)")
        ok = ~np.isnan(x)
        assert_close(gx[ok], reference(name, x[ok], gy[ok], a)[1], x[ok], gy[ok],
                     what=f"{tag} backward")
    else:
        assert_close(gx, gx_ref, x, gy, what=f"{tag} backward")


@pytest.mark.parametrize("name", kernel_host.ACTS)
def test_activation_backward_is_the_derivative(host, rng, name):
    """Central differences of the host float64 forward against its backward, away
    from kinks: checks the derivative formulas themselves, not only two copies."""
    x = rng.uniform(-6, 6, 400)
    x = x[np.abs(x) > 1e-3]
    a = PARAM.get(name, 1.3)
    h = 1e-6
    fd = (host.act_forward(name, x + h, a) - host.act_forward(name, x - h, a)) / (2 * h)
    first = host.act_forward(name, x, a) if name in FROM_OUTPUT else x
    gx = host.act_backward(name, first, np.ones_like(x), a)
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("name", ["gelu_erf", "gelu_tanh", "silu", "elu", "sigmoid", "tanh"])
def test_activation_matches_torch(host, rng, name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fn = {"gelu_erf": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
          "silu": F.silu, "elu": F.elu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]
    x = sample(rng, np.float32)
    x = x[~np.isnan(x)]
    gy = rng.normal(0, 1, x.shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = fn(tx)
    ty.backward(torch.tensor(gy))
    y = host.act_forward(name, x, 1.0)
    gx = host.act_backward(name, y if name in FROM_OUTPUT else x, gy, 1.0)
    assert_close(y, ty.detach().numpy(), x, what=f"{name} vs torch", factor=2)
    assert_close(gx, tx.grad.numpy(), x, gy, what=f"{name} grad vs torch", factor=2)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu(host, cpu, rng, dtype, approximate):
    x = sample(rng, dtype, 600)[:600].reshape(40, 15)
    b = rng.normal(0, 1, 15).astype(dtype)
    b[0] = -0.0
    gy = rng.normal(0, 1, x.shape).astype(dtype)
    y = host.bias_gelu_forward(x, b, approximate)
    gx, gb = host.bias_gelu_backward(x, b, gy, approximate)
    z = (x + b).astype(dtype)
    name = "gelu_tanh" if approximate == "tanh" else "gelu_erf"
    y_ref, gx_ref = reference(name, z, gy, 0.0)
    assert_close(y, y_ref, z, what=f"bias_gelu {approximate}")
    assert_close(gx, gx_ref, z, gy, what=f"bias_gelu grad {approximate}")
    y_cpu = cpu_op(cpu, "bias_gelu_forward", x, b, approximate=approximate)
    gx_cpu, gb_cpu = cpu_op(cpu, "bias_gelu_backward", x, b, gy, approximate=approximate)
    assert_close(y, y_cpu, z, what="bias_gelu vs CPUBackend", factor=2)
    assert_close(gx, gx_cpu, z, gy, what="bias_gelu grad vs CPUBackend", factor=2)
    # gb sums 40 rows: the sum's rounding on top of each term's
    ok = ~np.isnan(gb_cpu)
    np.testing.assert_array_equal(np.isnan(gb), np.isnan(gb_cpu))
    bound = 100 * np.finfo(dtype).eps * (np.abs(gb_cpu) + np.abs(gx).sum(0))
    assert np.all(np.abs(gb - gb_cpu)[ok] <= bound[ok]), (gb, gb_cpu)


# -- the dropout hash -----------------------------------------------------------------------
def splitmix_reference(seed, counter, i):
    """The hash in Python integers (no overflow): the specification of random.cuh."""
    m = 2**64 - 1
    z = (seed * 0x9E3779B97F4A7C15 + counter * 0xD1B54A32D192ED03) & m
    z = (i * 0x94D049BB133111EB + z) & m
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & m
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return z


KEYS = [(0, 0), (1, 2), (12345, 678), (2**63 - 1, 2**40 + 7), (2**62 + 3, 0)]


@pytest.mark.parametrize("key", KEYS)
def test_hash_is_splitmix64_bit_for_bit(host, key):
    n = 257
    got = host.splitmix64_hash(key, n)
    want = np.array([splitmix_reference(key[0], key[1], i) for i in range(n)], np.uint64)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("key", KEYS)
def test_counter_uniform_equals_cpu_bit_for_bit(host, cpu, key):
    n = 10_000
    got = host.counter_uniform(key, n)
    want = cpu.counter_uniform(key, n)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert got.min() >= 0.0 and got.max() < 1.0


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.9, 0.999999, 1.0])
def test_dropout_mask_equals_cpu(host, cpu, rng, p):
    key = (int(rng.integers(0, 2**63)), int(rng.integers(0, 2**20)))
    shape = (37, 29)
    got = host.dropout_keep(shape, p, key)
    want_spec = (cpu.counter_uniform(key, got.size) >= np.float32(p)).reshape(shape)
    np.testing.assert_array_equal(got, want_spec)
    np.testing.assert_array_equal(got, cpu_op(cpu, "dropout_keep", shape, p, key))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_apply_equals_cpu(host, cpu, rng, dtype, p):
    key = (int(rng.integers(0, 2**63)), 3)
    x = sample(rng, dtype)
    y = host.dropout_apply(x, p, key)
    keep = cpu.counter_uniform(key, x.size) >= np.float32(p)
    want = (x * dtype(1.0 / (1.0 - p))) * keep
    np.testing.assert_array_equal(y, want)  # the same two roundings: bit-identical
    np.testing.assert_array_equal(y, cpu_op(cpu, "dropout_forward", x, p, key))
    np.testing.assert_array_equal(y, cpu_op(cpu, "dropout_backward", x, p, key))


# -- softmax cross-entropy ------------------------------------------------------------------
def sce_reference(x, t, eps):
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)  # else log p = x - lse loses digits at |x| = 1e4
    lse = sp.logsumexp(x, axis=1)
    logp = x - lse[:, None]
    c = x.shape[1]
    q = np.full(x.shape, eps / c)
    q[np.arange(len(t)), t] += 1 - eps
    return -(q * logp).sum(1), np.exp(logp), q


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(host, cpu, rng, dtype, eps):
    n, c = 64, 10
    x = (rng.normal(0, 3, (n, c))).astype(dtype)
    x[0, :] = 1e4              # a row of equal huge logits
    x[1, 3] = 1e4              # one huge, others O(1)
    x[2, :] = -1e4
    x[3, 5] = -1e4
    x[4, :] = 0.0
    x[5, 1] = -0.0
    x[6, 2] = np.nan           # NaN poisons its row only
    t = rng.integers(0, c, n)
    t[1] = 3
    loss, probs = host.sce_forward(x, t, eps)
    loss_ref, probs_ref, q = sce_reference(x, t, eps)
    tag = f"softmax_cross_entropy {np.dtype(dtype).name} eps={eps}"
    assert_close(loss, loss_ref, np.log(c) + np.abs(x - x.max(1, keepdims=True)).max(1) / 4,
                 what=f"{tag} loss")
    assert_close(probs, probs_ref, what=f"{tag} probs")
    assert np.isnan(loss[6]) and np.isnan(probs[6]).all() and not np.isnan(loss[7:]).any()
    gy = rng.normal(0, 1, n).astype(dtype)
    gx = host.sce_backward(probs, t, gy, eps)
    assert_close(gx, (probs.astype(np.float64) - q) * gy[:, None], what=f"{tag} grad")

    loss_cpu, probs_cpu = cpu_op(cpu, "softmax_cross_entropy_forward", x, t, eps)
    assert_close(loss, loss_cpu, np.log(c) + np.abs(x - x.max(1, keepdims=True)).max(1) / 4,
                 what=f"{tag} loss vs CPUBackend", factor=2)
    assert_close(probs, probs_cpu, what=f"{tag} probs vs CPUBackend", factor=2)
    gx_cpu = cpu_op(cpu, "softmax_cross_entropy_backward", probs, t, gy, eps)
    np.testing.assert_array_equal(gx, gx_cpu)  # same operations, same order


def test_softmax_cross_entropy_bad_target_is_nan(host):
    x = np.zeros((3, 4), np.float32)
    loss, probs = host.sce_forward(x, np.array([0, 4, -1]))
    assert loss[0] == pytest.approx(np.log(4)) and np.isnan(loss[1:]).all()
    np.testing.assert_allclose(probs, 0.25)


def test_softmax_cross_entropy_matches_torch(host, rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(0, 5, (32, 7)).astype(np.float32)
    t = rng.integers(0, 7, 32)
    for eps in (0.0, 0.2):
        loss, _ = host.sce_forward(x, t, eps)
        want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t),
                                                 reduction="none", label_smoothing=eps)
        np.testing.assert_allclose(loss, want.numpy(), rtol=2e-6, atol=2e-6)


# -- optimizer updates ----------------------------------------------------------------------
def opt_inputs(rng, dtype, n=1000):
    p = rng.normal(0, 1, n).astype(dtype)
    p[:4] = [1e4, -1e4, 0.0, -0.0]
    return p


def opt_grad(rng, p, with_specials=True):
    g = rng.normal(0, 1, p.size).astype(p.dtype)
    if with_specials:
        g[4:10] = [1e4, -1e4, 0.0, -0.0, np.nan, 0.0]
    return g


def run_both(host, cpu, name, steps, p0, grads, state_names, **kw):
    """Run ``steps`` updates of ``name`` on copies through the host math and the CPU
    backend; returns the two final (param, *state)."""
    runs = []
    for impl in (host, cpu):
        p = p0.copy()
        state = {s: np.zeros_like(p0) for s in state_names}
        for t in range(steps):
            args = dict(kw)
            if name in ("adam_update", "lamb_update"):
                args["step"] = t + 1
            if name == "sgd_update":
                args["first_step"] = t == 0
            if impl is cpu:
                cpu_op(cpu, name, p, grads[t], *state.values(), **args)
            else:
                getattr(host, name)(p, grads[t], *state.values(), **args)
        runs.append((p, *state.values()))
    return runs


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
             dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_sgd_trajectory_equals_cpu(host, cpu, rng, dtype, case):
    kw = SGD_CASES[case]
    p0 = opt_inputs(rng, dtype)
    gs = [opt_grad(rng, p0) for _ in range(5)]
    (p_h, b_h), (p_c, b_c) = run_both(host, cpu, "sgd_update", 5, p0, gs, ["buf"], **kw)
    assert_close(p_h, p_c, what=f"sgd {kw} param", factor=4)
    assert_close(b_h, b_c, what=f"sgd {kw} buf", factor=4)


ADAM_CASES = [dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
              dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
              dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, decoupled=True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_adam_trajectory_equals_cpu(host, cpu, rng, dtype, case):
    kw = ADAM_CASES[case]
    p0 = opt_inputs(rng, dtype)
    gs = [opt_grad(rng, p0) for _ in range(6)]
    (p_h, m_h, v_h), (p_c, m_c, v_c) = run_both(host, cpu, "adam_update", 6, p0, gs,
                                                ["m", "v"], **kw)
    assert_close(m_h, m_c, what=f"adam {kw} m", factor=4)
    assert_close(v_h, v_c, what=f"adam {kw} v", factor=4)
    # the step m / (sqrt(v) + eps) is ~lr per step; its rounding is relative to lr
    assert_close(p_h, p_c, np.full(p0.shape, 1.0), what=f"adam {kw} param", factor=4)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_trajectory_matches_torch(host, rng, decoupled):
    torch = pytest.importorskip("torch")
    p0 = rng.normal(0, 1, 500).astype(np.float32)
    gs = [rng.normal(0, 1, 500).astype(np.float32) for _ in range(10)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([tp], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(gs):
        tp.grad = torch.tensor(g)
        opt.step()
        host.adam_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 0.1, t + 1, decoupled=decoupled)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_sgd_trajectory_matches_torch(host, rng):
    torch = pytest.importorskip("torch")
    p0 = rng.normal(0, 1, 500).astype(np.float32)
    gs = [rng.normal(0, 1, 500).astype(np.float32) for _ in range(10)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.SGD([tp], lr=0.05, momentum=0.9, dampening=0.1, nesterov=False,
                          weight_decay=1e-2, foreach=False)
    p, buf = p0.copy(), np.zeros_like(p0)
    for t, g in enumerate(gs):
        tp.grad = torch.tensor(g)
        opt.step()
        host.sgd_update(p, g, buf, 0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2,
                        first_step=t == 0)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-6)


def segmented(rng, dtype):
    sizes = [300, 1, 0, 64, 500]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    p = rng.normal(0, 1, offsets[-1]).astype(dtype)
    p[offsets[3]:offsets[4]] = 0.0  # a zero parameter: trust ratio 1
    return p, offsets


def lamb_reference(p, g, m, v, offsets, lr, beta1, beta2, eps, wd, step):
    """float64 LAMB as base.Backend.lamb_update specifies it."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    m = m + (g - m) * (1 - beta1)
    v = v * beta2 + g * g * (1 - beta2)
    u = (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps) + wd * p
    for s, e in zip(offsets[:-1], offsets[1:]):
        wn, un = np.linalg.norm(p[s:e]), np.linalg.norm(u[s:e])
        trust = wn / un if wn > 0 and un > 0 else 1.0
        p[s:e] -= lr * trust * u[s:e]
    return p, m, v


@pytest.mark.parametrize("dtype", DTYPES)
def test_lamb(host, cpu, rng, dtype):
    p0, off = segmented(rng, dtype)
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
    gs = [rng.normal(0, 1, p0.size).astype(dtype) for _ in range(4)]
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    pr, mr, vr = p0.astype(np.float64), np.zeros(p0.size), np.zeros(p0.size)
    for t, g in enumerate(gs):
        host.lamb_update(p, g, m, v, off, step=t + 1, **kw)
        pr, mr, vr = lamb_reference(pr, g, mr, vr, off, kw["lr"], kw["beta1"], kw["beta2"],
                                    kw["eps"], kw["weight_decay"], t + 1)
    assert_close(p, pr, np.full(p.shape, 3.0), what="lamb param vs float64")
    assert_close(m, mr, what="lamb m vs float64", factor=2)
    (p_h, m_h, v_h), (p_c, m_c, v_c) = run_both(host, cpu, "lamb_update", 4, p0, gs, ["m", "v"],
                                                offsets=off, **kw)
    assert_close(p_h, p_c, np.full(p0.shape, 3.0), what="lamb param vs CPUBackend", factor=2)
    assert_close(v_h, v_c, what="lamb v vs CPUBackend", factor=2)


def lars_reference(p, g, buf, offsets, lr, momentum, wd, tc, eps):
    p, g = p.astype(np.float64), g.astype(np.float64)
    for s, e in zip(offsets[:-1], offsets[1:]):
        wn, gn = np.linalg.norm(p[s:e]), np.linalg.norm(g[s:e])
        local = tc * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
        buf[s:e] = momentum * buf[s:e] + local * (g[s:e] + wd * p[s:e])
        p[s:e] -= lr * buf[s:e]
    return p, buf


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lars(host, cpu, rng, dtype, momentum):
    p0, off = segmented(rng, dtype)
    kw = dict(lr=0.5, momentum=momentum, weight_decay=1e-3, trust_coefficient=0.02)
    gs = [rng.normal(0, 1, p0.size).astype(dtype) for _ in range(4)]
    p, buf = p0.copy(), np.zeros_like(p0)
    pr, br = p0.astype(np.float64), np.zeros(p0.size)
    for g in gs:
        host.lars_update(p, g, buf, off, **kw)
        pr, br = lars_reference(pr, g, br, off, kw["lr"], momentum, kw["weight_decay"],
                                kw["trust_coefficient"], 1e-9)
    assert_close(p, pr, np.full(p.shape, 3.0), what="lars param vs float64")
    (p_h, b_h), (p_c, b_c) = run_both(host, cpu, "lars_update", 4, p0, gs, ["buf"],
                                      offsets=off, **kw)
    assert_close(p_h, p_c, np.full(p0.shape, 3.0), what="lars param vs CPUBackend", factor=2)


# -- global gradient norm -------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_norm(host, cpu, rng, dtype, norm_type):
    arrays = [rng.normal(0, s, n).astype(dtype) for s, n in ((1, 1000), (1e-3, 7), (30, 64))]
    arrays[0][:4] = [1e4, -1e4, 0.0, -0.0]
    host_norm = [host.norm(a, norm_type) for a in arrays]
    if math.isinf(norm_type):
        got = max(host_norm)
    else:
        got = sum(h ** norm_type for h in host_norm) ** (1 / norm_type)
    flat = np.concatenate(arrays).astype(np.float64)
    want = np.linalg.norm(flat, norm_type)
    assert got == pytest.approx(want, rel=1e-12 if norm_type in (1.0, float("inf")) else 1e-9)
    assert cpu_op(cpu, "grad_norm", arrays, norm_type) == pytest.approx(
        want, rel=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_grad_norm_nan_propagates(host, norm_type):
    x = np.array([1.0, np.nan, 3.0], np.float32)
    assert math.isnan(host.norm(x, norm_type))
    assert math.isnan(host.norm(np.array([np.nan, 1e4], np.float32), norm_type))


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_cpu_grad_norm_nan_propagates(cpu, norm_type):
    """The GPU's global norm is NaN when any gradient holds NaN; so must the CPU's."""
    arrays = [np.array([np.nan, 1.0], np.float32), np.array([3.0], np.float32)]
    assert math.isnan(cpu_op(cpu, "grad_norm", arrays, norm_type))


# -- 128-bit packed loops (kernels/vector.cuh) ----------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 17, 1000, 1003])
def test_packed_loop_visits_every_element_once(host, n):
    for head in (-1, 0, 1, 2, 3, n, n + 5):
        np.testing.assert_array_equal(host.packed_visits(n, head), 1, err_msg=f"head {head}")


def _slices(dtype, n, off, count):
    """``count`` arrays of n elements starting ``off`` elements past a 16-byte boundary."""
    out = []
    for _ in range(count):
        base = np.zeros(n + 16, dtype)
        start = (-base.ctypes.data % 16) // base.itemsize
        out.append(base[start + off:start + off + n])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gelu_erf", "silu", "relu"])
def test_packed_activation_on_unaligned_slices_equals_cpu(host, cpu, rng, dtype, name):
    """An arena slice that starts off a 16-byte boundary runs a scalar head, packs and a
    scalar tail; the result equals the NumPy backend's for every offset."""
    n = int(rng.integers(20, 200))
    x0 = sample(rng, dtype, n)[:n]
    gy0 = grads(rng, x0)
    a = np.dtype(dtype).type(0.0)
    for off in range(16 // np.dtype(dtype).itemsize):
        x, y, gy, gx = _slices(dtype, x0.size, off, 4)
        x[...], gy[...] = x0, gy0
        head = kernel_host.packed_head(x, y)
        assert head == ((0 if off == 0 else 16 // x.itemsize - off) if dtype == np.float32 else -1)
        fn = host._fn("act_fwd", dtype)
        fn(kernel_host.ACTS.index(name), kernel_host._ptr(x), kernel_host._ptr(y), x.size, a, head)
        want = cpu_op(cpu, f"{name.split('_')[0]}_forward", x0,
                      *(("tanh",) if name == "gelu_tanh" else ()))
        assert_close(y, want, x0, what=f"{name} forward, offset {off}")
        xy = y if name in FROM_OUTPUT else x
        host._fn("act_bwd", dtype)(kernel_host.ACTS.index(name), kernel_host._ptr(xy),
                                   kernel_host._ptr(gy), kernel_host._ptr(gx), x.size, a,
                                   kernel_host.packed_head(xy, gy, gx))
        gwant = cpu_op(cpu, f"{name.split('_')[0]}_backward",
                       want if name in FROM_OUTPUT else x0, gy0)
        assert_close(gx, gwant, x0, gy0, what=f"{name} backward, offset {off}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_adam_on_unaligned_arena_slices_equals_cpu(host, cpu, rng, dtype):
    n = int(rng.integers(30, 300))
    p0, g0 = (rng.normal(size=n).astype(dtype) for _ in range(2))
    for off in range(16 // np.dtype(dtype).itemsize):
        p, g, m, v = _slices(dtype, n, off, 4)
        p[...], g[...] = p0, g0
        pc, mc, vc = p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        for step in (1, 2, 3):
            host.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, step, decoupled=True)
            cpu.adam_update(pc, g0, mc, vc, 1e-2, 0.9, 0.999, 1e-8, 0.01, step, decoupled=True)
        np.testing.assert_array_equal(p, pc, err_msg=f"offset {off}")
        np.testing.assert_array_equal(v, vc, err_msg=f"offset {off}")


# -- clipping and found_inf on the device ---------------------------------------------------
def test_clip_coefficient_is_pytorchs(host, rng):
    for _ in range(20):
        total, max_norm = rng.uniform(0, 100), rng.uniform(0.01, 10)
        want = min(max_norm / (math.sqrt(total) + 1e-6), 1.0)
        assert host.clip_coef(total, 2.0, max_norm) == pytest.approx(want, rel=1e-15)
        want_inf = min(max_norm / (total + 1e-6), 1.0)
        assert host.clip_coef(total, -1.0, max_norm) == pytest.approx(want_inf, rel=1e-15)
    assert math.isnan(host.clip_coef(float("nan"), 2.0, 1.0))
    assert host.clip_coef(float("inf"), 2.0, 1.0) == 0.0


def test_is_finite(host):
    for x, want in ((0.0, True), (-3e38, True), (float("inf"), False), (float("-inf"), False),
                    (float("nan"), False), (1e-45, True)):
        assert host.is_finite(x) is want, x


# -- the fused classifier (online softmax, lse saved) ----------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_classifier(host, cpu, rng, dtype, eps):
    """One online pass per row gives the loss and lse; backward from the logits and lse
    gives (softmax - q) gy: both equal the float64 reference and the CPU backend's
    probabilities path. Extreme rows as in the two-pass kernel's test, plus -inf logits."""
    n, c = 64, int(rng.integers(2, 300))
    x = (rng.normal(0, 3, (n, c))).astype(dtype)
    x[0, :] = 1e4
    x[1, 1] = 1e4
    x[2, :] = -1e4
    x[3, 1] = -1e4
    x[4, :] = 0.0
    x[5, 1] = -0.0
    x[6, 1] = np.nan
    x[7, :c // 2] = -np.inf    # masked logits add nothing
    t = rng.integers(0, c, n)
    t[1], t[7] = 1, c - 1
    loss, stats = host.classifier_forward(x, t, eps)
    # the reference sees -1e30 for -inf (e^(-1e30 - m) = 0 as well); with smoothing row 7's
    # loss is +inf (eps/C of -inf), so it is checked apart
    loss_ref, probs_ref, q = sce_reference(np.where(np.isinf(x), -1e30, x), t, eps)
    tag = f"fused classifier {np.dtype(dtype).name} eps={eps}"
    rows = np.arange(n) != 7 if eps else np.ones(n, bool)
    if eps:
        assert loss[7] == np.inf
    assert_close(loss[rows], loss_ref[rows],
                 (np.log(c) + np.abs(x - x.max(1, keepdims=True)).max(1) / 4)[rows],
                 what=f"{tag} loss")
    assert np.isnan(loss[6]) and np.isnan(stats[6]).all() and not np.isnan(np.delete(loss, 6)).any()
    assert stats.shape == (n, 2)  # (max, log sum exp(x - max)): O(N), whatever C
    gy = rng.normal(0, 1, n).astype(dtype)
    gx = host.classifier_backward(x, stats, t, gy, eps)
    want = (probs_ref - q) * gy[:, None]
    assert_close(gx[rows], want[rows], what=f"{tag} grad", factor=4)
    loss_cpu, probs_cpu = cpu_op(cpu, "softmax_cross_entropy_forward", x, t, eps)
    assert_close(loss[rows], loss_cpu[rows],
                 (np.log(c) + np.abs(x - x.max(1, keepdims=True)).max(1) / 4)[rows],
                 what=f"{tag} loss vs CPUBackend", factor=2)


def test_fused_classifier_bad_target_is_nan(host):
    x = np.zeros((3, 4), np.float32)
    loss, stats = host.classifier_forward(x, np.array([0, 4, -1]))
    assert loss[0] == pytest.approx(np.log(4)) and np.isnan(loss[1:]).all()
    np.testing.assert_allclose(stats, [[0, np.log(4)]] * 3, rtol=1e-7)


@pytest.mark.parametrize("rows,h", [(1, 1), (7, 33), (64, 32), (130, 70), (3, 100)])
def test_bias_gelu_backward_tiles_cover_every_element_once(host, cpu, rng, rows, h):
    """The kernel's walk (32-column tiles, row chunks, warps over rows) writes every gx
    once and its column partials sum to gb, for ragged shapes and chunk sizes."""
    x = rng.normal(0, 2, (rows, h))
    b, gy = rng.normal(0, 1, h), rng.normal(0, 1, (rows, h))
    gx_cpu, gb_cpu = cpu_op(cpu, "bias_gelu_backward", x, b, gy)
    for per in sorted({1, 3, max(1, rows // 2), rows}):
        for warps in (1, 8):
            gx, gb = host.bias_gelu_backward(x, b, gy, rows_per_chunk=per, warps=warps)
            np.testing.assert_allclose(gx, gx_cpu, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(gb, gb_cpu, rtol=1e-12, atol=1e-13)
