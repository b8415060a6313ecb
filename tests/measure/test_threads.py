"""The thread policy: dp.set_num_threads sets every loaded pool, 'auto' follows the
load average, bad values are refused, and no second BLAS pool works in a step."""
import json
import os
import subprocess
import sys

import pytest

import dlprimer as dp
from dlprimer.measure import threads


@pytest.fixture
def restore_threads(monkeypatch):
    """Put every pool, the environment and the policy back after the test."""
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().lib_controllers
    sizes = [(lib, lib.num_threads) for lib in libs]
    for var in threads.ENV_VARS:
        monkeypatch.setenv(var, os.environ.get(var, "")) if var in os.environ else monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_policy", threads._policy)
    yield
    for lib, n in sizes:
        lib.set_num_threads(n)


def _pool_sizes():
    from threadpoolctl import threadpool_info
    return [d["num_threads"] for d in threadpool_info()]


@pytest.mark.parametrize("n", [1, 2])
def test_set_num_threads_sets_every_loaded_pool(restore_threads, n):
    import scipy.linalg  # noqa: F401  (a second BLAS: SciPy's own OpenBLAS)
    from threadpoolctl import threadpool_info
    assert len([d for d in threadpool_info() if d["user_api"] == "blas"]) >= 2
    dp.set_num_threads(n)
    assert _pool_sizes() and all(s == n for s in _pool_sizes())
    assert all(p["threads"] == n for p in threads.thread_pools())
    assert dp.get_num_threads() == n
    assert all(os.environ[v] == str(n) for v in threads.ENV_VARS)


def test_set_num_threads_reaches_numba_and_torch(restore_threads):
    numba = pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        dp.set_num_threads(1)
        assert numba.get_num_threads() == 1 and torch.get_num_threads() == 1
        assert {p["api"] for p in threads.thread_pools()} >= {"numba", "torch", "blas"}
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        dp.set_num_threads(bad)


@pytest.mark.parametrize("load,cores,expected", [
    (0.1, 2, 2), (1.0, 2, 1), (0.6, 2, 1), (0.4, 2, 2), (7.5, 2, 1), (2.2, 8, 6), (0.0, 1, 1)])
def test_auto_threads_from_a_faked_load_average(monkeypatch, load, cores, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "runnable_now", lambda: None)
    monkeypatch.setattr(threads, "cpu_cores", lambda: cores)
    assert threads.auto_threads() == expected
    assert threads.parse_threads("auto") == expected


def test_auto_threads_without_a_load_average(monkeypatch):
    def missing():
        raise OSError("no load average here")
    monkeypatch.setattr(os, "getloadavg", missing)
    monkeypatch.setattr(threads, "runnable_now", lambda: None)
    assert threads.auto_threads(cores=4) == 4


def test_auto_threads_sees_a_load_that_just_started(monkeypatch):
    """A spinner started seconds ago: the one-minute average still reads 0.1, but one
    other process is runnable now, so 'auto' leaves its core alone."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(threads, "runnable_now", lambda: 1)
    assert threads.auto_threads(cores=2) == 1


def test_runnable_now_reads_proc(monkeypatch):
    if not os.path.isfile("/proc/loadavg"):
        pytest.skip("no /proc/loadavg")
    n = threads.runnable_now()
    assert isinstance(n, int) and n >= 0


@pytest.mark.parametrize("bad", ["0", "-3", "two", "", "1.5"])
def test_parse_threads_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad) if bad in ("two", "", "1.5") else "must be >= 1"):
        threads.parse_threads(bad)


def _probe(mode):
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "_blas_probe.py"), mode],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc per-thread times")
def test_no_second_thread_pool_works_in_a_training_step():
    """NumPy's BLAS at one thread, every other pool at two: a training step (Adam and
    SGD-momentum, GELU MLP) leaves every thread but the main one idle. The control run
    calls SciPy's BLAS in the step (what the optimizer once did) and is caught."""
    clean = _probe("clean")
    assert clean["numpy_blas"], f"NumPy's BLAS not found among {clean['pools']}"
    assert clean["main"] > 0
    assert clean["others"] <= 2, f"a second thread pool worked in the step: {clean}"
    control = _probe("saxpy")
    assert control["others"] > 10, f"the probe did not see SciPy's BLAS working: {control}"


def test_dlprimer_never_imports_a_second_blas():
    """No module of dlprimer imports scipy.linalg (SciPy's own OpenBLAS). The probe above
    cannot ask sys.modules instead: numba's compiler loads scipy.linalg for its own
    cython BLAS bindings, which then sit capped and idle (what that probe measures)."""
    import ast
    from pathlib import Path
    pkg = Path(dp.__file__).parent
    found = []
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "scipy":
                names = [f"scipy.{a.name}" for a in node.names]
            found += [f"{path.relative_to(pkg)}: {n}" for n in names
                      if n == "scipy.linalg" or n.startswith("scipy.linalg.")]
    assert not found, found


def test_limited_sets_and_restores_every_pool(restore_threads):
    import scipy.linalg  # noqa: F401
    dp.set_num_threads(1)
    with threads.limited(2):
        assert all(s == 2 for s in _pool_sizes())
    assert all(s == 1 for s in _pool_sizes())
    with pytest.raises(ValueError, match="got 0"):
        threads.limited(0)
