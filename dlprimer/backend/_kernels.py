"""Where the CUDA kernels live and how NVRTC compiles them (no CuPy import at top level).

The kernel sources live at the repository's top level (``kernels/*.cu`` and the
``*.cuh`` headers they include); the wheel ships them inside the package as
``dlprimer/kernels/`` (setuptools maps one onto the other, see ``setup.py``), and
:func:`find_kernel_dir` looks in both places, so a source checkout, an editable
install and an installed wheel all find them. One function, :func:`nvrtc_options`, holds the
options and include path; the CUDA backend passes it to ``cupy.RawModule`` and
the CI check (:func:`nvrtc_compile`) passes it, completed exactly as CuPy
completes it at run time, to CuPy's low-level NVRTC bindings, which need no GPU
and no driver. So a kernel that does not compile fails CI on any machine.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def find_kernel_dir(package_dir: Path = _PACKAGE_DIR) -> Path:
    """The directory holding the ``.cu``/``.cuh`` sources: ``<package>/kernels`` in an
    installed wheel, ``<repository>/kernels`` beside the package in a source checkout
    or an editable install. Raises FileNotFoundError naming both places otherwise."""
    for candidate in (package_dir / "kernels", package_dir.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(
        f"CUDA kernel sources not found in {package_dir / 'kernels'} (installed wheel) nor in "
        f"{package_dir.parent / 'kernels'} (source checkout); reinstall dlprimer")


try:
    KERNEL_DIR = find_kernel_dir()
except FileNotFoundError:  # reported when a kernel is read, not at import
    KERNEL_DIR = _PACKAGE_DIR / "kernels"

#: C++ type of each supported array dtype.
CTYPES = {"float32": "float", "float64": "double"}
#: C++ storage type of each half-precision dtype (kernels/half.cuh: float math inside).
HALF_CTYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}

#: family (file stem) -> kernels; True: a template over CTYPES, False: extern "C".
FAMILIES: dict[str, dict[str, bool]] = {
    "activations": {name: True for name in (
        "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
        "elu_forward", "elu_backward", "gelu_erf_forward", "gelu_erf_backward",
        "gelu_tanh_forward", "gelu_tanh_backward", "silu_forward", "silu_backward",
        "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
        "bias_gelu_forward", "bias_gelu_backward")},
    "dropout": {"dropout_forward": True, "dropout_backward": True,
                "dropout_keep_mask": False, "counter_uniform_fill": False},
    "softmax_cross_entropy": {"softmax_cross_entropy_forward": True,
                              "softmax_cross_entropy_backward": True,
                              "fused_classifier_forward": True,
                              "fused_classifier_backward": True},
    "optimizers": {name: True for name in (
        "sgd_update", "adam_update", "lamb_moments_norms", "lamb_apply", "lars_norms",
        "lars_apply")},
    "reductions": {"norm_pow_sum": True, "norm_max_abs": True, "nonfinite_flag": True,
                   "clip_scale": True},
}

#: family -> the template kernels also instantiated for HALF_CTYPES: the activations
#: (bias_gelu with a float bias and float bias-gradient partials), dropout and the fused
#: classifier (half logits, float32 loss and stats). The optimizers stay float32
#: (float32 master weights); the probabilities-saving softmax_cross_entropy kernels
#: have no half variant.
HALF_KERNELS: dict[str, tuple[str, ...]] = {
    "activations": tuple(FAMILIES["activations"]),
    "dropout": ("dropout_forward", "dropout_backward"),
    "softmax_cross_entropy": ("fused_classifier_forward", "fused_classifier_backward"),
}

#: the architectures CI compiles every kernel for (Ampere, Hopper)
CHECK_ARCHS = ("80", "90")


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel file; the message names the file and carries the log."""


def source_path(family: str) -> Path:
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    return KERNEL_DIR / f"{family}.cu"


def header_paths() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.cuh"))


def kernel_name(family: str, kernel: str, ctype: str | None = None) -> str:
    """The NVRTC name expression of a kernel: ``relu_forward<float>`` or ``dropout_keep_mask``."""
    templated = FAMILIES[family][kernel]
    if templated:
        if ctype is None:
            raise ValueError(f"kernel {kernel!r} is a template: give a C type")
        return f"{kernel}<{ctype}>"
    return kernel


def ctypes_of(family: str, kernel: str) -> list[str]:
    """The C types a template kernel is instantiated for: CTYPES, plus HALF_CTYPES
    for the kernels in HALF_KERNELS."""
    half = kernel in HALF_KERNELS.get(family, ())
    return list(CTYPES.values()) + (list(HALF_CTYPES.values()) if half else [])


def ctype(family: str, kernel: str, dtype) -> str:
    """The C type of ``kernel`` for a NumPy dtype name; ValueError naming the dtypes it
    is instantiated for otherwise."""
    name = getattr(dtype, "name", dtype)
    c = CTYPES.get(name) or HALF_CTYPES.get(name)
    if c is None or c not in ctypes_of(family, kernel):
        valid = [k for k, v in {**CTYPES, **HALF_CTYPES}.items() if v in ctypes_of(family, kernel)]
        raise ValueError(f"kernel {kernel!r} has no {name} variant; it takes {', '.join(valid)}")
    return c


def name_expressions(family: str) -> list[str]:
    names = []
    for kernel, templated in FAMILIES[family].items():
        if templated:
            names.extend(kernel_name(family, kernel, c) for c in ctypes_of(family, kernel))
        else:
            names.append(kernel)
    return names


def nvrtc_options() -> tuple[str, ...]:
    """dlprimer's NVRTC options: C++17 and the kernel directory on the include path.

    No fast-math: the device math must match the host compilation CI compares
    with NumPy (CuPy itself adds ``-ftz=true`` and the architecture).
    """
    return ("--std=c++17", f"-I{KERNEL_DIR}")


def headers_digest() -> str:
    """Hash of all headers: CuPy's kernel cache keys on the source text only, so the
    source we hand it carries this line and a header edit recompiles."""
    h = hashlib.sha256()
    for p in header_paths():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def read_source(family: str) -> str:
    path = source_path(family)
    try:
        text = path.read_text()
    except OSError as e:
        raise FileNotFoundError(
            f"CUDA kernel source {path} is missing ({e}); reinstall dlprimer") from None
    return f"// dlprimer {path.name}, headers {headers_digest()}\n{text}"


def compile_error(family: str, log: str, arch: str | None = None) -> KernelCompileError:
    where = f" for sm_{arch}" if arch else ""
    return KernelCompileError(
        f"NVRTC failed to compile {source_path(family)}{where}:\n{log.strip()}")


def cupy_runtime_options(arch: str) -> tuple[str, ...]:
    """The full option list CuPy hands NVRTC when ``cupy.RawModule`` compiles our
    source at run time for ``arch``: CuPy's include paths around ours
    (``assemble_cupy_compiler_options``), then ``-ftz=true``, the architecture and
    ``--device-as-default-execution-space`` (cupy/cuda/compiler.py)."""
    from cupy._core import core
    assemble = getattr(core, "assemble_cupy_compiler_options", None)
    opts = tuple(assemble(nvrtc_options())) if assemble is not None else nvrtc_options()
    return opts + ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


def nvrtc_unavailable_reason() -> str | None:
    """None when CuPy's low-level NVRTC bindings work here (no GPU needed), else why not."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:
        return f"CuPy's NVRTC is not usable ({type(e).__name__}: {e})"
    return None


def nvrtc_compile(family: str, arch: str, source: str | None = None) -> dict:
    """Compile one kernel file to a cubin for ``sm_<arch>`` through CuPy's NVRTC
    bindings, as CuPy would at run time; needs no GPU.

    Returns ``{"cubin": bytes, "lowered": {name expression: mangled name},
    "log": str}``; raises :class:`KernelCompileError` naming the file.
    """
    from cupy_backends.cuda.libs import nvrtc

    src = read_source(family) if source is None else source
    names = name_expressions(family)
    prog = nvrtc.createProgram(src, source_path(family).name, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(cupy_runtime_options(arch)))
        except nvrtc.NVRTCError:
            raise compile_error(family, nvrtc.getProgramLog(prog), arch) from None
        log = nvrtc.getProgramLog(prog)
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return {"cubin": cubin, "lowered": lowered, "log": log}


def _elf_sections(elf: bytes) -> dict:
    """ELF64 section name -> (offset, size, link) of a cubin."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = heads[shstrndx][4]
    out = {}
    for h in heads:
        start = names + h[0]
        out[elf[start:elf.index(b"\0", start)].decode()] = (h[4], h[5], h[6])
    return out


def register_counts(family: str, arch: str, compiled: dict | None = None) -> dict[str, int]:
    """Registers per thread of every kernel of ``family`` compiled for ``sm_<arch>``,
    read from the cubin's ``.nv.info`` (EIATTR_REGCOUNT records), as cuobjdump
    --dump-resource-usage shows them; no GPU needed. Keyed by name expression.
    ``compiled``: an :func:`nvrtc_compile` result to read instead of compiling."""
    res = compiled if compiled is not None else nvrtc_compile(family, arch)
    elf = res["cubin"]
    sec = _elf_sections(elf)
    symtab_off, symtab_size, strtab_index = sec[".symtab"]
    strtab_off = list(sec.values())[strtab_index][0]
    syms = []
    for i in range(symtab_size // 24):
        name_off, = struct.unpack_from("<I", elf, symtab_off + 24 * i)
        start = strtab_off + name_off
        syms.append(elf[start:elf.index(b"\0", start)].decode())
    by_mangled = {v: k for k, v in res["lowered"].items()}
    off, size, _ = sec[".nv.info"]
    out, end = {}, off + size
    while off < end:  # records: format byte, attribute byte, then a value
        fmt, attr = elf[off], elf[off + 1]
        if fmt == 0x04:  # EIFMT_SVAL: u16 size, payload
            n, = struct.unpack_from("<H", elf, off + 2)
            if attr == 0x2F:  # EIATTR_REGCOUNT: (symbol index, registers)
                sym, regs = struct.unpack_from("<II", elf, off + 4)
                out[by_mangled.get(syms[sym], syms[sym])] = regs
            off += 4 + n
        else:
            off += 4 if fmt in (0x02, 0x03) else 2
    return out
