import pytest

import dlprimer as dp


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def backend(request):
    """The backend under test; "cuda" is skipped where no usable GPU is present."""
    if request.param == "cuda" and not dp.cuda_available():
        pytest.skip("no usable CUDA device")
    return dp.backend.backend_for(request.param)
