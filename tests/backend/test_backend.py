"""Backend selection, the CUDA-unavailable error, the timer and the CPU memory meter."""
import builtins
import os
import subprocess
import sys

import numpy as np
import pytest

import dlprimer as dp
from dlprimer import backend as B


def test_use_backend_is_scoped():
    before = dp.get_backend()
    with dp.use_backend("cpu") as b:
        assert dp.get_backend() is b and b.name == "cpu" and b.xp is np
    assert dp.get_backend() is before


def test_auto_picks_cpu_without_a_gpu():
    if dp.cuda_available():
        pytest.skip("a GPU is present")
    assert B.backend_for("auto").name == "cpu"


def test_env_variable_sets_the_default():
    code = "import dlprimer as dp; print(dp.get_backend().name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DLPRIMER_BACKEND": "cpu"}, check=True)
    assert out.stdout.strip() == "cpu"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DLPRIMER_BACKEND": "gpu"})
    assert bad.returncode != 0 and "DLPRIMER_BACKEND='gpu'" in bad.stderr


def test_cuda_without_gpu_raises_clear_error():
    if dp.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError) as ei:
        dp.set_backend("cuda")
    msg = str(ei.value)
    assert "cuda" in msg and "set_backend('cpu')" in msg
    assert any(k in msg for k in ("CuPy is not installed", "driver", "device"))


def test_cuda_error_says_cupy_is_missing(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(B, "_cuda_probe", False)
    monkeypatch.setattr(B, "_instances", {k: v for k, v in B._instances.items() if k != "cuda"})
    assert not dp.cuda_available()
    assert "CuPy is not installed" in B.cuda_unavailable_reason()
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        B.backend_for("cuda")


def test_timer_measures_elapsed_time():
    import time
    b = B.backend_for("cpu")
    with b.timer() as t:
        time.sleep(0.01)
    assert 0.009 < t.elapsed < 1.0


def test_cpu_memory_meter_sees_a_known_allocation():
    b = B.backend_for("cpu")
    b.memory.start()
    try:
        b.memory.reset_peak()
        base = b.memory.current()
        a = np.ones(4_000_000)  # 32 MB
        grown = b.memory.current() - base
        assert abs(grown - a.nbytes) / a.nbytes < 0.05
        del a
        assert b.memory.peak() - base >= 32_000_000 * 0.95
        assert b.memory.current() - base < 1_000_000
    finally:
        b.memory.stop()


def test_meter_off_says_how_to_start():
    import tracemalloc
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on")
    with pytest.raises(RuntimeError, match="memory.start"):
        B.backend_for("cpu").memory.peak()


def test_rng_state_replays_the_stream():
    b = B.backend_for("cpu")
    b.manual_seed(7)
    state = b.get_rng_state()
    a1 = b.randn((4,), np.float32)
    b.set_rng_state(state)
    np.testing.assert_array_equal(b.randn((4,), np.float32), a1)


def test_counter_uniform_is_uniform_and_keyed():
    b = B.backend_for("cpu")
    u = b.counter_uniform((1, 0), 100_000)
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(u, b.counter_uniform((1, 0), 100_000))
    assert not np.array_equal(u[:100], b.counter_uniform((1, 1), 100))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("src,shape", [((), ()), ((1, 1), (5, 7)), ((5, 1), (5, 7)),
                                       ((1, 7), (5, 7)), ((2, 1, 3), (2, 4, 3)), ((4,), (4,))])
def test_cpu_broadcast_to_is_numpys_read_only_view(src, shape, dtype):
    """The CPU backend builds the view of a sum's / mean's gradient directly; it must be
    numpy.broadcast_to's view: same values, no copy, read-only."""
    be = B.backend_for("cpu")
    a = np.random.default_rng().standard_normal(src).astype(dtype)
    v = be.broadcast_to(a, shape)
    np.testing.assert_array_equal(v, np.broadcast_to(a, shape))
    assert v.shape == shape and v.dtype == a.dtype and np.shares_memory(v, a)
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v[...] = 0
    t = np.asfortranarray(np.random.default_rng().standard_normal((3, 1, 2)))[:, :, ::2]
    np.testing.assert_array_equal(be.broadcast_to(t, (3, 4, 1)), np.broadcast_to(t, (3, 4, 1)))
    with pytest.raises(ValueError, match="broadcast"):
        be.broadcast_to(np.ones((2, 1), dtype), (3, 3))
