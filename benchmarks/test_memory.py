"""Peak memory of a training step against the analytic estimate, and against the
hand-written NumPy step and PyTorch.

Two measurements:

* dlprimer's own meter (``backend.memory``: tracemalloc, which sees every NumPy
  buffer), on from before the model is built: the peak over the second step
  (weights, gradients, Adam's two moments, the batch, activations and workspace)
  against
  ``dp.estimate(sizes, batch, optimizer="adam").total_bytes``;
* the same for every peer, the same way: in a fresh process, resident-set growth
  (peak RSS, ``VmHWM`` after ``/proc/self/clear_refs``) from just before the model
  is built to the end of two steps. RSS is the one meter that sees NumPy's and
  PyTorch's allocators alike; it counts pages touched, so it includes allocator
  slack and library workspaces beyond the estimate.

Sizes: 784-1024-1024-10 at batch 256 with Adam (quick: 64-128-128-10 at 32).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from _bench import QUICK, tag
from dlprimer import optim

SIZES, BATCH = ([64, 128, 128, 10], 32) if QUICK else ([784, 1024, 1024, 10], 256)
WORKLOAD = f"peak memory {'-'.join(map(str, SIZES))} b{BATCH} adam"
HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(peer, sizes, batch):
    """Run in a fresh process: RSS growth (bytes) of building the model and two steps."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    if peer == "torch":
        import torch
        torch.set_num_threads(1)
        torch.ones(2) @ torch.ones(2)  # load the kernels before the baseline
    elif peer == "dlprimer":
        import dlprimer  # noqa: F401
    else:
        sys.path.insert(0, HERE)
        import test_mlp  # noqa: F401
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_kib("VmRSS")
    if peer == "torch":
        layers = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(tx), ty).backward()
            opt.step()
    elif peer == "dlprimer":
        import dlprimer as dp
        import dlprimer.nn as nn
        import dlprimer.nn.functional as F
        from dlprimer import optim
        net = nn.MLP(sizes)
        opt = optim.Adam(net.parameters(), lr=1e-3)
        tx, ty = dp.tensor(x), dp.tensor(y)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(net(tx), ty).backward()
            opt.step()
    else:
        dp_ws = [(np.zeros((b, a), np.float32), np.zeros(b, np.float32))
                 for a, b in zip(sizes, sizes[1:])]
        m = test_mlp.NumpyMLP(dp_ws, "adam")
        for _ in range(2):
            m.step(x, y)
    return (_rss_kib("VmHWM") - base) * 1024


def _rss_peak(peer):
    cmd = [sys.executable, os.path.abspath(__file__), peer, json.dumps(SIZES), str(BATCH)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(HERE))
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {peer} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def _dlprimer_step():
    rng = np.random.default_rng(0)
    x = dp.tensor(rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32))
    y = dp.tensor(rng.integers(0, SIZES[-1], BATCH))
    net = nn.MLP(SIZES)
    opt = optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


@pytest.mark.parametrize("peer", ["numpy", "torch", "dlprimer"])
def test_peak_memory(benchmark, request, peer):
    if peer == "torch":
        request.getfixturevalue("torch_cpu")
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak RSS needs Linux /proc")
    tag(benchmark, WORKLOAD, peer, metric="rss_peak_bytes")
    est = dp.estimate(SIZES, BATCH, optimizer="adam")
    mib = 1 << 20
    rss = benchmark.pedantic(_rss_peak, args=(peer,), rounds=1, iterations=1)
    assert rss > 0
    figures = [[f"peak RSS growth ({peer}) / estimate {est.total_bytes / mib:.1f} MiB",
                rss / est.total_bytes, "x"]]
    info = {"rss_peak_bytes": rss, "estimate_bytes": est.total_bytes}
    if peer == "dlprimer":
        meter = dp.backend.backend_for("cpu").memory
        meter.start()
        try:
            step = _dlprimer_step()  # weights, gradient arena, batch: all traced
            step()  # Adam's moments appear on the first step
            meter.reset_peak()
            step()
            traced = meter.peak()
        finally:
            meter.stop()
        info.update(traced_peak_bytes=traced)
        figures.insert(0, [f"traced peak (dlprimer) / estimate {est.total_bytes / mib:.1f} MiB",
                           traced / est.total_bytes, "x"])
    benchmark.extra_info.update(info, figures=figures)


if __name__ == "__main__":
    print(_child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
