"""Every kernel launch of the CUDA backend passes the arguments its kernel declares.

CuPy hands kernel arguments over by their Python/NumPy type: a ``numpy.float64``
where the kernel takes ``float``, or arguments in the wrong order, is not an error
but garbage on the GPU. Without a GPU we can still check every launch: the
kernels' real parameter lists come from the NVRTC compilation (mangled names,
demangled by ``c++filt``), and the backend runs against a stand-in for CuPy built
on NumPy whose kernels record and check each call instead of running it.
"""
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from .cuda_testing import nvrtc_compiled
from dlprimer import _dtype as dp_dtype
from dlprimer.backend import _kernels

pytest.importorskip("cupy", reason="CuPy is not installed (install the kernels-check extra)")

SCALARS = {"float": np.float32, "double": np.float64, "long long": np.int64,
           "unsigned long long": np.uint64, "int": np.int32}
POINTEES = {"float": np.float32, "double": np.float64, "long long": np.int64, "bool": np.bool_,
            "int": np.int32, "__half": np.float16, "__nv_bfloat16": dp_dtype.bfloat16}


def _resolve(ctype):
    """A demangled parameter type with kernels/half.cuh's ``dlp::Acc<T>::type`` (the
    math type: float for the half types, T otherwise) resolved."""
    m = re.fullmatch(r"dlp::Acc<(.+)>::type", ctype)
    if m is None:
        return ctype
    return "float" if m.group(1) in _kernels.HALF_CTYPES.values() else m.group(1)


def _nvrtc_or_skip():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"CuPy's NVRTC bindings are not usable here ({type(e).__name__}: {e})")


@pytest.fixture(scope="module")
def signatures():
    """name expression -> list of (C type, is_pointer, is_const) from the compiled kernels."""
    _nvrtc_or_skip()
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        pytest.skip("c++filt (binutils) is not installed")
    sigs = {}
    for family in _kernels.FAMILIES:
        lowered = nvrtc_compiled(family, "80")["lowered"]
        names = list(lowered)
        out = subprocess.run([cxxfilt], input="\n".join(lowered[n] for n in names),
                             capture_output=True, text=True, check=True).stdout.splitlines()
        for name, demangled in zip(names, out):
            if demangled.startswith("_Z") or "(" not in demangled:  # extern "C": not mangled
                continue
            params = demangled[demangled.index("(") + 1:demangled.rindex(")")]
            parsed = []
            for p in params.split(", "):
                ptr = p.endswith("*")
                base = _resolve(p.rstrip("*").replace("const", "").strip())
                parsed.append((base, ptr, "const" in p))
            sigs[name] = parsed
    return sigs


# the extern "C" kernels are not mangled: their parameters, from the source
EXTERN_C = {
    "dropout_keep_mask": [("bool", True, False), ("long long", False, False),
                          ("unsigned long long", False, False),
                          ("unsigned long long", False, False), ("float", False, False)],
    "counter_uniform_fill": [("float", True, False), ("long long", False, False),
                             ("unsigned long long", False, False),
                             ("unsigned long long", False, False)],
}


class Launches:
    def __init__(self, sigs):
        self.sigs = {**sigs, **EXTERN_C}
        self.calls = []

    def check(self, name, grid, block, args):
        sig = self.sigs[name]
        assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)} parameters"
        for i, ((ctype, ptr, const), a) in enumerate(zip(sig, args)):
            where = f"{name} argument {i} ({ctype}{'*' if ptr else ''})"
            if ptr:
                assert isinstance(a, np.ndarray), f"{where}: got {type(a).__name__}"
                assert a.dtype == POINTEES[ctype], f"{where}: array of {a.dtype}"
                assert a.flags.c_contiguous, f"{where}: not contiguous"
                if not const:
                    assert a.flags.writeable, f"{where}: output is read-only"
            else:
                assert type(a) is SCALARS[ctype], f"{where}: got {type(a).__name__}"
        assert len(grid) == 1 and len(block) == 1
        assert 1 <= int(grid[0]) < 2**31 and 32 <= int(block[0]) <= 1024 and block[0] % 32 == 0
        self.calls.append(name)


@pytest.fixture
def fake(signatures, monkeypatch):
    """A CUDABackend on a NumPy stand-in for CuPy whose kernels only check their arguments."""
    from dlprimer.backend import cuda as cuda_mod
    launches = Launches(signatures)

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args):
            launches.check(self.name, grid, block, args)

    class RawModule:
        def __init__(self, code, options, name_expressions):
            assert options == _kernels.nvrtc_options()
            assert code.startswith("// dlprimer ")
            self.names = name_expressions

        def get_function(self, name):
            assert name in self.names, f"{name} is not among the module's name expressions"
            return Kernel(name)

    cp = types.SimpleNamespace(
        ndarray=np.ndarray, asarray=np.asarray, empty=np.empty, empty_like=np.empty_like,
        zeros=np.zeros, zeros_like=np.zeros_like, ascontiguousarray=np.ascontiguousarray,
        broadcast_to=np.broadcast_to, float32=np.float32, float64=np.float64, int64=np.int64,
        int32=np.int32, bool_=np.bool_, RawModule=RawModule,
        cuda=types.SimpleNamespace(compiler=types.SimpleNamespace(CompileException=RuntimeError)))
    monkeypatch.setattr(cuda_mod, "cp", cp)
    b = cuda_mod.CUDABackend.__new__(cuda_mod.CUDABackend)
    cuda_mod.Backend.__init__(b)
    b._sm_count = 132
    b._max_blocks = 132 * 8
    b._modules, b._functions, b._segment_tables, b._occupancy = {}, {}, {}, {}
    b._no_skip, b._skip_flag = None, None
    b._address = lambda a: a.ctypes.data
    b.blocks_per_sm = 5  # what the occupancy API would say for every kernel
    b._blocks_per_sm = lambda fn, block: b.blocks_per_sm
    b.launches = launches
    return b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_launch_matches_its_kernel(fake, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 50)).astype(dtype)
    gy = np.ones_like(x)
    b = rng.normal(size=50).astype(dtype)
    for name, args in (("relu", ()), ("leaky_relu", (0.1,)), ("elu", (1.0,)), ("silu", ()),
                       ("sigmoid", ()), ("tanh", ()), ("gelu", ())):
        y = getattr(fake, f"{name}_forward")(x, *args)
        assert y.shape == x.shape and y.dtype == x.dtype
        getattr(fake, f"{name}_backward")(x, gy, *args)
    assert fake.relu_forward(np.ones((), dtype)).shape == ()
    assert fake.gelu_forward(x.T).shape == x.T.shape  # non-contiguous input
    fake.gelu_forward(x, approximate="tanh")
    fake.gelu_backward(x, gy, approximate="tanh")
    fake.bias_gelu_forward(x, b, "tanh")
    gx, gb = fake.bias_gelu_backward(x, b, gy)
    assert gx.shape == x.shape and gb.shape == b.shape
    key = (2**63 - 5, 7)
    fake.dropout_forward(x, 0.3, key)
    fake.dropout_backward(gy, 0.3, key)
    assert fake.dropout_keep((4, 5), 0.3, key).dtype == np.bool_
    assert fake.counter_uniform(key, 10).dtype == np.float32
    t = np.array([1, 0, 3, 2, 1, 0], np.int32)
    loss, probs = fake.softmax_cross_entropy_forward(x, t, 0.1)
    assert loss.shape == (6,) and probs.shape == x.shape
    fake.softmax_cross_entropy_backward(probs, t, np.ones(6, dtype), 0.1)
    fake.softmax_cross_entropy_backward(probs, t, np.ones((), dtype))
    loss, stats = fake.fused_classifier_forward(x, t, 0.1)
    assert loss.shape == (6,) and stats.shape == (6, 2)
    g = fake.fused_classifier_backward(x, stats, t, np.ones((), dtype), 0.1)
    assert g.shape == x.shape and g is not x
    xc = x.copy()
    assert fake.fused_classifier_backward(xc, stats, t, np.ones(6, dtype), inplace=True) is xc
    n = 300
    p, g, s1, s2 = (rng.normal(size=n).astype(dtype) for _ in range(4))
    off = [0, 100, 100, 299, 300]
    fake.sgd_update(p, g, None, 0.1)
    fake.sgd_update(p, g, s1, 0.1, momentum=0.9, nesterov=True, first_step=True)
    fake.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3, decoupled=True)
    fake.lamb_update(p, g, s1, s2, off, 1e-3, 0.9, 0.999, 1e-6, 0.01, 2)
    fake.lars_update(p, g, s1, off, 0.1, 0.9, 1e-4, 0.001)
    fake.lars_update(p, g, None, off, 0.1, 0.0, 1e-4, 0.001)
    assert fake.grad_norm([p, g.astype(np.float16)], 2.0) == 0.0  # nothing ran: acc stays 0
    fake.grad_norm([p], float("inf"))
    flag = fake.nonfinite_flag([p, g[1:]])
    assert flag.shape == () and flag.dtype == np.int32
    with fake.skip_updates_if(flag, [p]):
        fake.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    norm = fake.clip_grad_norm_([p, g], 1.0)
    assert norm.shape == () and norm.dtype == np.float64
    fake.clip_grad_norm_([p], 1.0, float("inf"))
    launched = set(fake.launches.calls)
    expected = {_kernels.kernel_name(f, k, _kernels.CTYPES[np.dtype(dtype).name]
                                     if t else None)
                for f, ks in _kernels.FAMILIES.items() for k, t in ks.items()}
    assert expected - launched == set(), "kernels never launched by the backend"


@pytest.mark.parametrize("dtype", [np.float16, dp_dtype.bfloat16], ids=["float16", "bfloat16"])
# the fake device never writes the bias-gradient partials: their np.empty garbage may overflow
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_half_launches_match_their_kernels(fake, dtype):
    """The half variants (kernels/half.cuh): half arrays in and out, float scalars; the
    fused classifier gives a float32 loss and stats and takes a float32 gy; bias+GELU
    takes a float bias (a half one is cast up) and gives the bias's dtype back. Every half
    instantiation is launched by some backend method."""
    rng = np.random.default_rng()
    x = rng.normal(size=(6, 50)).astype(np.float32).astype(dtype)
    gy = np.ones_like(x)
    for name, args in (("relu", ()), ("leaky_relu", (0.1,)), ("elu", (1.0,)), ("silu", ()),
                       ("sigmoid", ()), ("tanh", ()), ("gelu", ())):
        y = getattr(fake, f"{name}_forward")(x, *args)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert getattr(fake, f"{name}_backward")(x, gy, *args).dtype == x.dtype
    fake.gelu_forward(x, approximate="tanh")
    fake.gelu_backward(x, gy.astype(np.float32), approximate="tanh")   # a float32 gy is cast
    t = np.array([1, 0, 3, 2, 1, 0], np.int64)
    loss, stats = fake.fused_classifier_forward(x, t, 0.1)
    assert loss.dtype == stats.dtype == np.float32
    g = fake.fused_classifier_backward(x, stats, t, np.ones(6, np.float32), 0.1)
    assert g.dtype == x.dtype and g.shape == x.shape
    with pytest.raises(TypeError, match=f"gy is {np.dtype(dtype).name}"):
        fake.fused_classifier_backward(x, stats, t, np.ones(6, dtype))   # gy: the float32 loss's
    with pytest.raises(TypeError, match="float32, float64; param is"):
        fake.sgd_update(x.reshape(-1), x.reshape(-1), None, 0.1)        # optimizers: float32
    b32 = rng.normal(size=50).astype(np.float32)
    for b in (b32, b32.astype(dtype)):            # a float32 parameter, or a half bias
        y = fake.bias_gelu_forward(x, b, "tanh")
        assert y.dtype == x.dtype and y.shape == x.shape
        gx, gb = fake.bias_gelu_backward(x, b, gy.astype(np.float32))   # a float32 gy is cast
        assert gx.dtype == x.dtype and gb.dtype == b.dtype and gb.shape == b.shape
    with pytest.raises(TypeError, match="b is float64"):
        fake.bias_gelu_forward(x, b32.astype(np.float64))
    key = (2**63 - 5, 7)
    assert fake.dropout_forward(x, 0.3, key).dtype == x.dtype
    assert fake.dropout_backward(gy, 0.3, key).dtype == x.dtype
    c = _kernels.HALF_CTYPES[np.dtype(dtype).name]
    expected = {_kernels.kernel_name(f, k, c) for f, ks in _kernels.HALF_KERNELS.items()
                for k in ks}
    assert expected - set(fake.launches.calls) == set(), "half kernels never launched"


def test_empty_arrays_launch_nothing(fake):
    x = np.empty((0, 4), np.float32)
    assert fake.relu_forward(x).shape == (0, 4)
    fake.lamb_update(*(np.empty(0, np.float32),) * 4, [0, 0], 1e-3, 0.9, 0.999, 1e-6, 0.0, 1)
    assert fake.launches.calls == []


@pytest.mark.parametrize("chunk", [1024, 4096])
def test_segment_blocks_cover_each_parameter_once(fake, chunk):
    sizes = [0, 1, 1023, 1024, 1025, 5000, 0, 7]
    off = np.concatenate([[0], np.cumsum(sizes)])
    o, seg, start = fake._segments("lamb_update", off, int(off[-1]), chunk)
    covered = np.zeros(off[-1], np.int64)
    for s, st in zip(seg, start):
        assert off[s] <= st < off[s + 1]
        covered[st:min(st + chunk, off[s + 1])] += 1
    np.testing.assert_array_equal(covered, 1)
    assert fake._segments("lamb_update", off, int(off[-1]), chunk)[1] is seg  # cached


def test_launch_source_names_every_kernel():
    text = "\n".join(_kernels.source_path(f).read_text() for f in _kernels.FAMILIES)
    for name, sig in EXTERN_C.items():
        m = re.search(rf'extern "C" __global__ void {name}\(([^)]*)\)', text)
        assert m and len(m.group(1).split(",")) == len(sig), name


@pytest.mark.parametrize("c", [1, 2, 31, 32, 33, 100, 257, 5000])
def test_row_reductions_launch_whole_warps(fake, c):
    """block_reduce (kernels/reduce.cuh) needs blockDim a multiple of 32, at most 1024:
    the softmax-CE forward sizes its block from C, so check it for awkward C."""
    blocks = []
    real = fake.launches.check
    fake.launches.check = lambda name, grid, block, args: (blocks.append(block[0]),
                                                           real(name, grid, block, args))
    x = np.zeros((3, c), np.float32)
    fake.softmax_cross_entropy_forward(x, np.zeros(3, np.int64))
    _, stats = fake.fused_classifier_forward(x, np.zeros(3, np.int64))
    fake.fused_classifier_backward(x, stats, np.zeros(3, np.int64), np.ones(3, np.float32))
    assert len(blocks) == 3 and all(b % 32 == 0 and 32 <= b <= 1024 for b in blocks)


def test_elementwise_grids_come_from_the_occupancy_api(fake):
    """A grid-stride kernel gets at most one wave: blocks_per_sm (the occupancy API's
    answer for that kernel) times the SM count, never a hard-coded threads-per-SM."""
    grids = []
    real = fake.launches.check
    fake.launches.check = lambda name, grid, block, args: (grids.append((name, grid[0], block[0])),
                                                           real(name, grid, block, args))
    big = np.zeros(10_000_000, np.float32)
    for occ in (2, 5, 8):
        fake.blocks_per_sm = occ
        grids.clear()
        fake.relu_forward(big)
        fake.norm = fake.grad_norm([big])
        assert [g for _, g, _ in grids] == [occ * 132] * 2
    small = np.zeros(1000, np.float32)
    grids.clear()
    fake.relu_forward(small)  # 1000 floats = 250 packs of 4: one block of 256 threads
    assert grids[0][1] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_launches_pass_the_scalar_head_of_unaligned_slices(fake, dtype):
    """128-bit loads need 16-byte alignment: a float32 arena slice starting off a boundary
    gets a scalar head of (16 - misalignment) / 4 elements; arrays that disagree, and
    float64 (not packed), get head -1 (all scalar)."""
    heads = []
    real = fake.launches.check
    fake.launches.check = lambda name, grid, block, args: (heads.append((name, args)),
                                                           real(name, grid, block, args))
    item = np.dtype(dtype).itemsize
    base = np.zeros(4096 + 8, dtype)
    start = next(i for i in range(8) if base[i:].ctypes.data % 16 == 0)
    for off in range(16 // item):
        x = base[start + off:start + off + 1000]
        heads.clear()
        fake.relu_forward(x)
        _, args = heads[0]
        want = (0 if off == 0 else 16 // item - off) if item == 4 else -1  # float only
        assert int(args[3]) == want, off
    p = base[start + 1:start + 2001]
    g = np.zeros(2000 + 8, dtype)[1:2001]
    m, v = (np.zeros(2000 + 8, dtype)[1:2001] for _ in range(2))
    heads.clear()
    fake.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    _, args = heads[0]
    mis = {a.ctypes.data % 16 for a in (p, g, m, v)}
    want = (16 - mis.pop()) % 16 // item if len(mis) == 1 and item == 4 else -1
    assert int(args[6]) == want
    q = np.zeros(64, dtype)[1:]
    r = np.zeros(64, dtype)
    heads.clear()
    fake.relu_backward(q, r[:63])  # misaligned against each other: all scalar
    assert int(heads[0][1][4]) == -1


def _blocks_by_registers(regs, block=256, regs_per_sm=65536, threads_per_sm=2048):
    """Resident blocks per SM as the occupancy API computes them from registers alone
    (allocated per warp in units of 256, i.e. 8 per thread)."""
    per_warp = -(-regs // 8) * 8 * 32
    return min(threads_per_sm // block, (regs_per_sm // per_warp) // (block // 32))


def test_grids_follow_the_compiled_register_counts(fake):
    """With each kernel's real register count (from the sm_80 cubin), a register-heavy
    kernel (norm_pow_sum, adam_update<double>) gets fewer than 8 blocks per SM in its
    grid: one wave, no tail, where the old fixed 8 x SMs cap ran 1.3-2 waves."""
    regs = {}
    for family in ("reductions", "optimizers", "activations"):
        regs.update(_kernels.register_counts(family, "80", nvrtc_compiled(family, "80")))
    assert all(0 < r <= 255 for r in regs.values()), regs
    assert set(regs) == {n for f in ("reductions", "optimizers", "activations")
                         for n in _kernels.name_expressions(f)}
    fake._blocks_per_sm = lambda fn, block: _blocks_by_registers(regs[fn.name], block)
    grids = {}
    real = fake.launches.check
    fake.launches.check = lambda name, grid, block, args: (grids.__setitem__(name, grid[0]),
                                                           real(name, grid, block, args))
    n = 1 << 24
    fake.grad_norm([np.zeros(n, np.float32)])
    p, g, m, v = (np.zeros(n, np.float64) for _ in range(4))
    fake.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    for name in ("norm_pow_sum<float>", "adam_update<double>"):
        occ = _blocks_by_registers(regs[name])
        assert regs[name] > 32 and occ < 8, (name, regs[name])
        assert grids[name] == occ * 132, (name, grids[name])
