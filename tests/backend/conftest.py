"""Fixtures shared by the backend tests."""
import pytest

from . import kernel_host


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The kernels' per-element math compiled for the host (kernel_host_driver.cpp), built
    once for every module that compares it with NumPy."""
    if kernel_host.find_compiler() is None:
        pytest.skip("no host C++ compiler (c++, g++, clang++ or $CXX) to build the kernel math")
    return kernel_host.build(tmp_path_factory.mktemp("kernel_host"))
