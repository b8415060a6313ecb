"""``dlprimer doctor``: what this machine runs dlprimer on, and whether it works there.

It reports the versions (Python, NumPy, SciPy, CuPy, the CUDA runtime and driver, NVRTC,
NCCL, MPI, numba), the GPU and its memory or why CUDA is unavailable, the thread pools,
which library multiplies matrices on the CPU (``DLPRIMER_BLAS``: NumPy's BLAS or MKL, and
MKL's products checked against a float64 reference),
whether every kernel family compiles (NVRTC, no GPU needed), and a self-test of every
fused op on every available backend against a reference: on the CPU the same formula
as a chain of primitive ops (``dlprimer/backend/unfused.py``), on CUDA the CPU backend's op;
then what the CPU's numba kernels cost to compile here (first run) or that the cache served them.
``--full`` adds the GPU benchmark summary (bandwidth fractions, the Adam bound, an MLP
step against PyTorch where installed). Exit status 0 unless a check failed; a machine
without a GPU is not a failure.
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time

import numpy as np

#: the fused ops the self-test runs (Backend methods), with how to build their arguments
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh")
FROM_OUTPUT = ("relu", "sigmoid", "tanh")
PARAMS = {"leaky_relu": (0.1,), "elu": (1.0,)}


# -- what is installed ----------------------------------------------------------------------
def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("numpy", "scipy", "numba", "torch", "mpi4py", "threadpoolctl"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            out[name] = "not installed"
    try:
        from mpi4py import MPI
        out["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception as e:
        out["mpi"] = f"unavailable ({type(e).__name__})"
    from .backend.info import cuda_stack
    out.update(cuda_stack())
    return out


def cuda_status() -> dict:
    from .backend import cuda_unavailable_reason
    from .backend.info import gpus
    reason = cuda_unavailable_reason()
    if reason is not None:
        return {"available": False, "why": reason}
    return {"available": True, "gpus": gpus()}


def thread_pools() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl is not installed (pip install threadpoolctl)"}]
    return [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
            for p in threadpool_info()]


def cpu_blas() -> dict:
    """Which library multiplies matrices on the CPU (``DLPRIMER_BLAS``, :mod:`.backend.blas`)
    and, when it is MKL, a check of its products against NumPy's (float32 and float64, every
    operand layout, float64 reference): ``max_rel_err`` and ``ok``."""
    from .backend import blas
    try:
        out = blas.info()
    except ValueError as e:   # a bad DLPRIMER_BLAS: reported as a failed check
        return {"choice": os.environ.get(blas.ENV), "active": "numpy",
                "why_not_mkl": str(e), "ok": False}
    if out["active"] != "mkl":
        return out
    rng = np.random.default_rng()
    worst = 0.0
    for dt in (np.float32, np.float64):
        a, b = rng.standard_normal((96, 160)).astype(dt), rng.standard_normal((160, 80)).astype(dt)
        for x, y in ((a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)),
                     (np.asfortranarray(a), np.asfortranarray(b))):
            got = blas._gemm(x, y, None, min_mnk=0)
            ref = x.astype(np.float64) @ y.astype(np.float64)
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    out["max_rel_err"] = worst
    out["ok"] = bool(worst < 1e-5)   # float32 GEMM over k=160: about 1e-7 expected
    return out


# -- the kernels ----------------------------------------------------------------------------
def kernel_compiles(archs) -> list[dict]:
    """NVRTC-compile every kernel family for each architecture (no GPU needed), with the
    registers per thread of each kernel read from the cubin (the grids are sized from
    them by the occupancy API at run time)."""
    from .backend import _kernels
    why = _kernels.nvrtc_unavailable_reason()
    if why is not None:
        return [{"family": "*", "ok": None,
                 "message": f"skipped: {why}; install the kernels-check extra"}]
    out = []
    for family in _kernels.FAMILIES:
        for arch in archs:
            t0 = time.perf_counter()
            try:
                compiled = _kernels.nvrtc_compile(family, arch)
                seconds = round(time.perf_counter() - t0, 2)
                regs = _kernels.register_counts(family, arch, compiled)
                out.append({"family": family, "arch": f"sm_{arch}", "ok": True,
                            "seconds": seconds, "registers": regs})
            except Exception as e:
                out.append({"family": family, "arch": f"sm_{arch}", "ok": False,
                            "message": str(e)[:2000]})
    return out


# -- the self-test ------------------------------------------------------------------------
def _cases(rng):
    """(name, args, what to compare) of every fused op, on host float64 arrays."""
    x = np.concatenate([[0.0, -0.0, 1e4, -1e4, 1.0], rng.normal(0, 3, 995)])
    gy = rng.normal(0, 1, x.shape)
    cases = []
    for act in ACTIVATIONS:
        p = PARAMS.get(act, ())
        cases.append((f"{act}_forward", (x, *p), "out"))
        cases.append((f"{act}_backward", (np.tanh(x) if act in FROM_OUTPUT else x, gy, *p), "out"))
    cases.append(("gelu_forward", (x, "tanh"), "out"))  # shown as gelu_forward(tanh)
    x2, b = rng.normal(0, 2, (40, 25)), rng.normal(0, 1, 25)
    cases.append(("bias_gelu_forward", (x2, b), "out"))
    cases.append(("bias_gelu_backward", (x2, b, rng.normal(0, 1, x2.shape)), "out"))
    logits, t = rng.normal(0, 3, (32, 100)), rng.integers(0, 100, 32)
    cases.append(("softmax_cross_entropy_forward", (logits, t, 0.1), "out"))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cases.append(("softmax_cross_entropy_backward", (probs, t, rng.normal(0, 1, 32), 0.1), "out"))
    n = 3000
    offsets = np.array([0, 1000, 1001, 3000])
    p, g = rng.normal(0, 1, n), rng.normal(0, 1, n)
    s1, s2 = rng.normal(0, 0.1, n), np.abs(rng.normal(0, 0.1, n))
    cases.append(("sgd_update", (p, g, s1, 0.1, 0.9, 0.0, True, 1e-3), "inplace"))
    cases.append(("adam_update", (p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3, True), "inplace"))
    cases.append(("lamb_update", (p, g, s1, s2, offsets, 1e-2, 0.9, 0.999, 1e-6, 0.01, 2),
                  "inplace"))
    cases.append(("lars_update", (p, g, s1, offsets, 0.1, 0.9, 1e-4, 1e-3), "inplace"))
    return cases


def _run_op(be, name, args):
    """Run op ``name`` on backend ``be`` with host args moved there; returns host arrays
    (the in-place ones too, for updates)."""
    dev = [be.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(be, name)(*dev)
    outs = out if isinstance(out, tuple) else (out,)
    moved = [be.to_numpy(o) for o in outs if o is not None]
    moved += [be.to_numpy(a) for a in dev if be.is_array(a) and a.dtype.kind == "f"]
    return moved


def _reference(name, args, be_name):
    """CPU: the unfused composition of primitive ops; CUDA: the CPU backend's fused op."""
    from .backend import unfused
    from .backend import backend_for
    cpu = backend_for("cpu")
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    if be_name == "cpu":
        out = getattr(unfused, name)(cpu, *copies)
        outs = out if isinstance(out, tuple) else (out,)
        return [np.asarray(o) for o in outs if o is not None] + \
            [a for a in copies if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    return _run_op(cpu, name, copies)


def _rel_err(got, want) -> float:
    """Largest error relative to each value, floored at 1e-6 of the array's scale: far
    in GELU's negative tail the reference's ``1 + erf`` cancels (about 1e-15 of the
    scale), so a bare relative error there measures the reference, not the op."""
    finite = np.isfinite(want)
    if not finite.any():
        return 0.0
    scale = float(np.max(np.abs(want[finite])))
    return float(np.max(np.abs(got - want) / (np.abs(want) + 1e-6 * scale + 1e-300),
                        initial=0.0, where=finite))


def self_test(backend_names) -> list[dict]:
    """Every fused op on each backend against its reference, float64, fresh inputs."""
    from .backend import backend_for
    from .backend.unfused import fusion
    rng = np.random.default_rng()
    results = []
    for be_name in backend_names:
        be = backend_for(be_name)
        for name, args, _ in _cases(rng):
            try:
                with fusion(True):
                    got = _run_op(be, name, [a.copy() if isinstance(a, np.ndarray) else a
                                             for a in args])
                want = _reference(name, args, be_name)
                err = max(_rel_err(g, w) for g, w in zip(got, want))
                nan_ok = all(np.array_equal(np.isnan(g), np.isnan(w)) for g, w in zip(got, want))
                ok = nan_ok and err <= 1e-8
                label = name + ("(tanh)" if any(a == "tanh" for a in args
                                                if isinstance(a, str)) else "")
                results.append({"backend": be_name, "op": label, "ok": ok,
                                "max_rel_err": err, "nan_match": nan_ok})
            except Exception as e:
                results.append({"backend": be_name, "op": name, "ok": False,
                                "message": f"{type(e).__name__}: {str(e)[:300]}"})
    return results


def cpu_jit() -> dict:
    """The CPU's numba kernels in this process: what compiled and how long it took (a
    first run), or how many came from the disk cache; kernels that fell back to NumPy."""
    from .backend import jit
    return {"summary": jit.summary(), **jit.compile_stats()}


# -- --full: the GPU benchmark summary ------------------------------------------------------
def _best(be, fn, repeats=10):
    """Fastest of ``repeats`` timed calls (seconds), after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        with be.timer() as t:
            fn()
        times.append(t.elapsed)
    return min(times)


def _bandwidth(be, n):
    xp = be.xp
    x = be.randn((n,), "float32")
    y, gy = xp.empty_like(x), be.randn((n,), "float32")
    copy = _best(be, lambda: xp.copyto(y, x))
    bw = 2 * 4 * n / copy
    out = {"copy_GBps": round(bw / 1e9, 1)}
    for act in ("relu", "gelu", "silu"):
        f = _best(be, lambda: getattr(be, f"{act}_forward")(x))
        b = _best(be, lambda: getattr(be, f"{act}_backward")(x, gy))
        out[f"{act}_fwd_bwd_frac_of_copy"] = round((2 + 3) * 4 * n / (f + b) / bw, 3)
    p, g, m, v = (be.randn((n,), "float32") for _ in range(4))
    v = xp.abs(v)
    adam = _best(be, lambda: be.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 5))
    out["adam_frac_of_28B_bound"] = round(28 * n / adam / bw, 3)
    return out


def _mlp_step(be, sizes=(1024, 4096, 4096, 10), batch=1024):
    from . import nn, optim
    from .backend import use_backend
    from .nn import functional as F
    from .tensor import Tensor
    with use_backend(be):
        model = nn.MLP(list(sizes), activation="gelu")
        opt = optim.Adam(model.parameters(), lr=1e-4)
        x = Tensor(be.randn((batch, sizes[0]), "float32"), False, be)
        y = Tensor(be.xp.arange(batch) % sizes[-1], False, be)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        out = {"mlp": f"{list(sizes)} batch {batch}",
               "dlprimer_step_ms": round(_best(be, step) * 1e3, 3)}
    try:
        import torch
        if not torch.cuda.is_available():
            return {**out, "torch": "no CUDA build of PyTorch"}
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.GELU()] if i < len(sizes) - 2 else [])
        tm = torch.nn.Sequential(*layers).cuda()
        topt = torch.optim.Adam(tm.parameters(), lr=1e-4)
        tx = torch.randn(batch, sizes[0], device="cuda")
        ty = torch.arange(batch, device="cuda") % sizes[-1]

        def tstep():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(tx), ty).backward()
            topt.step()
        t = _best(be, tstep)
        out.update(torch_step_ms=round(t * 1e3, 3),
                   dlprimer_over_torch=round(out["dlprimer_step_ms"] / (t * 1e3), 3))
    except ImportError:
        out["torch"] = "not installed"
    return out


def gpu_summary(n=1 << 26) -> dict:
    """Bandwidth fractions (targets: activations >= 0.90 of copy, Adam >= 0.85 of 28 B/param)
    and an MLP step against PyTorch eager (target <= 1.1x). Best of 10, after a warm-up."""
    from .backend import backend_for
    be = backend_for("cuda")
    out = {}
    for name, fn in (("bandwidth", lambda: _bandwidth(be, n)), ("mlp_step", lambda: _mlp_step(be))):
        try:
            out.update(fn())
        except Exception as e:  # report and go on: the rest still says something
            out[name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
    return out


# -- the report -----------------------------------------------------------------------------
def collect(full: bool = False) -> dict:
    from .backend.info import device_arch
    status = cuda_status()
    arch = device_arch() if status["available"] else None
    from .backend._kernels import CHECK_ARCHS
    archs = CHECK_ARCHS if full else ((arch,) if arch else CHECK_ARCHS[:1])
    blas = cpu_blas()    # first: loading MKL puts it among the thread pools
    rep = {"versions": versions(), "cuda": status, "thread_pools": thread_pools(), "blas": blas,
           "kernels": kernel_compiles(archs),
           "self_test": self_test(["cpu"] + (["cuda"] if status["available"] else []))}
    rep["cpu_jit"] = cpu_jit()     # after the self-test, which compiled (or loaded) the kernels
    if full:
        rep["gpu_benchmark"] = gpu_summary() if status["available"] else {
            "skipped": f"no usable GPU: {status['why']}"}
    return rep


def format_report(rep: dict) -> str:
    lines = ["== versions =="]
    lines += [f"  {k:14s} {v}" for k, v in rep["versions"].items()]
    c = rep["cuda"]
    lines.append("== CUDA ==")
    if c["available"]:
        for g in c["gpus"]:
            lines.append(f"  GPU {g['index']}: {g['name']} (sm {g['compute_capability']}, "
                         f"{g['sm_count']} SMs), {g['memory_total_GiB']} GiB "
                         f"({g['memory_free_GiB']} GiB free)")
    else:
        lines.append(f"  CUDA is unavailable: {c['why']}")
        lines.append("  dlprimer runs on the CPU backend (NumPy); the CUDA checks below "
                     "need no GPU.")
    lines.append("== thread pools ==")
    for p in rep["thread_pools"]:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in p.items()))
    lines += _blas_lines(rep.get("blas"))
    lines.append("== kernel families (NVRTC) ==")
    for k in rep["kernels"]:
        if k["ok"] is None:
            lines.append(f"  {k['message']}")
        elif k["ok"]:
            heavy = {n: r for n, r in k.get("registers", {}).items() if r > 32}
            note = "; over 32 registers (fewer than 8 blocks of 256 per SM): " + ", ".join(
                f"{n} {r}" for n, r in sorted(heavy.items(), key=lambda i: -i[1])) if heavy else ""
            lines.append(f"  ok    {k['family']:24s} {k['arch']}  {k['seconds']:.2f} s{note}")
        else:
            lines.append(f"  FAIL  {k['family']:24s} {k['arch']}: {k['message'][:500]}")
    lines.append("== self-test: fused ops against the reference ==")
    for r in rep["self_test"]:
        if r["ok"]:
            lines.append(f"  ok    {r['backend']:5s} {r['op']:32s} "
                         f"max rel err {r['max_rel_err']:.1e}")
        else:
            why = r.get("message") or f"max rel err {r.get('max_rel_err'):.1e}, NaNs " \
                f"{'match' if r.get('nan_match') else 'differ'}"
            lines.append(f"  FAIL  {r['backend']:5s} {r['op']:32s} {why}")
    if "cpu_jit" in rep:
        lines.append("== CPU kernels (numba JIT) ==")
        lines.append(f"  {rep['cpu_jit']['summary']}")
        lines += [f"  fell back to NumPy: {k}: {why}"
                  for k, why in rep["cpu_jit"]["failed"].items()]
    if "gpu_benchmark" in rep:
        lines.append("== GPU benchmark (--full) ==")
        lines += [f"  {k}: {v}" for k, v in rep["gpu_benchmark"].items()]
    bad = failures(rep)
    lines.append(f"== {'all checks passed' if not bad else f'{bad} check(s) FAILED'} ==")
    return "\n".join(lines)


def _blas_lines(b) -> list[str]:
    if not b:
        return []
    lines = ["== matrix products (BLAS) =="]
    if b["active"] != "mkl":
        return lines + [f"  DLPRIMER_BLAS={b['choice']}: NumPy's BLAS ({b['why_not_mkl']})"]
    lines += [f"  DLPRIMER_BLAS={b['choice']}: MKL for 2-D float32/float64 products of "
              f"m*n*k >= {b['min_mnk']}, threading layer {b['threading_layer']}",
              f"  {b['version']}", f"  {b['library']}"]
    verdict = "ok   " if b["ok"] else "FAIL "
    lines.append(f"  {verdict} mkl   sgemm/dgemm, 4 layouts, against float64 "
                 f"max rel err {b['max_rel_err']:.1e}")
    return lines


def failures(rep: dict) -> int:
    return (sum(1 for k in rep["kernels"] if k["ok"] is False)
            + int(rep.get("blas", {}).get("ok") is False)
            + sum(1 for r in rep["self_test"] if not r["ok"]))


def main(full: bool = False, as_json: bool = False, out=None) -> int:
    out = sys.stdout if out is None else out
    rep = collect(full=full)
    if as_json:
        import json
        print(json.dumps(rep, indent=1, default=str), file=out)
    else:
        print(format_report(rep), file=out)
    return 1 if failures(rep) else 0
