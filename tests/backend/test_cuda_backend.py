"""The CUDA backend: its contract and error paths here, its numbers on a GPU.

Without a GPU this checks that ``set_backend("cuda")`` keeps raising the clear
error (no CuPy; CuPy but no driver), that ``dlprimer.backend.cuda`` imports and
implements every op of the contract with the CPU backend's signature, and the
argument checks that run before anything touches the device. The tests marked
``cuda`` run only with a GPU: every op and gradient against the CPU backend,
optimizer trajectories, the memory meter, the timer, DLPack and ``to()``.
"""
import inspect
import math
import sys

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.backend as backend_mod
from .cuda_testing import SeededRng, assert_close, grads, sample
from dlprimer.backend.base import Backend, MemoryMeter, Timer
from dlprimer.backend.cpu import CPUBackend

@pytest.fixture
def rng():
    return SeededRng(int(np.random.SeedSequence().entropy % 2**32))


# -- without a GPU: the clear error of the foundation ------------------------------------------
@pytest.fixture
def fresh_probe(monkeypatch):
    """Re-run the CUDA probe inside the test; the cached answer is restored after."""
    monkeypatch.setattr(backend_mod, "_cuda_probe", False)
    monkeypatch.setattr(backend_mod, "_instances", dict(backend_mod._instances))
    monkeypatch.setattr(backend_mod, "_current", backend_mod._current)


@pytest.mark.skipif(dp.cuda_available(), reason="a GPU is usable here")
def test_set_backend_cuda_raises_without_gpu(fresh_probe):
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not usable: .*set_backend\('cpu'\)"):
        dp.set_backend("cuda")
    assert backend_mod.backend_for("auto").name == "cpu"


@pytest.mark.skipif(dp.cuda_available(), reason="a GPU is usable here")
def test_set_backend_cuda_with_cupy_but_no_driver(fresh_probe):
    pytest.importorskip("cupy", reason="CuPy is not installed (install the kernels-check extra)")
    with pytest.raises(RuntimeError, match=r"not usable: no (usable )?NVIDIA driver|no CUDA device"):
        dp.set_backend("cuda")


def test_set_backend_cuda_without_cupy(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(RuntimeError, match=r"CuPy is not installed.*pip install dlprimer\[cuda13\]"):
        dp.set_backend("cuda")
    with pytest.raises(RuntimeError, match="not usable"):
        dp.tensor([1.0, 2.0]).to("cuda")


# -- without a GPU: the module and its contract ------------------------------------------------
@pytest.fixture(scope="module")
def cuda_mod():
    pytest.importorskip("cupy", reason="CuPy is not installed (install the kernels-check extra)")
    from dlprimer.backend import cuda
    return cuda


# Backend methods whose generic xp implementation holds on every backend (a backend may
# still override them, e.g. the CPU's cheaper class_range); check_class_targets and
# check_range are written once in xp code (a few tiny reductions, recorded as a device
# flag where checks defer); all_finite (the optimizer's eager non-finite check) and
# broadcast_to (a sum's gradient) are xp.dot / xp.isfinite and xp.broadcast_to;
# bind_sgd_update and bind_adam_update are None (an optimizer calls the update at each
# step) but on the JIT CPU; checked_update is all_finite then the update (one kernel call
# only on the JIT CPU).
GENERIC = ("class_range", "check_class_targets", "check_range", "all_finite", "broadcast_to",
           "bind_sgd_update", "bind_adam_update", "checked_update")
CONTRACT = sorted(n for n, f in vars(Backend).items()
                  if callable(f) and not n.startswith("_")
                  and n not in ("manual_seed", "get_rng_state", "set_rng_state", "next_key")
                  and n not in GENERIC)


@pytest.mark.parametrize("name", GENERIC)
def test_generic_backend_methods_run_on_the_cuda_backend(cuda_mod, name):
    impl = getattr(cuda_mod.CUDABackend, name)
    assert list(inspect.signature(impl).parameters) == list(
        inspect.signature(getattr(Backend, name)).parameters)


@pytest.mark.parametrize("name", CONTRACT)
def test_cuda_backend_implements_contract_with_cpu_signature(cuda_mod, name):
    impl = vars(cuda_mod.CUDABackend).get(name)
    assert impl is not None, f"CUDABackend does not implement {name}"
    params = list(inspect.signature(impl).parameters.values())
    ref = getattr(CPUBackend, name)
    if vars(CPUBackend).get(name) is None:
        ref = getattr(Backend, name)
    assert params == list(inspect.signature(ref).parameters.values()), name


def test_cuda_timer_and_meter_replace_the_base(cuda_mod):
    assert issubclass(cuda_mod.CUDATimer, Timer) and cuda_mod.CUDATimer is not Timer
    assert issubclass(cuda_mod.CUDAMemoryMeter, MemoryMeter)
    for m in ("current", "peak", "reset_peak"):
        assert m in vars(cuda_mod.CUDAMemoryMeter)
    assert hasattr(cuda_mod.CUDABackend, "counter_uniform")


@pytest.fixture
def unstarted(cuda_mod):
    """A CUDABackend that never touched a device: argument checks run before any launch."""
    b = cuda_mod.CUDABackend.__new__(cuda_mod.CUDABackend)
    Backend.__init__(b)
    b._segment_tables = {}
    return b


def test_numpy_array_is_refused_with_a_clear_error(unstarted):
    x = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"relu_forward: x must be a CuPy array on the GPU, "
                                        r"got numpy\.ndarray"):
        unstarted.relu_forward(x)
    with pytest.raises(TypeError, match="gelu_backward: x must be a CuPy array"):
        unstarted.gelu_backward(x, x)
    with pytest.raises(TypeError, match="softmax_cross_entropy_forward: logits must be a CuPy"):
        unstarted.softmax_cross_entropy_forward(x.reshape(1, 3), np.zeros(1, np.int64))
    with pytest.raises(TypeError, match=r"grad_norm: arrays\[0\] must be a CuPy array"):
        unstarted.grad_norm([x])
    with pytest.raises(TypeError, match="adam_update: param must be a CuPy array"):
        unstarted.adam_update(x, x, x, x, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)


def test_bad_arguments_are_named(unstarted):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        unstarted.gelu_forward(x, approximate="erf")
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        unstarted.dropout_forward(x, 1.5, (0, 0))
    with pytest.raises(ValueError, match="dropout_keep: dropout probability"):
        unstarted.dropout_keep((3,), -0.1, (0, 0))
    with pytest.raises(ValueError, match="sgd_update: momentum needs a buf"):
        unstarted.sgd_update(x, x, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lars_update: momentum needs a buf"):
        unstarted.lars_update(x, x, None, [0, 3], 0.1, 0.9, 0.0, 0.001)
    with pytest.raises(ValueError, match="adam_update: step is 1-based, got 0"):
        unstarted.adam_update(x, x, x, x, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0)
    with pytest.raises(ValueError, match="lamb_update: step is 1-based"):
        unstarted.lamb_update(x, x, x, x, [0, 3], 1e-3, 0.9, 0.999, 1e-6, 0.0, 0)
    with pytest.raises(ValueError, match="grad_norm: norm_type must be positive or inf, got -1"):
        unstarted.grad_norm([x], -1)
    assert unstarted.grad_norm([]) == 0.0


@pytest.mark.parametrize("offsets", [[1, 10], [0, 5], [0, 6, 4, 10], [0]])
def test_bad_offsets_are_named(unstarted, offsets):
    with pytest.raises(ValueError, match=r"offsets must rise from 0 to the arena size 10"):
        unstarted._segments("lamb_update", offsets, 10, 1024)


# -- on a GPU ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    if not dp.cuda_available():
        pytest.skip(f"no usable GPU: {dp.backend.cuda_unavailable_reason()}")
    return backend_mod.backend_for("cuda")


@pytest.fixture(scope="module")
def cpu():
    return backend_mod.backend_for("cpu")


DTYPES = (np.float32, np.float64)
ACTS = {  # name: (extra args, backward takes the output)
    "relu": ((), True), "leaky_relu": ((0.01,), False), "elu": ((1.3,), False),
    "gelu": ((), False), "gelu_tanh": ((), False), "silu": ((), False),
    "sigmoid": ((), True), "tanh": ((), True)}


def _act(b, name, x, gy, args):
    base, kw = ("gelu", {"approximate": "tanh"}) if name == "gelu_tanh" else (name, {})
    y = getattr(b, f"{base}_forward")(x, *args, **kw)
    first = y if ACTS[name][1] else x
    return y, getattr(b, f"{base}_backward")(first, gy, *args, **kw)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTS))
def test_activation_equals_cpu(gpu, cpu, rng, name, dtype):
    x = sample(rng, dtype, 1 << 14)
    gy = grads(rng, x)
    args = ACTS[name][0]
    y_c, gx_c = _act(cpu, name, x, gy, args)
    y_g, gx_g = _act(gpu, name, gpu.asarray(x), gpu.asarray(gy), args)
    assert_close(gpu.to_numpy(y_g), y_c, x, what=f"{name} forward", factor=2)
    assert_close(gpu.to_numpy(gx_g), gx_c, x, gy, what=f"{name} backward", factor=2)


@pytest.mark.cuda
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_equals_cpu(gpu, cpu, rng, dtype, approximate):
    x = sample(rng, dtype, 1 << 13)[: 96 * 77].reshape(96, 77)
    b = rng.normal(0, 1, 77).astype(dtype)
    gy = rng.normal(0, 1, x.shape).astype(dtype)
    z = x + b
    y_c = cpu.bias_gelu_forward(x, b, approximate)
    gx_c, gb_c = cpu.bias_gelu_backward(x, b, gy, approximate)
    xg, bg, gyg = gpu.asarray(x), gpu.asarray(b), gpu.asarray(gy)
    assert_close(gpu.to_numpy(gpu.bias_gelu_forward(xg, bg, approximate)), y_c, z, factor=2,
                 what="bias_gelu forward")
    gx_g, gb_g = gpu.bias_gelu_backward(xg, bg, gyg, approximate)
    assert_close(gpu.to_numpy(gx_g), gx_c, z, gy, what="bias_gelu backward", factor=2)
    ok = ~np.isnan(gb_c)
    np.testing.assert_allclose(gpu.to_numpy(gb_g)[ok], gb_c[ok],
                               rtol=200 * np.finfo(dtype).eps, atol=1e-3 if dtype == np.float32
                               else 1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_dropout_equals_cpu_bit_for_bit(gpu, cpu, rng, dtype, p):
    key = (int(rng.integers(0, 2**63)), int(rng.integers(0, 2**32)))
    x = sample(rng, dtype, 100_003)
    np.testing.assert_array_equal(gpu.to_numpy(gpu.dropout_keep(x.shape, p, key)),
                                  cpu.dropout_keep(x.shape, p, key))
    np.testing.assert_array_equal(gpu.to_numpy(gpu.counter_uniform(key, x.size)).view(np.uint32),
                                  cpu.counter_uniform(key, x.size).view(np.uint32))
    y_g = gpu.to_numpy(gpu.dropout_forward(gpu.asarray(x), p, key))
    np.testing.assert_array_equal(y_g, cpu.dropout_forward(x, p, key))
    np.testing.assert_array_equal(gpu.to_numpy(gpu.dropout_backward(gpu.asarray(x), p, key)),
                                  cpu.dropout_backward(x, p, key))


@pytest.mark.cuda
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(64, 10), (7, 1000), (3, 50_000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_equals_cpu(gpu, cpu, rng, dtype, shape, eps):
    x = rng.normal(0, 3, shape).astype(dtype)
    x[0, 0] = 1e4
    x[1, :] = -1e4
    x[2, :] = 0.0
    t = rng.integers(0, shape[1], shape[0])
    gy = rng.normal(0, 1, shape[0]).astype(dtype)
    loss_c, probs_c = cpu.softmax_cross_entropy_forward(x, t, eps)
    loss_g, probs_g = gpu.softmax_cross_entropy_forward(gpu.asarray(x), gpu.asarray(t), eps)
    tag = f"softmax-CE {shape} eps={eps}"
    assert_close(gpu.to_numpy(loss_g), loss_c, np.full(shape[0], 4.0), what=f"{tag} loss",
                 factor=2 + shape[1] / 100)
    assert_close(gpu.to_numpy(probs_g), probs_c, what=f"{tag} probs", factor=2 + shape[1] / 100)
    gx_c = cpu.softmax_cross_entropy_backward(probs_c, t, gy, eps)
    gx_g = gpu.softmax_cross_entropy_backward(gpu.asarray(probs_c), gpu.asarray(t),
                                              gpu.asarray(gy), eps)
    np.testing.assert_array_equal(gpu.to_numpy(gx_g), gx_c)


def _trajectory(b, name, steps, p0, gs, state, **kw):
    p = b.asarray(p0.copy())
    st = [b.asarray(np.zeros_like(p0)) for _ in state]
    for t in range(steps):
        args = dict(kw)
        if name in ("adam_update", "lamb_update"):
            args["step"] = t + 1
        if name == "sgd_update":
            args["first_step"] = t == 0
        getattr(b, name)(p, b.asarray(gs[t]), *st, **args)
    return [b.to_numpy(a) for a in (p, *st)]


OPT_CASES = [
    ("sgd_update", ["buf"], dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("sgd_update", ["buf"], dict(lr=0.1, momentum=0.8, dampening=0.2)),
    ("adam_update", ["m", "v"], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)),
    ("adam_update", ["m", "v"], dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                                     decoupled=True)),
    ("lamb_update", ["m", "v"], dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6,
                                     weight_decay=0.01)),
    ("lars_update", ["buf"], dict(lr=0.5, momentum=0.9, weight_decay=1e-4,
                                  trust_coefficient=0.001)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(OPT_CASES)))
def test_optimizer_trajectory_equals_cpu(gpu, cpu, rng, dtype, case):
    name, state, kw = OPT_CASES[case]
    sizes = [3000, 1, 0, 70_000, 257]
    off = np.concatenate([[0], np.cumsum(sizes)])
    if name in ("lamb_update", "lars_update"):
        kw = dict(kw, offsets=off)
    p0 = rng.normal(0, 1, off[-1]).astype(dtype)
    gs = [rng.normal(0, 1, off[-1]).astype(dtype) for _ in range(10)]
    got = _trajectory(gpu, name, 10, p0, gs, state, **kw)
    want = _trajectory(cpu, name, 10, p0, gs, state, **kw)
    for label, g, w in zip(["param", *state], got, want):
        assert_close(g, w, np.full(g.shape, 3.0), what=f"{name} {kw} {label}", factor=8)


@pytest.mark.cuda
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_grad_norm_equals_cpu(gpu, cpu, rng, norm_type):
    arrays = [rng.normal(0, 1, n).astype(np.float32) for n in (1, 1000, 1 << 20)]
    want = cpu.grad_norm(arrays, norm_type)
    got = gpu.grad_norm([gpu.asarray(a) for a in arrays], norm_type)
    assert got == pytest.approx(want, rel=1e-5)
    arrays[1][5] = np.nan
    assert math.isnan(gpu.grad_norm([gpu.asarray(a) for a in arrays], norm_type))


@pytest.mark.cuda
def test_primitives_equal_cpu(gpu, cpu, rng):
    for shape, dtype in (((5, 7), np.float32), ((1000,), np.float64)):
        key = (123, 4)
        np.testing.assert_array_equal(gpu.to_numpy(gpu.randn(shape, dtype, key)),
                                      cpu.randn(shape, dtype, key))
        np.testing.assert_array_equal(gpu.to_numpy(gpu.rand(shape, dtype, key)),
                                      cpu.rand(shape, dtype, key))
    x = rng.normal(0, 2, 1000)
    np.testing.assert_allclose(gpu.to_numpy(gpu.erf(gpu.asarray(x))), cpu.erf(x), rtol=1e-14)
    out = gpu.asarray(np.empty(1000))
    assert gpu.erf(gpu.asarray(x), out=out) is out
    target = np.zeros(5)
    index = np.array([0, 1, 1, 4, 4, 4])
    values = np.arange(6.0)
    t_g = gpu.scatter_add(gpu.asarray(target), gpu.asarray(index), gpu.asarray(values))
    np.testing.assert_array_equal(gpu.to_numpy(t_g), cpu.scatter_add(target, index, values))
    assert gpu.is_array(t_g) and not gpu.is_array(target)


@pytest.mark.cuda
def test_memory_meter_sees_a_known_allocation(gpu):
    xp = gpu.xp
    gpu.synchronize()
    gpu.memory.reset_peak()
    before = gpu.memory.current()
    n_bytes = 64 << 20
    a = xp.empty(n_bytes, dtype=xp.uint8)
    assert gpu.memory.current() - before == n_bytes
    assert gpu.memory.peak() >= before + n_bytes
    del a
    assert gpu.memory.current() == before
    assert gpu.memory.peak() >= before + n_bytes  # the high-water mark stays
    gpu.memory.reset_peak()
    assert gpu.memory.peak() == gpu.memory.current()


@pytest.mark.cuda
def test_timer_uses_cuda_events(gpu):
    from dlprimer.backend.cuda import CUDATimer
    x = gpu.xp.ones(1 << 22, dtype=gpu.xp.float32)
    with gpu.timer() as t:
        for _ in range(10):
            x = gpu.gelu_forward(x)
    assert isinstance(t, CUDATimer)
    assert 0 < t.elapsed < 60


@pytest.mark.cuda
def test_to_and_dlpack_across_backends(gpu, rng):
    a = rng.normal(0, 1, (4, 5)).astype(np.float32)
    t = dp.tensor(a, requires_grad=True)
    tc = t.to("cuda")
    assert tc.backend is gpu and gpu.is_array(tc.data)
    (tc * 2).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.full_like(a, 2))
    back = dp.from_dlpack(tc.detach())
    assert back.backend is gpu
    np.testing.assert_array_equal(back.numpy(), a)
    np.testing.assert_array_equal(tc.to("cpu").numpy(), a)


@pytest.mark.cuda
def test_runtime_compile_error_names_the_kernel_file(gpu, monkeypatch):
    from dlprimer.backend import _kernels
    from dlprimer.backend.cuda import CUDABackend
    good = _kernels.read_source
    monkeypatch.setattr(_kernels, "read_source",
                        lambda f: good(f).replace("acc += ", "acc +== ", 1) + "\n// broken\n")
    fresh = CUDABackend()
    with pytest.raises(_kernels.KernelCompileError, match=r"reductions\.cu"):
        fresh.grad_norm([gpu.xp.ones(3, gpu.xp.float32)])


@pytest.mark.cuda
def test_wrong_dtype_and_shape_on_gpu(gpu):
    xp = gpu.xp
    with pytest.raises(TypeError, match="float32 or float64; x is float16"):
        gpu.relu_forward(xp.ones(3, xp.float16))
    with pytest.raises(ValueError, match=r"gy has shape \(4,\) but y has shape \(3,\)"):
        gpu.relu_backward(xp.ones(3, xp.float32), xp.ones(4, xp.float32))
    with pytest.raises(TypeError, match="gy is float64 but x is float32"):
        gpu.silu_backward(xp.ones(3, xp.float32), xp.ones(3, xp.float64))
    with pytest.raises(ValueError, match=r"b must have shape \(5,\)"):
        gpu.bias_gelu_forward(xp.ones((2, 5), xp.float32), xp.ones(4, xp.float32))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(2,\)"):
        gpu.softmax_cross_entropy_forward(xp.ones((2, 5), xp.float32), xp.zeros(3, xp.int64))
    with pytest.raises(TypeError, match="integer class indices"):
        gpu.softmax_cross_entropy_forward(xp.ones((2, 5), xp.float32), xp.zeros(2, xp.float32))
    with pytest.raises(ValueError, match="contiguous 1-D view"):
        gpu.adam_update(*(xp.ones((2, 2), xp.float32),) * 4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)


def test_every_cuda_backend_shares_one_memory_meter(cuda_mod, monkeypatch):
    """cupy.cuda.set_allocator is process-wide: a second CUDABackend (or meter) must not
    orphan the first one's meter, whose peak() would then miss every later allocation."""
    import types

    class Pool:
        used = 0

        def used_bytes(self):
            return self.used

        def malloc(self, n):
            self.used += n
            return n

    pool, installed = Pool(), {}
    cp = types.SimpleNamespace(
        get_default_memory_pool=lambda: pool,
        cuda=types.SimpleNamespace(
            set_allocator=lambda f: installed.update(alloc=f),
            Device=lambda: types.SimpleNamespace(attributes={
                "MultiProcessorCount": 4, "MaxThreadsPerMultiProcessor": 1536})))
    monkeypatch.setattr(cuda_mod, "cp", cp)
    monkeypatch.setattr(cuda_mod, "_shared_meter", None, raising=False)
    first, second = cuda_mod.CUDABackend(), cuda_mod.CUDABackend()
    first.memory.reset_peak()
    installed["alloc"](1000)  # a transient allocation, freed before anyone reads the meter
    pool.used -= 1000
    assert first.memory.peak() == second.memory.peak() == 1000
    assert first.memory.current() == 0


# -- issue 17 on a GPU: packed loads, the fused classifier, found_inf, clipping --------------
@pytest.mark.cuda
@pytest.mark.parametrize("off", [0, 1, 2, 3])
def test_packed_kernels_on_unaligned_slices_equal_cpu(gpu, cpu, rng, off):
    """float32 arena slices that start 4, 8 or 12 bytes past a 16-byte boundary run a
    scalar head, 16-byte packs and a scalar tail; the results equal the aligned CPU ones."""
    n = 10_007
    x = rng.normal(0, 3, n + 8).astype(np.float32)
    gy = rng.normal(0, 1, n + 8).astype(np.float32)
    xg, gyg = gpu.asarray(x)[off:off + n], gpu.asarray(gy)[off:off + n]
    for name in ("relu", "gelu", "silu"):
        y, gx = _act(gpu, name, xg, gyg, ())
        y_c, gx_c = _act(cpu, name, x[off:off + n], gy[off:off + n], ())
        assert_close(gpu.to_numpy(y), y_c, x[off:off + n], what=f"{name} fwd off {off}", factor=2)
        assert_close(gpu.to_numpy(gx), gx_c, x[off:off + n], gy[off:off + n],
                     what=f"{name} bwd off {off}", factor=2)
    arena = [rng.normal(0, 1, n + 8).astype(np.float32) for _ in range(4)]
    arena[3] = np.abs(arena[3])
    dev = [gpu.asarray(a)[off:off + n] for a in arena]
    host = [a[off:off + n].copy() for a in arena]
    for step in (1, 2, 3):
        gpu.adam_update(*dev, 1e-3, 0.9, 0.999, 1e-8, 0.01, step, decoupled=True)
        cpu.adam_update(*host, 1e-3, 0.9, 0.999, 1e-8, 0.01, step, decoupled=True)
    for d, h in zip(dev, host):
        assert_close(gpu.to_numpy(d), h, np.full(n, 3.0), what=f"adam off {off}", factor=8)


@pytest.mark.cuda
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(64, 10), (7, 1000), (3, 50_000), (1000, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_classifier_equals_cpu(gpu, cpu, rng, dtype, shape, eps):
    x = rng.normal(0, 3, shape).astype(dtype)
    x[0, 0] = 1e4
    x[1 % shape[0], :] = -1e4
    t = rng.integers(0, shape[1], shape[0])
    gy = rng.normal(0, 1, shape[0]).astype(dtype)
    loss_c, probs_c = cpu.softmax_cross_entropy_forward(x, t, eps)
    xg = gpu.asarray(x)
    loss_g, stats = gpu.fused_classifier_forward(xg, gpu.asarray(t), eps)
    assert stats.shape == (shape[0], 2)
    tag = f"fused classifier {shape} eps={eps}"
    assert_close(gpu.to_numpy(loss_g), loss_c, np.full(shape[0], 4.0), what=f"{tag} loss",
                 factor=2 + shape[1] / 100)
    gx_c = cpu.softmax_cross_entropy_backward(probs_c, t, gy, eps)
    gx_g = gpu.fused_classifier_backward(xg, stats, gpu.asarray(t), gpu.asarray(gy), eps)
    assert_close(gpu.to_numpy(gx_g), gx_c, what=f"{tag} grad", factor=4 + shape[1] / 100)
    same = gpu.fused_classifier_backward(xg, stats, gpu.asarray(t), gpu.asarray(gy), eps,
                                         inplace=True)
    assert same is xg
    np.testing.assert_array_equal(gpu.to_numpy(xg), gpu.to_numpy(gx_g))


@pytest.mark.cuda
def test_found_inf_skips_the_update_on_the_device(gpu, rng):
    n = 5000
    p, g, m, v = (gpu.asarray(rng.normal(0, 1, n).astype(np.float32)) for _ in range(4))
    v = abs(v)
    assert int(gpu.nonfinite_flag([g])) == 0
    before = [gpu.to_numpy(a) for a in (p, m, v)]
    g[1234] = np.inf
    flag = gpu.nonfinite_flag([g[:10], g])
    assert int(flag) == 1
    with gpu.skip_updates_if(flag, [p, m, v]):
        gpu.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(gpu.to_numpy(a), b)
    g[1234] = 0.0
    with gpu.skip_updates_if(gpu.nonfinite_flag([g]), [p, m, v]):
        gpu.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    assert not np.array_equal(gpu.to_numpy(p), before[0])


@pytest.mark.cuda
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_on_the_device_equals_the_eager_clip(gpu, cpu, rng, norm_type):
    arrays = [rng.normal(0, 1, n).astype(np.float32) for n in (1, 1000, 1 << 16)]
    dev = [gpu.asarray(a) for a in arrays]
    host = [a.copy() for a in arrays]
    want = float(cpu.clip_grad_norm_(host, 0.5, norm_type))
    got = gpu.clip_grad_norm_(dev, 0.5, norm_type)
    assert float(got) == pytest.approx(want, rel=1e-5)
    for d, h in zip(dev, host):
        np.testing.assert_allclose(gpu.to_numpy(d), h, rtol=1e-5, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1, 1), (1000, 33), (5, 4097), (3000, 64)])
def test_bias_gelu_backward_column_sums_equal_cpu(gpu, cpu, rng, shape):
    x = rng.normal(0, 2, shape)
    b, gy = rng.normal(0, 1, shape[1]), rng.normal(0, 1, shape)
    gx_c, gb_c = cpu.bias_gelu_backward(x, b, gy)
    gx, gb = gpu.bias_gelu_backward(gpu.asarray(x), gpu.asarray(b), gpu.asarray(gy))
    np.testing.assert_allclose(gpu.to_numpy(gx), gx_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gpu.to_numpy(gb), gb_c, rtol=1e-10, atol=1e-12)
