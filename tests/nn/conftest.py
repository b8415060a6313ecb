"""Fixtures for the nn tests: a backend parameter (CUDA skipped without a GPU) and a
freshly seeded random generator per test (the seed is printed on failure)."""
import numpy as np
import pytest

import dlprimer as dp

BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cuda" and not dp.cuda_available():
        pytest.skip("CUDA is not available")
    with dp.use_backend(request.param) as b:
        yield b


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
