"""`dlprimer doctor` (issue 17, point 4): runs and exits 0 here, GPU or not."""
import os
import subprocess
import sys

import numpy as np

import dlprimer as dp
from dlprimer import doctor
from _cli import jit_line_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_doctor_runs_and_exits_0():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "dlprimer", "doctor"], capture_output=True,
                       text=True, env=env, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for section in ("== versions ==", "== CUDA ==", "== thread pools ==",
                    "== kernel families (NVRTC) ==", "== self-test", "all checks passed"):
        assert section in out, section
    for name in ("python", "numpy", "scipy", "cupy", "cuda_runtime", "cuda_driver", "nccl", "mpi"):
        assert f"  {name} " in out, name
    if not dp.cuda_available():
        assert f"CUDA is unavailable: {dp.backend.cuda_unavailable_reason()}" in out
    for op in ("gelu_forward", "adam_update", "softmax_cross_entropy_backward", "lars_update"):
        assert f"ok    cpu   {op} " in out, op
    jit_line = out.split("== CPU kernels (numba JIT) ==\n", 1)[1].splitlines()[0]
    assert jit_line.startswith("  " + jit_line_start()), jit_line


def test_a_wrong_fused_op_fails_the_self_test(monkeypatch, capsys):
    cpu = dp.backend.backend_for("cpu")
    real = cpu.silu_forward
    monkeypatch.setattr(cpu, "silu_forward", lambda x: real(x) * (1 + 1e-6))
    monkeypatch.setattr(doctor, "kernel_compiles", lambda archs: [])
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "FAIL  cpu   silu_forward" in out and "1 check(s) FAILED" in out
    assert "ok    cpu   silu_backward" in out


def test_doctor_json_and_without_a_gpu_no_benchmark(monkeypatch, capsys):
    import json
    monkeypatch.setattr(doctor, "kernel_compiles", lambda archs: [
        {"family": "x", "arch": "sm_80", "ok": True, "seconds": 0.0}])
    assert doctor.main(full=not dp.cuda_available(), as_json=True) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"versions", "cuda", "thread_pools", "kernels", "self_test"} <= set(rep)
    if not dp.cuda_available():
        assert rep["gpu_benchmark"]["skipped"].startswith("no usable GPU: ")
    assert all(r["ok"] for r in rep["self_test"]) and np.isfinite(
        [r["max_rel_err"] for r in rep["self_test"]]).all()
