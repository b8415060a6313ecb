"""Rank program for benchmarks/test_distributed.py (run under mpiexec).

``allreduce SIZES_BYTES REPEATS``: time in-place all-reduce (mean) of float32
buffers of each size; rank 0 prints one JSON line with the median seconds, and
the median seconds of a same-size local copy (the memory-bandwidth peer).
``step IN HIDDEN OUT BATCH STEPS``: time data-parallel training steps of an MLP on
random data, per-rank batch fixed (weak scaling); rank 0 prints the median step
seconds and the communication share read from the communicator's stats.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

import dlprimer as dp
import dlprimer.distributed as dist


def allreduce(sizes, repeats):
    comm = dist.init("auto")
    out = []
    for nbytes in sizes:
        a = np.ones(max(1, nbytes // 4), np.float32)
        b = np.empty_like(a)
        for _ in range(3):
            dist.all_reduce_(a)
        ts, tc = [], []
        for _ in range(repeats):
            comm.barrier()
            snap = comm.stats.snapshot()
            dist.all_reduce_(a)
            ts.append(comm.stats.since(snap)["seconds"])
            t0 = time.perf_counter()
            np.copyto(b, a)
            tc.append(time.perf_counter() - t0)
        worst = comm.all_reduce_scalars([float(np.median(ts))], op="sum")[0] / comm.world_size
        out.append({"bytes": int(a.nbytes), "seconds": worst, "copy_seconds": float(np.median(tc))})
    if comm.rank == 0:
        print(json.dumps({"world": comm.world_size, "allreduce": out}), flush=True)


def step(d_in, hidden, d_out, batch, steps):
    comm = dist.init("auto")
    rng = np.random.default_rng(comm.rank)
    shapes = [(d_in, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, d_out), (d_out,)]
    params = [dp.tensor((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32),
                        requires_grad=True) for s in shapes]
    dist.broadcast_parameters(params)
    x = dp.tensor(rng.standard_normal((batch, d_in)).astype(np.float32))
    y = dp.tensor(rng.standard_normal((batch, d_out)).astype(np.float32))
    times, comm_s, comm_b = [], [], []
    for i in range(steps + 3):
        comm.barrier()
        snap = comm.stats.snapshot()
        t0 = time.perf_counter()
        for p in params:
            p.grad = None
        w1, b1, w2, b2, w3, b3 = params
        h = (x @ w1 + b1).relu()
        h = (h @ w2 + b2).relu()
        loss = ((h @ w3 + b3 - y) ** 2).mean()
        loss.backward()
        dist.all_reduce_gradients(params)
        for p in params:
            p.data -= np.float32(1e-3) * p.grad.data
        dt = time.perf_counter() - t0
        d = comm.stats.since(snap)
        if i >= 3:
            times.append(dt)
            comm_s.append(d["by_op"].get("all_reduce", {}).get("seconds", 0.0))
            comm_b.append(d["by_op"].get("all_reduce", {}).get("bytes", 0))
    med = comm.all_reduce_scalars([float(np.median(times)), float(np.median(comm_s))],
                                  op="sum")
    if comm.rank == 0:
        print(json.dumps({"world": comm.world_size, "step_seconds": med[0] / comm.world_size,
                          "comm_seconds": med[1] / comm.world_size,
                          "comm_bytes": int(np.median(comm_b)),
                          "params": int(sum(p.size for p in params))}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "allreduce":
        allreduce([int(s) for s in sys.argv[2].split(",")], int(sys.argv[3]))
    else:
        step(*[int(a) for a in sys.argv[2:7]])
