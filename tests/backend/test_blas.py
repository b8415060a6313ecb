"""The CPU's matrix products through MKL (``dlprimer.backend.blas``, issue 18): equal to
NumPy's within GEMM rounding for every operand layout, NumPy's wherever MKL cannot take the
product, ``DLPRIMER_BLAS`` selection, the fallback without MKL, and MKL's threads under the
process's thread control. Tests that need the ``mkl`` wheel skip without it."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlprimer as dp
from dlprimer.backend import blas, matmul_for

HAS_MKL = blas.library_path() is not None
needs_mkl = pytest.mark.skipif(not HAS_MKL, reason="the mkl wheel is not installed (extra mkl)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


@pytest.fixture
def select(monkeypatch):
    """``select("mkl")`` sets DLPRIMER_BLAS and re-resolves; the choice is re-read after."""
    def choose(value):
        if value is None:
            monkeypatch.delenv(blas.ENV, raising=False)
        else:
            monkeypatch.setenv(blas.ENV, value)
        blas.reset()
        return blas.load()
    yield choose
    monkeypatch.undo()
    blas.reset()


@pytest.fixture
def mkl(select, monkeypatch):
    """MKL selected, every product (however small) sent to it, and a count of its calls."""
    assert select("mkl"), blas.info()
    monkeypatch.setattr(blas, "MIN_MNK", 0)
    calls = []
    for dt, fn in list(blas._state.gemm.items()):
        def counted(*args, fn=fn, dt=dt):
            calls.append(dt)
            return fn(*args)
        monkeypatch.setitem(blas._state.gemm, dt, counted)
    return calls


def _operand(rng, rows, cols, dt, transposed):
    """A (rows, cols) operand: C-contiguous, or the transposed view of a C-contiguous one."""
    if transposed:
        return rng.standard_normal((cols, rows)).astype(dt).T
    return rng.standard_normal((rows, cols)).astype(dt)


def assert_gemm_close(got, a, b):
    """Within the classic GEMM rounding bound |C - AB| <= k eps |A||B| (float64 reference),
    with a factor 2 for the reference's own rounding."""
    dt = got.dtype.type
    ref = a.astype(np.float64) @ b.astype(np.float64)
    bound = 2 * max(a.shape[1], 1) * EPS[dt] * (np.abs(a).astype(np.float64) @ np.abs(b))
    assert got.shape == ref.shape and got.dtype == a.dtype
    assert np.all(np.abs(got - ref) <= bound + np.finfo(dt).tiny), float(np.abs(got - ref).max())


# -- layouts -----------------------------------------------------------------------------------
@needs_mkl
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("tb", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("with_out", [False, True], ids=["new", "out"])
def test_every_layout_equals_numpy(mkl, rng, dt, ta, tb, with_out):
    m, k, n = (int(v) for v in rng.integers(2, 70, 3))
    a, b = _operand(rng, m, k, dt, ta), _operand(rng, k, n, dt, tb)
    out = np.full((m, n), np.nan, dt) if with_out else None
    got = blas.mkl_matmul(a, b, out=out)
    assert mkl == [np.dtype(dt)]
    if with_out:
        assert got is out
    assert_gemm_close(got, a, b)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=50 * k * EPS[dt], atol=50 * k * EPS[dt])


@needs_mkl
@pytest.mark.parametrize("shape", [(1, 37, 29), (41, 37, 1), (1, 37, 1), (23, 1, 31), (1, 1, 1)],
                         ids=["1-row", "1-col", "dot", "k1-outer", "1x1x1"])
@pytest.mark.parametrize("ta", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("tb", [False, True], ids=["N", "T"])
def test_single_rows_and_columns(mkl, rng, shape, ta, tb):
    m, k, n = shape
    a, b = _operand(rng, m, k, np.float32, ta), _operand(rng, k, n, np.float32, tb)
    got = blas.mkl_matmul(a, b)
    assert len(mkl) == 1
    assert_gemm_close(got, a, b)


@needs_mkl
@pytest.mark.parametrize("shape", [(0, 5, 4), (4, 0, 5), (4, 5, 0), (0, 0, 0)])
def test_empty_dims_are_numpys(mkl, rng, shape):
    m, k, n = shape
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    got = blas.mkl_matmul(a, b)
    assert mkl == [] and got.shape == (m, n) and got.dtype == np.float32
    assert np.array_equal(got, np.zeros((m, n), np.float32))


@needs_mkl
@pytest.mark.parametrize("case", ["strided-cols", "strided-rows", "reversed", "sliced-T"])
def test_other_layouts_fall_back_to_numpy(mkl, rng, case):
    base = rng.standard_normal((60, 80))
    a = {"strided-cols": base[:, ::2], "strided-rows": base[::2], "reversed": base[::-1],
         "sliced-T": base.T[:40]}[case]
    b = rng.standard_normal((a.shape[1], 33))
    got = blas.mkl_matmul(a, b)
    assert mkl == []
    np.testing.assert_array_equal(got, np.matmul(a, b))
    got = blas.mkl_matmul(b.T, a.T)    # the awkward one on the right
    assert mkl == []
    np.testing.assert_array_equal(got, np.matmul(b.T, a.T))


@needs_mkl
@pytest.mark.parametrize("case", ["mixed", "int", "byteswapped", "3-D", "half"])
def test_other_dtypes_and_ranks_fall_back_to_numpy(mkl, rng, case):
    a, b = rng.standard_normal((30, 40)), rng.standard_normal((40, 20))
    if case == "mixed":
        a = a.astype(np.float32)
    elif case == "int":
        a, b = rng.integers(-9, 9, (30, 40)), rng.integers(-9, 9, (40, 20))
    elif case == "byteswapped":
        a = a.astype(">f8") if sys.byteorder == "little" else a.astype("<f8")
    elif case == "3-D":
        a = rng.standard_normal((3, 30, 40))
    else:
        a, b = a.astype(np.float16), b.astype(np.float16)
    got = blas.mkl_matmul(a, b)
    assert mkl == []
    np.testing.assert_array_equal(got, np.matmul(a, b))


@needs_mkl
def test_out_overlapping_an_operand_is_numpys_and_right(mkl, rng):
    """``out`` that aliases an operand: MKL would read what it writes; NumPy buffers it."""
    a, b = rng.standard_normal((40, 40)), rng.standard_normal((40, 40))
    want = a @ b
    got = blas.mkl_matmul(a, b, out=a)
    assert mkl == [] and got is a
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    c = rng.standard_normal((40, 40))
    want = c.T @ b
    blas.mkl_matmul(c.T, b, out=c)   # a transposed view of out
    assert mkl == []
    np.testing.assert_allclose(c, want, rtol=1e-12, atol=1e-12)


@needs_mkl
@pytest.mark.parametrize("case", ["fortran", "wrong-dtype", "read-only"])
def test_an_out_mkl_cannot_write_is_numpys(mkl, rng, case):
    a, b = rng.standard_normal((30, 40)), rng.standard_normal((40, 20))
    out = {"fortran": np.empty((20, 30)).T, "wrong-dtype": np.empty((30, 20), np.float32),
           "read-only": np.empty((30, 20))}[case]
    if case == "read-only":
        out.flags.writeable = False
        with pytest.raises(ValueError):
            blas.mkl_matmul(a, b, out=out)
    else:
        got = blas.mkl_matmul(a, b, out=out)
        assert got is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-5)
    assert mkl == []


@needs_mkl
def test_small_products_stay_on_numpy_at_the_real_threshold(select, rng):
    assert select("mkl")
    side = round(blas.MIN_MNK ** (1 / 3))
    small = rng.standard_normal((side - 8, side - 8)).astype(np.float32)
    large = rng.standard_normal((side + 8, side + 8)).astype(np.float32)
    assert blas._gemm(small, small, None) is None
    got = blas._gemm(large, large.T, None)
    assert got is not None
    assert_gemm_close(got, large, large.T)


# -- through the framework ---------------------------------------------------------------------
@needs_mkl
def test_linear_forward_and_backward_go_through_mkl(mkl, rng):
    x = rng.standard_normal((33, 47)).astype(np.float32)
    lin = dp.nn.Linear(47, 21)
    w, b = lin.weight.data.copy(), lin.bias.data.copy()
    xt = dp.tensor(x, requires_grad=True)
    y = lin(xt)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(dp.tensor(gy))
    assert len(mkl) == 3     # x W^T, gy W, gy^T x
    assert_gemm_close(y.numpy() - b, x, w.T)
    assert_gemm_close(xt.grad.numpy(), gy, w)
    assert_gemm_close(lin.weight.grad.numpy(), gy.T, x)


@needs_mkl
def test_matmul_forward_and_backward_go_through_mkl(mkl, rng):
    a = dp.tensor(rng.standard_normal((19, 23)).astype(np.float32), requires_grad=True)
    b = dp.tensor(rng.standard_normal((23, 11)).astype(np.float32), requires_grad=True)
    y = dp.matmul(a, b)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(dp.tensor(gy))
    assert len(mkl) == 3     # a b, gy b^T, a^T gy
    assert_gemm_close(y.numpy(), a.numpy(), b.numpy())
    assert_gemm_close(a.grad.numpy(), gy, b.numpy().T)
    assert_gemm_close(b.grad.numpy(), a.numpy().T, gy)


@needs_mkl
def test_linear_gradcheck_in_float64_through_mkl(mkl, rng):
    x = dp.tensor(rng.standard_normal((5, 7)), requires_grad=True)
    w = dp.tensor(rng.standard_normal((4, 7)), requires_grad=True)
    b = dp.tensor(rng.standard_normal(4), requires_grad=True)
    assert dp.gradcheck(lambda x, w, b: dp.nn.functional.linear(x, w, b), (x, w, b))
    assert mkl and set(mkl) == {np.dtype(np.float64)}


@needs_mkl
def test_half_inputs_are_multiplied_in_float32_by_mkl(mkl, rng):
    from dlprimer.ops._util import mm
    a = rng.standard_normal((20, 30)).astype(np.float16)
    b = rng.standard_normal((30, 10)).astype(np.float16)
    got = mm(np, a, b)
    assert mkl == [np.dtype(np.float32)] and got.dtype == np.float32
    assert_gemm_close(got, a.astype(np.float32), b.astype(np.float32))


# -- selection and fallback --------------------------------------------------------------------
def test_numpy_selected_means_numpys_matmul_itself(select):
    assert not select("numpy")
    assert matmul_for(np) is np.matmul
    assert blas.info()["active"] == "numpy" and blas.info()["why_not_mkl"] == "DLPRIMER_BLAS=numpy"


def test_auto_is_mkl_exactly_when_installed(select):
    assert select(None) == HAS_MKL
    assert select("auto") == HAS_MKL
    assert select(" AUTO ") == HAS_MKL
    assert (matmul_for(np) is blas.mkl_matmul) == HAS_MKL
    assert blas.info()["choice"] == "auto"


def test_a_bad_choice_names_the_value(select, monkeypatch):
    monkeypatch.setenv(blas.ENV, "openblas")
    blas.reset()
    with pytest.raises(ValueError, match="DLPRIMER_BLAS='openblas' is not one of numpy, mkl, auto"):
        blas.load()


def test_a_bad_choice_stops_the_cpu_backend_with_its_name():
    out = subprocess.run([sys.executable, "-c", "import dlprimer as dp; dp.tensor([1.0])"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, DLPRIMER_BLAS="openblas", DLPRIMER_BACKEND="cpu",
                                  PYTHONPATH=ROOT))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("RuntimeError: the CPU backend cannot start: "
                                                   "DLPRIMER_BLAS='openblas' is not one of numpy, mkl, auto")


def _forget_mkl(monkeypatch):
    """As if MKL had never been loaded in this process."""
    for name, value in (("lib", None), ("gemm", {}), ("layer", None), ("version", None)):
        monkeypatch.setattr(blas._state, name, value)
    monkeypatch.setattr(blas, "_warned", set())


def test_mkl_asked_for_but_absent_warns_once_and_uses_numpy(select, monkeypatch):
    _forget_mkl(monkeypatch)
    monkeypatch.setattr(blas, "library_path", lambda: None)
    with pytest.warns(RuntimeWarning, match=r"DLPRIMER_BLAS=mkl but the mkl package is not installed"):
        assert not select("mkl")
    assert matmul_for(np) is np.matmul
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blas.reset()
        assert not blas.load()            # the same warning is not repeated
        assert not select("auto")         # auto without MKL: quiet


def test_a_library_that_fails_to_load_warns_and_stays_on_numpy(select, monkeypatch, tmp_path):
    bogus = tmp_path / "libmkl_rt.so.3"
    bogus.write_bytes(b"not a shared library")
    _forget_mkl(monkeypatch)
    monkeypatch.setattr(blas, "library_path", lambda: str(bogus))
    with pytest.warns(RuntimeWarning, match="MKL's GEMM is not used: .*failed to load"):
        assert not select("auto")
    assert matmul_for(np) is np.matmul and "failed to load" in blas.info()["why_not_mkl"]
    a = np.ones((200, 200), np.float32)
    np.testing.assert_array_equal((dp.tensor(a) @ dp.tensor(a)).numpy(), a @ a)


@pytest.mark.parametrize("asked", ["tbb", "intel"])
def test_an_unusable_threading_layer_request_is_replaced(select, monkeypatch, asked):
    """TBB: MKL exits the process when libtbb is not on the loader's path; INTEL: wrong
    products beside PyTorch's libgomp (see blas's docstring)."""
    monkeypatch.setenv("MKL_THREADING_LAYER", asked)
    monkeypatch.setattr(blas, "_warned", set())
    with pytest.warns(RuntimeWarning, match=f"MKL_THREADING_LAYER='{asked.upper()}' is not used"):
        assert blas._pick_layer(os.path.dirname(blas.library_path() or "/nonexistent")) in (
            "GNU", "SEQUENTIAL")
    monkeypatch.setenv("MKL_THREADING_LAYER", "sequential")
    assert blas._pick_layer("/nonexistent") == "SEQUENTIAL"


def test_doctor_reports_the_choice(select):
    from dlprimer import doctor
    select("numpy")
    lines = doctor._blas_lines(doctor.cpu_blas())
    assert lines == ["== matrix products (BLAS) ==",
                     "  DLPRIMER_BLAS=numpy: NumPy's BLAS (DLPRIMER_BLAS=numpy)"]
    if HAS_MKL:
        rep = doctor.cpu_blas() if select("mkl") else None
        assert rep["ok"] and rep["max_rel_err"] < 1e-6, rep
        text = "\n".join(doctor._blas_lines(rep))
        assert "threading layer GNU" in text and "ok    mkl   sgemm/dgemm" in text
        assert doctor.failures({"kernels": [], "self_test": [], "blas": rep}) == 0
    os.environ[blas.ENV] = "bogus"    # restored by the fixture
    blas.reset()
    bad = doctor.cpu_blas()
    assert bad["ok"] is False and "bogus" in bad["why_not_mkl"]
    assert doctor.failures({"kernels": [], "self_test": [], "blas": bad}) == 1


# -- threads, and PyTorch and numba in the same process (fresh processes) ----------------------
def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env=full, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@needs_mkl
@pytest.mark.parametrize("before", ["threadpool_limits", "MKL_NUM_THREADS", "nothing"])
def test_mkl_loaded_late_starts_at_the_process_cap(before):
    """A threadpoolctl limit (or MKL's own variable) set before MKL was loaded holds for it."""
    env = {v: "" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if before == "MKL_NUM_THREADS":
        env["MKL_NUM_THREADS"] = "1"
    out = _run(f"""
        import numpy
        from threadpoolctl import threadpool_info, threadpool_limits
        before = {before!r}
        if before == "threadpool_limits":
            threadpool_limits(1, user_api="blas")
        import dlprimer as dp
        from dlprimer.backend import blas
        dp.tensor([1.0])               # creates the CPU backend, which loads MKL
        assert blas.info()["active"] == "mkl", blas.info()
        openblas = [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]
        want = 1 if before != "nothing" else min(openblas)
        print(blas._state.lib.MKL_Get_Max_Threads() == want)
    """, DLPRIMER_BLAS="mkl", **env)
    assert out.strip() == "True"


@needs_mkl
def test_thread_limits_cover_mkl():
    out = _run("""
        from threadpoolctl import threadpool_info, threadpool_limits
        import dlprimer as dp
        from dlprimer.backend import blas
        dp.set_num_threads(1)          # before MKL is loaded: MKL starts at 1 too
        assert blas.load()
        lib = blas._state.lib
        assert lib.MKL_Get_Max_Threads() == 1
        dp.set_num_threads(2)
        mkl = [p for p in threadpool_info() if p["internal_api"] == "mkl"]
        assert len(mkl) == 1 and mkl[0]["threading_layer"] == "gnu", mkl
        assert mkl[0]["num_threads"] == 2 == lib.MKL_Get_Max_Threads()
        with threadpool_limits(1):
            assert lib.MKL_Get_Max_Threads() == 1
        assert lib.MKL_Get_Max_Threads() == 2
        with dp.measure.threads.limited(1):
            assert lib.MKL_Get_Max_Threads() == 1
        assert any(p["library"] == "mkl" for p in dp.measure.thread_pools())
        print("ok")
    """, DLPRIMER_BLAS="mkl")
    assert out.strip() == "ok"


PRODUCTS = """
    import numpy as np
    import dlprimer as dp
    from dlprimer.backend import blas
    dp.set_num_threads(2)
    assert blas.load() and blas.info()["threading_layer"] == "GNU", blas.info()
    rng = np.random.default_rng()
    worst = 0.0
    for m, k, n in [(256, 784, 1024), (256, 1024, 10), (1024, 256, 784), (10, 256, 1024)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        got = blas._gemm(x, w.T, None)
        assert got is not None
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    assert worst < 1e-5, worst
"""


@needs_mkl
@pytest.mark.parametrize("order", ["torch-first", "torch-after"])
def test_mkl_beside_torch_and_numba_gives_right_products(order):
    """Intel's OpenMP runtime (MKL's default layer) gave products wrong by ~90% here with
    PyTorch (and its libgomp) imported first and two threads; the GNU layer must not."""
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    torch_import = "import torch\ntorch.set_num_threads(2)\n"
    check = """
        import numba
        a = torch.randn(300, 200, dtype=torch.float64)
        b = torch.randn(200, 100, dtype=torch.float64)
        assert float((a @ b - torch.from_numpy(a.numpy() @ b.numpy())).abs().max()) < 1e-10
        @numba.njit(parallel=True)
        def total(v):
            s = 0.0
            for i in numba.prange(v.shape[0]):
                s += v[i]
            return s
        assert total(np.ones(10000)) == 10000.0
        print("ok")
    """
    code = (torch_import + textwrap.dedent(PRODUCTS) if order == "torch-first"
            else textwrap.dedent(PRODUCTS) + torch_import)
    assert _run(code + textwrap.dedent(check), DLPRIMER_BLAS="mkl").strip() == "ok"
