"""The layers beyond the MLP beside PyTorch CPU: attention, conv2d and an autocast
training step; and the backward/forward time ratio per layer type and per
architecture (MLP, CNN, GPT) with the FLOP ratio beside it.

Every comparison is *paired and interleaved*: each round times dlprimer and PyTorch
back to back (the order alternating between rounds), so a load spike on this shared
machine hits both; the figure is the median of the per-round ratios with a
distribution-free 95% interval (order statistics of the ratios). BLAS threads and
PyTorch's intra-op threads are equal (``DLPRIMER_BENCH_THREADS``, default 1).

    python -m pytest benchmarks/test_layers.py -s --benchmark-disable
    DLPRIMER_BENCH_QUICK=1 python -m pytest benchmarks/test_layers.py --benchmark-disable   # CI
"""
from __future__ import annotations

import math
import time

import numpy as np

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim
from _bench import QUICK, tag
from _measure_util import blas_threads

ROUNDS = 5 if QUICK else 21


def median_ci(xs) -> dict:
    """Median of ``xs`` and its 95% interval from order statistics (binomial(n, 1/2))."""
    xs = sorted(xs)
    n = len(xs)
    z = 1.96 * math.sqrt(n) / 2
    lo, hi = max(int(math.floor(n / 2 - z)), 0), min(int(math.ceil(n / 2 + z)), n - 1)
    return {"median": float(np.median(xs)), "ci95": [xs[lo], xs[hi]], "n": n}


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(ours, theirs, rounds=ROUNDS) -> dict:
    """Per-round ratios time(ours) / time(theirs), interleaved, one warm-up call each."""
    ours(), theirs()
    ratios, a, b = [], [], []
    for r in range(rounds):
        if r % 2:
            tb, ta = _time(theirs), _time(ours)
        else:
            ta, tb = _time(ours), _time(theirs)
        a.append(ta)
        b.append(tb)
        ratios.append(ta / tb)
    return {"ratio": median_ci(ratios), "ours_s": median_ci(a), "theirs_s": median_ci(b)}


def _fmt(rec):
    r = rec["ratio"]
    return f"{r['median']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] (n={r['n']})"


def _record(benchmark, workload, rec, **info):
    tag(benchmark, workload, "dlprimer", ratio_vs_torch=rec["ratio"], dlprimer_s=rec["ours_s"],
        torch_s=rec["theirs_s"], **info)
    print(f"\n{workload}: dlprimer / PyTorch time = {_fmt(rec)}; dlprimer "
          f"{rec['ours_s']['median'] * 1e3:.2f} ms, PyTorch {rec['theirs_s']['median'] * 1e3:.2f} ms")


def _fwd_bwd_pair(torch, make_dp, make_torch, arrays):
    """Two closures running forward + backward of the same op on the same arrays."""
    ours = [dp.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]

    def run_dp():
        for t in ours:
            t.grad = None
        make_dp(*ours).sum().backward()

    def run_torch():
        for t in theirs:
            t.grad = None
        make_torch(*theirs).sum().backward()
    return run_dp, run_torch


def test_attention_vs_torch(benchmark, torch_cpu):
    torch = torch_cpu
    bh, L, E = (4, 32, 16) if QUICK else (16, 256, 64)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((bh, L, E)).astype("float32") for _ in range(3)]
    with blas_threads():
        ours, theirs = _fwd_bwd_pair(
            torch, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
            arrays)
        rec = benchmark.pedantic(lambda: paired(ours, theirs), rounds=1, iterations=1)
    _record(benchmark, "layers-attention", rec, shape=[bh, L, E])
    assert rec["ratio"]["median"] > 0


def test_conv2d_vs_torch(benchmark, torch_cpu):
    torch = torch_cpu
    n, c, hw, o = (4, 4, 8, 8) if QUICK else (32, 16, 16, 32)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, c, hw, hw)).astype("float32"),
              rng.standard_normal((o, c, 3, 3)).astype("float32"),
              rng.standard_normal(o).astype("float32")]
    with blas_threads():
        ours, theirs = _fwd_bwd_pair(torch, lambda x, w, b: F.conv2d(x, w, b, padding=1),
                                     lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=1),
                                     arrays)
        rec = benchmark.pedantic(lambda: paired(ours, theirs), rounds=1, iterations=1)
    _record(benchmark, "layers-conv2d", rec, shape=[n, c, hw, hw, o])
    assert rec["ratio"]["median"] > 0


def _mlp_step_dp(sizes, x, y, low):
    net = nn.MLP(sizes)
    opt = optim.Adam(net.parameters())
    xt, yt = dp.tensor(x), dp.tensor(y)

    def step():
        opt.zero_grad()
        with dp.autocast(low or "float16", enabled=low is not None):
            loss = F.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    return step


def _mlp_step_torch(torch, sizes, x, y, low):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters())
    xt, yt = torch.tensor(x), torch.tensor(y)

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=getattr(torch, low or "bfloat16"), enabled=low is not None):
            loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    return step


def test_autocast_step_vs_torch(benchmark, torch_cpu):
    """An MLP training step (Adam) under bfloat16 autocast, beside PyTorch's CPU autocast,
    and each beside its own float32 step (what autocast costs or buys on this CPU)."""
    torch = torch_cpu
    sizes, batch = ([64, 128, 10], 32) if QUICK else ([512, 1024, 1024, 10], 256)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype("float32")
    y = rng.integers(0, sizes[-1], batch)
    with blas_threads():
        vs_torch = benchmark.pedantic(
            lambda: paired(_mlp_step_dp(sizes, x, y, "bfloat16"),
                           _mlp_step_torch(torch, sizes, x, y, "bfloat16")), rounds=1, iterations=1)
        ours_vs_f32 = paired(_mlp_step_dp(sizes, x, y, "bfloat16"), _mlp_step_dp(sizes, x, y, None))
        torch_vs_f32 = paired(_mlp_step_torch(torch, sizes, x, y, "bfloat16"),
                              _mlp_step_torch(torch, sizes, x, y, None))
    _record(benchmark, "layers-autocast-step", vs_torch, sizes=sizes, batch=batch,
            dlprimer_bf16_over_f32=ours_vs_f32["ratio"], torch_bf16_over_f32=torch_vs_f32["ratio"])
    print(f"  bf16 autocast / float32 step: dlprimer {_fmt(ours_vs_f32)}, PyTorch {_fmt(torch_vs_f32)}")
    assert vs_torch["ratio"]["median"] > 0


# -- backward/forward ratios ------------------------------------------------------------------
def _architectures():
    """The three architectures at the sizes here: (model, loss_fn, inputs, targets)."""
    rng = np.random.default_rng(0)
    B = 32 if QUICK else 128
    gpt = nn.GPT(70, block_size=32, n_layer=2, n_head=4, n_embd=32 if QUICK else 64)
    idx = dp.tensor(rng.integers(0, 70, (8 if QUICK else 16, 33)))
    return {
        "MLP 64-256-256-10": (nn.MLP([64, 256, 256, 10]), F.cross_entropy,
                              dp.tensor(rng.standard_normal((B, 64)).astype("float32")),
                              dp.tensor(rng.integers(0, 10, B))),
        "SmallCNN 8x8": (nn.SmallCNN(), F.cross_entropy,
                         dp.tensor(rng.standard_normal((B, 1, 8, 8)).astype("float32")),
                         dp.tensor(rng.integers(0, 10, B))),
        "GPT 2x64": (gpt, lambda lg, t: F.cross_entropy(lg.reshape(-1, 70), t.reshape(-1)),
                     idx[:, :-1], idx[:, 1:]),
    }


_PROFILES = {}


def _profiles():
    """One profile per architecture (:func:`dp.profiler.profile`, timing steps without its
    per-op observers for the totals), shared by the per-type and per-architecture tests:
    the figures here are the profiler's rows, the same the CLI and the report show."""
    if not _PROFILES:
        with blas_threads():
            for k, (m, lf, xx, yy) in _architectures().items():
                _PROFILES[k] = dp.profiler.profile(m, lf, (xx, yy), warmup=2,
                                                   repeats=5 if QUICK else 30, memory=False,
                                                   estimate=False, roofline=False)
    return _PROFILES


def test_backward_forward_ratio_per_layer_type(benchmark):
    """bwd/fwd time per layer type inside each architecture: the profiler's per-type rows
    (``rep.layer_types``: the ops' own forward and backward time, median of per-step
    ratios with its interval, and the counted FLOP ratio beside it)."""
    reps = benchmark.pedantic(_profiles, rounds=1, iterations=1)
    res = {k: {r["type"]: {"time_ratio": r["time_ratio"], "ci95": r["time_ratio_ci95"],
                           "flop_ratio": r["flop_ratio"], "share": r["share"]}
               for r in rep.layer_types} for k, rep in reps.items()}
    tag(benchmark, "layers-bwd-fwd-per-type", "dlprimer", ratios=res)
    from dlprimer.profiler.layer_types import format_layer_types
    for k, rep in reps.items():
        print(f"\n{k}: " + "\n".join(format_layer_types(rep.layer_types)[1:]))
    types = {t for r in res.values() for t in r}
    assert {"linear", "attention", "convolution", "normalisation", "activation", "embedding",
            "pooling"} <= types
    assert all(v["time_ratio"] is None or v["time_ratio"] > 0 for r in res.values() for v in r.values())


def test_backward_forward_ratio_per_architecture(benchmark):
    """The chapter's 2x rule on three architectures, from the profiler (median of per-step
    ratios) with the counted FLOP ratio beside it."""
    reps = benchmark.pedantic(_profiles, rounds=1, iterations=1)
    out = {k: {"time_ratio": rep.total["time_ratio"], "ci95": rep.total["time_ratio_ci95"],
               "flop_ratio": rep.total["flop_ratio"]} for k, rep in reps.items()}
    tag(benchmark, "layers-bwd-fwd-per-architecture", "dlprimer", ratios=out)
    print("\nbackward/forward per architecture: time [95%] / FLOPs")
    for k, r in out.items():
        print(f"  {k:20s} {r['time_ratio']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] / "
              f"{r['flop_ratio']:.2f}")
    assert all(r["flop_ratio"] > 1 for r in out.values())


def test_linear_forward_on_a_stack_vs_one_gemm(benchmark):
    """A Transformer's Linear on (N, T, in) against the same product as one (N*T, in)
    matmul: the op multiplies stacks as one gemm, so the ratio is about 1 (NumPy's
    stacked matmul against W^T ran N small products, about 2x slower at N=256, T=32)."""
    N, T, E = (16, 8, 32) if QUICK else (256, 32, 64)
    rng = np.random.default_rng(0)
    x = dp.tensor(rng.standard_normal((N, T, E)).astype("float32"))
    w = dp.tensor(rng.standard_normal((4 * E, E)).astype("float32"))
    x2, wt = x.numpy().reshape(N * T, E), w.numpy().T
    with blas_threads(), dp.no_grad():
        rec = benchmark.pedantic(lambda: paired(lambda: F.linear(x, w), lambda: x2 @ wt),
                                 rounds=1, iterations=1)
    tag(benchmark, "layers-linear-stack", "dlprimer", ratio_vs_gemm=rec["ratio"], shape=[N, T, E])
    print(f"\nLinear (N, T, in) forward / one gemm = {_fmt(rec)}")
    assert rec["ratio"]["median"] > 0
