"""Every CUDA kernel file compiles under NVRTC for sm_80 and sm_90, without a GPU.

Compiled through CuPy's low-level NVRTC bindings with exactly the options CuPy
uses when the backend builds the kernels at run time
(``_kernels.cupy_runtime_options``, built on ``_kernels.nvrtc_options``). CI
installs the ``kernels-check`` extra (cupy-cuda13x + nvidia-cuda-nvrtc), so this
runs there; it skips only where CuPy or libnvrtc is genuinely absent.
"""
import re

import pytest

from .cuda_testing import nvrtc_compiled
from dlprimer.backend import _kernels


def _nvrtc_or_skip():
    try:
        from cupy_backends.cuda.libs import nvrtc
        version = nvrtc.getVersion()
    except Exception as e:  # ImportError, or libnvrtc not found when first called
        pytest.skip(f"CuPy's NVRTC bindings are not usable here ({type(e).__name__}: {e}); "
                    "install the kernels-check extra")
    return version


@pytest.fixture(scope="module")
def nvrtc_version():
    return _nvrtc_or_skip()


@pytest.mark.parametrize("arch", _kernels.CHECK_ARCHS)
@pytest.mark.parametrize("family", sorted(_kernels.FAMILIES))
def test_kernel_file_compiles_without_warnings(nvrtc_version, family, arch):
    res = nvrtc_compiled(family, arch)
    assert res["cubin"][:4] == b"\x7fELF", "NVRTC did not return a cubin"
    assert res["log"].strip() == "", f"{family}.cu for sm_{arch} compiled with diagnostics:\n" \
                                     f"{res['log']}"
    assert set(res["lowered"]) == set(_kernels.name_expressions(family))
    for name, mangled in res["lowered"].items():
        assert mangled.encode() in res["cubin"], f"{name} ({mangled}) missing from the cubin"


def test_runtime_options_are_the_backends(nvrtc_version):
    """The check compiles with dlprimer's options plus CuPy's additions, in CuPy's order."""
    opts = _kernels.cupy_runtime_options("90")
    ours = _kernels.nvrtc_options()
    pos = [opts.index(o) for o in ours]
    assert pos == sorted(pos)
    assert f"-I{_kernels.KERNEL_DIR}" in opts
    assert opts[-3:] == ("-ftz=true", "-arch=sm_90", "--device-as-default-execution-space")
    assert not any("fast-math" in o or "use_fast_math" in o for o in opts)


def test_compile_error_names_the_file(nvrtc_version):
    bad = _kernels.read_source("reductions").replace("acc += ", "acc +== ", 1)
    with pytest.raises(_kernels.KernelCompileError) as info:
        _kernels.nvrtc_compile("reductions", "80", source=bad)
    msg = str(info.value)
    assert str(_kernels.source_path("reductions")) in msg and "sm_80" in msg
    assert "reductions.cu(" in msg and "error" in msg


def test_every_kernel_file_is_checked_and_ships():
    on_disk = {p.stem for p in _kernels.KERNEL_DIR.glob("*.cu")}
    assert on_disk == set(_kernels.FAMILIES), "a .cu file is not in _kernels.FAMILIES (unchecked)"
    headers = {p.name for p in _kernels.header_paths()}
    for p in _kernels.KERNEL_DIR.glob("*.cu*"):
        for inc in re.findall(r'#include\s+"([^"]+)"', p.read_text()):
            assert inc in headers, f"{p.name} includes {inc}, not in {_kernels.KERNEL_DIR}"
    # every template kernel named in FAMILIES is defined in its file
    for family, kernels in _kernels.FAMILIES.items():
        text = _kernels.source_path(family).read_text()
        for k in kernels:
            assert re.search(rf"\b{k}\b\s*[(,]", text), f"{k} not defined in {family}.cu"


def test_source_carries_header_digest():
    src = _kernels.read_source("activations")
    assert _kernels.headers_digest() in src.splitlines()[0]


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel family 'nope'"):
        _kernels.source_path("nope")


def test_template_kernel_needs_a_type():
    assert _kernels.kernel_name("activations", "relu_forward", "float") == "relu_forward<float>"
    assert _kernels.kernel_name("dropout", "dropout_keep_mask") == "dropout_keep_mask"
    with pytest.raises(ValueError, match="template"):
        _kernels.kernel_name("activations", "relu_forward")
