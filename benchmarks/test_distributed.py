"""Distributed measurements: all-reduce bandwidth by message size, and the 1-to-2
rank scaling efficiency of a data-parallel training step.

Both launch ``mpiexec`` in a subprocess (benchmarks/_dist_rank.py is the rank
program) and report through pytest-benchmark's ``extra_info`` and stdout.

* Bandwidth: bus bandwidth ``size/t * 2(n-1)/n`` of an in-place float32 all-reduce
  (mean), beside the bandwidth of a same-size local ``copyto`` in the same run
  (the memory-bandwidth bound a shared-memory all-reduce cannot beat).
* Scaling: weak scaling (per-rank batch fixed, the data-parallel setting):
  efficiency = t_step(1 rank) / t_step(2 ranks); 1.0 means the second rank doubles
  throughput for free, the shortfall is communication plus contention.

``DLPRIMER_BENCH_QUICK=1`` shrinks sizes for CI. Run:
``python -m pytest benchmarks/test_distributed.py -s``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
from dlprimer.distributed import bus_bandwidth, launch  # noqa: E402

QUICK = os.environ.get("DLPRIMER_BENCH_QUICK") == "1"
RANK_PROGRAM = Path(__file__).with_name("_dist_rank.py")
ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "DLPRIMER_BACKEND": "cpu", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

SIZES = [2**k for k in ((10, 14, 18, 22) if QUICK else (10, 12, 14, 16, 18, 20, 22, 24, 26))]
REPEATS = 10 if QUICK else 30
# (in, hidden, out, per-rank batch, steps)
STEP = (64, 128, 10, 64, 10) if QUICK else (256, 1024, 10, 256, 30)

if launch.find_mpiexec() is None:
    pytest.skip("no mpiexec (pip install 'dlprimer[dist]')", allow_module_level=True)


def _launch(n, *args):
    proc = launch.run(n, [sys.executable, str(RANK_PROGRAM), *map(str, args)],
                      timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_allreduce_bandwidth(benchmark):
    res = benchmark.pedantic(lambda: _launch(2, "allreduce", ",".join(map(str, SIZES)), REPEATS),
                             rounds=1, iterations=1)
    rows = []
    print("\nall-reduce (mean, float32) on 2 ranks")
    print(f"{'bytes':>10} {'time us':>10} {'bus GB/s':>9} {'copy GB/s':>10} {'ratio':>6}")
    for r in res["allreduce"]:
        bw = bus_bandwidth(r["bytes"], r["seconds"], res["world"])
        cp = r["bytes"] / r["copy_seconds"] if r["copy_seconds"] > 0 else float("inf")
        rows.append({**r, "bus_GBps": bw / 1e9, "copy_GBps": cp / 1e9, "ratio_to_copy": bw / cp})
        print(f"{r['bytes']:>10} {r['seconds'] * 1e6:>10.1f} {bw / 1e9:>9.3f} "
              f"{cp / 1e9:>10.3f} {bw / cp:>6.3f}")
    benchmark.extra_info["allreduce"] = rows
    assert all(r["bus_GBps"] > 0 for r in rows)


def test_step_scaling_one_to_two_ranks(benchmark):
    def both():
        return _launch(1, "step", *STEP), _launch(2, "step", *STEP)

    one, two = benchmark.pedantic(both, rounds=1, iterations=1)
    eff = one["step_seconds"] / two["step_seconds"]
    info = {"params": one["params"], "per_rank_batch": STEP[3],
            "step_ms_1": one["step_seconds"] * 1e3, "step_ms_2": two["step_seconds"] * 1e3,
            "comm_ms_2": two["comm_seconds"] * 1e3, "comm_bytes_per_step": two["comm_bytes"],
            "comm_share_2": two["comm_seconds"] / two["step_seconds"],
            "weak_scaling_efficiency": eff, "throughput_speedup": 2 * eff}
    benchmark.extra_info.update(info)
    print("\n" + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in info.items()))
    assert two["comm_bytes"] == 4 * one["params"]
