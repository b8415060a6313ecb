"""Shared fixtures: every backend-parametrized test runs on the CPU and, when a GPU
is usable, on CUDA (marked ``cuda`` and skipped otherwise)."""
import numpy as np
import pytest

import dlprimer as dp

HAS_CUDA = dp.cuda_available()

BACKENDS = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU")])]


_CUDA_MARKED = set()


def pytest_collection_modifyitems(config, items):
    # the marker, not `"cuda" in item.keywords`: keywords hold every parent folder's
    # name, so a checkout in a folder named cuda would skip the whole suite
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    _CUDA_MARKED.update(item.nodeid for item in marked)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no usable CUDA GPU")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of a backend; the test runs with it as the current backend."""
    with dp.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    """A fresh, unseeded generator: every run draws new inputs."""
    return np.random.default_rng()


# Checks that must run wherever the CI installed their tools: with DLPRIMER_STRICT_SKIPS=1
# a skip in these paths (other than a test marked cuda) fails the run.
STRICT_PATHS = ("tests/backend/test_cuda_kernels_compile.py", "tests/distributed/", "tests/test_logs.py")
_strict_skips = []


def pytest_runtest_logreport(report):
    import os
    if (report.skipped and os.environ.get("DLPRIMER_STRICT_SKIPS") == "1"
            and any(p in report.nodeid for p in STRICT_PATHS)
            and report.nodeid not in _CUDA_MARKED):
        _strict_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _strict_skips:
        print("\nDLPRIMER_STRICT_SKIPS: these checks were skipped but must run here:\n  "
              + "\n  ".join(_strict_skips))
        session.exitstatus = 1
