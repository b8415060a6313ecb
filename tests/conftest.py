"""Shared fixtures: every backend-parametrized test runs on the CPU and, when a GPU
is usable, on CUDA (marked ``cuda`` and skipped otherwise)."""
import numpy as np
import pytest

import dlprimer as dp

HAS_CUDA = dp.cuda_available()

BACKENDS = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU")])]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no usable CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
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
