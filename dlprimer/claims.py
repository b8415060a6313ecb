"""The chapter's quantitative claims, re-measured on this machine.

Each check builds a small workload, measures it with the profiler
(:func:`dlprimer.profiler.profile`, :func:`dlprimer.profiler.checkpoint_tradeoff`)
or the backend's own timer, and returns a :class:`Claim`: what the chapter says,
what was measured here, and why the two differ. Nothing is assumed: the numbers
printed are the numbers measured.

Every timed figure is a record (:mod:`dlprimer.measure.stats`): median, 95% interval,
samples, spread; two things compared are timed in turn and their ratio is the
median of per-round ratios. A claim's verdict compares that interval with the
claim's band: ``holds`` when the interval lies inside, ``differs`` when it lies
outside, ``inconclusive`` when it straddles an edge (the reason says which), so a
busy machine widens the interval and makes a claim inconclusive rather than
flipping it.

The claims (chapter sections in brackets):

1. "The backward pass requires approximately twice the computation ... roughly
   two-thirds of the total compute is spent on gradient computation" [Backpropagation].
2. "With Adam ... roughly 12 bytes per parameter (4 for weights, 4 for gradient,
   4 for optimizer state)" [Memory].
3. Gradient checkpointing "trades roughly 20-30% additional computation for up to
   60-70% memory reduction" [Gradient Checkpointing].
4. GELU "does cost more compute than ReLU" [Activation functions].
5. "Larger batch sizes ... enable better GPU utilization" [Batch size].
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: Workload sizes: "quick" keeps ``dlprimer primer`` within its time budget on 2 cores,
#: "tiny" is for smoke tests (seconds; its intervals are the widest). ``repeats`` is the
#: least number of interleaved rounds, ``budget`` the seconds a comparison may take
#: to bring its interval within +-5%.
SIZES = {
    "tiny": {"mlp": [64, 256, 256, 10], "batch": 128, "repeats": 6, "budget": 1.0,
             "deep_width": 128, "deep_layers": 16, "deep_batch": 64,
             "act_elems": 1 << 16, "batches": [8, 64, 512], "thru_mlp": [64, 128, 10]},
    "quick": {"mlp": [256, 1024, 1024, 1024, 10], "batch": 256, "repeats": 15, "budget": 4.0,
              "deep_width": 256, "deep_layers": 36, "deep_batch": 128,
              "act_elems": 1 << 20, "batches": [8, 32, 128, 512, 2048],
              "thru_mlp": [256, 512, 512, 10]},
    "full": {"mlp": [512, 2048, 2048, 2048, 10], "batch": 512, "repeats": 30, "budget": 15.0,
             "deep_width": 512, "deep_layers": 64, "deep_batch": 256,
             "act_elems": 1 << 23, "batches": [4, 16, 64, 256, 1024, 4096],
             "thru_mlp": [512, 1024, 1024, 10]},
}


@dataclass
class Claim:
    """One claim re-measured: ``verdict`` is "holds", "differs" or "inconclusive",
    ``reason`` says why (which interval against which band), ``figures`` holds each
    timed or counted figure as a record (``median``, ``ci95``, ``n``, ...), ``band``
    the range that counts as the claim holding for the figure the verdict is on."""
    key: str
    statement: str
    claimed: str
    measured: str
    why: str
    verdict: str
    reason: str = ""
    band: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def __post_init__(self):
        if not self.warnings:
            self.warnings = _dedupe(self.data.pop("warnings", None) or [])

    def to_dict(self):
        return asdict(self)


def _dedupe(ws):
    return list(dict.fromkeys(ws))


def _report_warnings(rep):
    """Warnings of a profile's total records, and a load change during it."""
    from .measure.stats import LOAD_CHANGE
    t = rep.total
    ws = [f"{ph}: {w}" for ph in ("forward", "backward") for w in (t[ph].get("warnings") or [])]
    fp = rep.meta.get("fingerprint") or {}
    a, b = (fp.get("load_start") or [None])[0], (fp.get("load_end") or [None])[0]
    if a is not None and b is not None and abs(b - a) >= LOAD_CHANGE:
        ws.append(f"the load average changed from {a:.2f} to {b:.2f} during the measurement")
    return ws


def _batch(sizes, n, backend, seed=0):
    from .tensor import Tensor
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.standard_normal((n, sizes[0])).astype(np.float32))
    y = backend.asarray(rng.integers(0, sizes[-1], n).astype(np.int64))
    return Tensor(x, False, backend), Tensor(y, False, backend)


def _mlp(sizes, activation="relu", backend=None):
    from .nn import MLP
    return MLP(list(sizes), activation=activation, backend=backend)


def _loss(out, y):
    from .nn import functional as F
    return F.cross_entropy(out, y)


def _exact(value) -> dict:
    """A counted (not timed) figure as a record: its interval is the value itself."""
    return {"median": value, "ci95": [value, value], "n": 1, "unit": "exact"}


def _band(lo, hi) -> list:
    return [lo, None if hi == math.inf else hi]


def _timed(backend, fns, size, pairs=None):
    """``fns`` timed in turn by the backend's timer until every interval is within
    +-5% or the size's budget is spent (:func:`dlprimer.measure.measure`)."""
    from .measure import measure
    return measure(fns, timer=backend.timer, warmup=1, min_rounds=size["repeats"],
                   max_rounds=max(size["repeats"], 400), budget_s=size["budget"], pairs=pairs)


# -- 1. backward = 2x forward --------------------------------------------------------------
BACKWARD_BAND = (1.6, 2.4)


def _backward_arch(backend, size, kind):
    """One architecture's bwd/fwd time and FLOP ratios, from the profiler."""
    from .claims_arch import arch_workload, type_summary
    from .profiler import profile
    model, loss_fn, batch, label = arch_workload(kind, backend, size)
    rep = profile(model, loss_fn, batch, warmup=2, repeats=2 * size["repeats"], memory=False,
                  estimate=False)
    t = rep.total
    tr = {"median": t["time_ratio"], "ci95": t["time_ratio_ci95"], "n": t["forward"]["n"], "unit": "x"}
    f, b = t["forward"]["median"], t["backward"]["median"]
    return {"label": label, "rep": rep, "ratio": tr, "flop_ratio": t["flop_ratio"],
            "share_t": b / (f + b), "share_f": t["bwd_flops"] / (t["fwd_flops"] + t["bwd_flops"]),
            "types": type_summary(rep), "layer_types": getattr(rep, "layer_types", [])}


def claim_backward(backend, size, models=("mlp",)) -> Claim:
    """bwd/fwd time on each architecture of ``models`` (mlp, cnn, gpt), each with its
    interval and the reason for its gap to 2x; the verdict combines them."""
    from .claims_arch import WHY_BACKWARD
    from .measure import combine_verdicts, verdict
    per = {k: _backward_arch(backend, size, k) for k in models}
    first = per[models[0]]
    parts = [verdict(p["ratio"]["ci95"], *BACKWARD_BAND) for p in per.values()]
    v, reason = combine_verdicts([(vv, f"{k}: {r}") for k, (vv, r) in zip(per, parts)]
                                 if len(per) > 1 else parts)
    measured = "; ".join(
        f"{k}: bwd/fwd time {p['ratio']['median']:.2f}x [95%: {p['ratio']['ci95'][0]:.2f}-"
        f"{p['ratio']['ci95'][1]:.2f}] (FLOPs {p['flop_ratio']:.2f}x), backward {p['share_t']:.0%} "
        f"of time ({p['share_f']:.0%} of FLOPs), {p['label']}" for k, p in per.items())
    why = " ".join(f"{k.upper()}: {WHY_BACKWARD[k]}; by layer type here: {p['types']}."
                   for k, p in per.items())
    why += (" The autograd engine adds per-node work to every backward (gradient "
            "accumulation, freeing saved arrays), which weighs most in the smallest models.")
    figures = {"time_ratio": first["ratio"], "forward_s": first["rep"].total["forward"],
               "backward_s": first["rep"].total["backward"],
               "flop_ratio": _exact(first["flop_ratio"])}
    for k, p in per.items():
        figures[f"time_ratio {k}"] = p["ratio"]
        figures[f"flop_ratio {k}"] = _exact(p["flop_ratio"])
    warns = [f"{k}: {w}" if len(per) > 1 else w for k, p in per.items()
             for w in _report_warnings(p["rep"])]
    return Claim(
        "backward_2x", "backward costs about 2x the forward pass, so about 2/3 of training compute",
        "bwd/fwd = 2.0, backward share = 67%", measured, why, v, reason,
        {"time_ratio": _band(*BACKWARD_BAND)}, figures,
        {"backward_share_time": first["share_t"], "backward_share_flops": first["share_f"],
         "sizes": size["mlp"], "batch": size["batch"], "layers": first["rep"].layers,
         "fingerprint": first["rep"].meta.get("fingerprint"),
         "architectures": {k: {"label": p["label"], "time_ratio": p["ratio"],
                               "flop_ratio": p["flop_ratio"], "backward_share_time": p["share_t"],
                               "layer_types": p["layer_types"]} for k, p in per.items()},
         "warnings": warns})


# -- 2. 12 bytes per parameter with Adam -------------------------------------------------------
ADAM_BAND = (11.5, 12.5)


def claim_adam_bytes(backend, size, models=("mlp",)) -> Claim:
    from .measure import verdict
    from .optim import Adam
    from .profiler import profile
    sizes = size["thru_mlp"]
    model = _mlp(sizes, backend=backend)
    n = model.num_parameters()
    opt = Adam(model.parameters(), lr=1e-3)
    rep = profile(model, _loss, _batch(sizes, 32, backend), optimizer=opt, warmup=1, repeats=1,
                  memory=True, estimate=False)
    split = rep.memory["split"]
    w, g, o = split["params"] / n, split["grads"] / n, split["optimizer"] / n
    total = w + g + o
    scratch = max(0.0, o - 8.0)
    v, reason = verdict((total, total), *ADAM_BAND)
    return Claim(
        "adam_bytes", "training with Adam needs about 12 bytes per parameter "
        "(4 weights + 4 gradient + 4 optimizer state)",
        "12 bytes/param",
        f"{total:.1f} bytes/param = {w:.1f} weights + {g:.1f} gradient + {o:.1f} optimizer state "
        f"({n:,} parameters, measured from the arrays)",
        "Adam keeps two state arrays per parameter, the first moment m and the second moment v, "
        "so its state is 8 bytes in float32, not 4: 16 bytes/param. The chapter's 12 is right for "
        "SGD with momentum (one state array). Mixed precision keeps 16 too (2 + 2 + 4 master + 8); "
        "activations come on top of either."
        + (f" The {scratch:.1f} bytes/param beyond 16 are the fused update's fixed scratch "
           "blocks, which vanish per parameter in a large model." if scratch >= 0.05 else ""),
        v, reason.replace("95% interval", "exact count"), {"bytes_per_param": _band(*ADAM_BAND)},
        {"bytes_per_param": _exact(total)},
        {"weights": w, "grads": g, "optimizer": o, "params": n})


# -- 3. gradient checkpointing ----------------------------------------------------------------
CKPT_TIME_BAND, CKPT_MEMORY_BAND = (0.1, 0.4), (0.5, 0.8)


def _deep_mlp(backend, w, L):
    from .nn import Linear, ReLU, Sequential
    mods = []
    for _ in range(L - 1):
        mods += [Linear(w, w, backend=backend), ReLU()]
    mods.append(Linear(w, 10, backend=backend))
    return Sequential(*mods)


def claim_checkpointing(backend, size, models=("mlp",)) -> Claim:
    """The sqrt(L) checkpointing trade-off on a deep MLP, and (``"gpt" in models``) on a
    GPT whose blocks are the checkpointed layers."""
    c = _checkpointing_mlp(backend, size)
    if "gpt" in models:
        _add_transformer_checkpointing(c, backend, size)
    return c


def _add_transformer_checkpointing(c, backend, size):
    from .claims_arch import transformer_checkpointing
    from .measure import combine_verdicts, verdict
    tr, label = transformer_checkpointing(backend, size)
    best = tr.row(tr.sqrt_choice)
    saved = 1 - best["memory_ratio"]
    extra, ci = best["time_ratio"] - 1, [x - 1 for x in best["time_ratio_ci95"]]
    c.measured += (f"; Transformer ({label}, {tr.depth} layers with parameters) at "
                   f"k={tr.sqrt_choice}: {extra:+.0%} step time [95%: {ci[0]:+.0%} to {ci[1]:+.0%}], "
                   f"{saved:.0%} less peak activation memory")
    c.figures["extra_time transformer"] = {"median": extra, "ci95": ci, "n": best["step"]["n"],
                                           "unit": "x"}
    c.figures["memory_saved transformer"] = _exact(saved)
    c.data["transformer"] = {"label": label, "segments": tr.sqrt_choice, "tradeoff": tr.to_dict()}
    c.warnings += [f"transformer: {w}" for w in tr.meta.get("warnings", [])]
    vt, rt = verdict(ci, *CKPT_TIME_BAND)
    vm, rm = verdict((saved, saved), *CKPT_MEMORY_BAND)
    c.verdict, c.reason = combine_verdicts([
        (c.verdict, "MLP " + c.reason), (vt, f"Transformer extra time: {rt}"),
        (vm, "Transformer memory saved: " + rm.replace("the 95% interval", "exact count"))])


def _checkpointing_mlp(backend, size) -> Claim:
    from .measure import combine_verdicts, verdict
    from .profiler import checkpoint_tradeoff
    w, L = size["deep_width"], size["deep_layers"]
    model = _deep_mlp(backend, w, L)
    x, y = _batch([w] * L + [10], size["deep_batch"], backend)
    tr = checkpoint_tradeoff(model, _loss, (x, y), segments=[1, 2, 4, 8], warmup=1,
                             repeats=size["repeats"], budget_s=size["budget"])
    rows = [{"segments": r["segments"], "memory_saved": 1 - r["memory_ratio"],
             "extra_time": r["time_ratio"] - 1,
             "extra_time_ci95": [r["time_ratio_ci95"][0] - 1, r["time_ratio_ci95"][1] - 1],
             "peak_bytes": r["peak_bytes"], "step_s": r["step"]["median"], "step": r["step"]}
            for r in tr.rows]
    best = next(r for r in rows if r["segments"] == tr.sqrt_choice)
    mem_saved, extra, ci = best["memory_saved"], best["extra_time"], best["extra_time_ci95"]
    v, reason = combine_verdicts([
        verdict(ci, *CKPT_TIME_BAND),
        verdict((mem_saved, mem_saved), *CKPT_MEMORY_BAND)])
    reason = reason.replace("; the 95% interval [", "; memory saved: exact count [", 1)
    return Claim(
        "checkpointing", "gradient checkpointing costs 20-30% more compute for up to 60-70% "
        "less memory",
        "+20-30% compute, -60-70% memory",
        f"at k={tr.sqrt_choice} segments (about sqrt(L), L={tr.depth}): {extra:+.0%} step time "
        f"[95%: {ci[0]:+.0%} to {ci[1]:+.0%}], {mem_saved:.0%} less peak activation memory; "
        + ", ".join(f"k={r['segments']}: {r['extra_time']:+.0%}/{r['memory_saved']:.0%}"
                    for r in rows),
        "Recomputation re-runs the forward of every segment but the last, and a forward is "
        "about 1/3 of forward + backward, so the extra time tends to ~25-33% plus the cost of "
        "re-entering each segment; it is smaller where backward or the optimizer dominate. "
        "Activation memory drops from L layers' worth to about k + L/k (segment inputs plus one "
        "segment recomputed at a time), which is 1 - 2/sqrt(L) at best: the saving grows with "
        "depth, so a shallow model saves less than the chapter's 60-70% and a Transformer with "
        "large per-layer activations saves more. The memory figures are exact (allocator "
        "meter); the extra time is the median of per-round ratios of steps run in turn.",
        v, "extra time: " + reason,
        {"extra_time": _band(*CKPT_TIME_BAND), "memory_saved": _band(*CKPT_MEMORY_BAND)},
        {"extra_time": {"median": extra, "ci95": ci, "n": best["step"]["n"], "unit": "x"},
         "memory_saved": _exact(mem_saved)},
        {"segments": tr.sqrt_choice, "depth": tr.depth, "rows": rows, "tradeoff": tr.to_dict(),
         "warnings": tr.meta.get("warnings", [])})


# -- 4. GELU vs ReLU ---------------------------------------------------------------------------
def _gelu_cpu_note(backend, op_ratio) -> str:
    """Why the measured GELU/ReLU gap is what it is on this backend's erf."""
    if backend.name != "cpu":
        return ""
    if getattr(backend, "jit", False):
        return (f"On the CPU the JIT kernels evaluate erf as a vectorised exp and polynomial "
                f"(backend/jit/mathfn.py; for float32 a fitted normal tail in float32 "
                f"arithmetic, 16 lanes, within 2 ulp, about 0.8-0.85x PyTorch's GELU "
                f"forward+backward), so the "
                f"{op_ratio:.1f}x is GELU's arithmetic against ReLU's memory traffic: ReLU "
                "only moves bytes, GELU still spends about 30 FLOPs and a division per "
                "element. ")
    return ("On the CPU's NumPy path the exact form's cost is mostly SciPy's erf, a scalar "
            "loop of about 15 ns per element that no fusion can shorten, so erf-GELU's "
            "multiple here overstates its FLOP cost (the JIT kernels, numba, cut it). ")


def _activation_ops(backend, n):
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal(n).astype(np.float32))
    gy = backend.asarray(rng.standard_normal(n).astype(np.float32))

    def gelu(approximate):
        def run():
            backend.gelu_forward(x, approximate)
            backend.gelu_backward(x, gy, approximate)
        return run
    return {"relu": lambda: backend.relu_backward(backend.relu_forward(x), gy),
            "gelu (erf)": gelu("none"), "gelu (tanh)": gelu("tanh")}


def _train_steps(backend, sizes, batch, activations):
    out = {}
    for act in activations:
        m = _mlp(sizes, act, backend=backend)

        def run(m=m):
            m.zero_grad()
            _loss(m(batch[0]), batch[1]).backward()
        out[act] = run
    return out


def claim_gelu(backend, size, models=("mlp",)) -> Claim:
    """GELU against ReLU: the op, an MLP step, and (``"gpt" in models``) a Transformer step."""
    c = _gelu_mlp(backend, size)
    if "gpt" in models:
        from .claims_arch import half_budget, transformer_gelu_steps
        m = _timed(backend, transformer_gelu_steps(backend, size), half_budget(size))
        r = m.ratio("gelu", "relu")
        c.measured += f"; a GPT fwd+bwd step with GELU against ReLU in its MLPs {r}"
        c.figures["step_ratio transformer"] = r.to_dict()
        c.warnings += [f"transformer: {w}" for w in m.warnings]
        c.why += (" In the Transformer the activation acts on the MLP's 4E-wide hidden layer "
                  "only, beside matmuls of O(T E^2) and attention of O(T^2 E) per sequence, so "
                  "its share of the step falls as the width grows; in a small GPT on the CPU "
                  "erf's per-element cost still shows.")
    return c


def _gelu_mlp(backend, size) -> Claim:
    from .measure import verdict
    n = size["act_elems"]
    ops = _timed(backend, _activation_ops(backend, n), size)
    op = ops.ratio("gelu (erf)", "relu")
    tanh = ops.ratio("gelu (tanh)", "relu")
    sizes = size["thru_mlp"]
    steps = _timed(backend, _train_steps(backend, sizes, _batch(sizes, 256, backend), ("relu", "gelu")),
                   size)
    step = steps.ratio("gelu", "relu")
    ns = {k: t.median / n * 1e9 for k, t in ops.timings.items()}
    v, reason = verdict(op.ci95, 1.0, math.inf)
    return Claim(
        "gelu_cost", "GELU costs more compute than ReLU",
        "GELU > ReLU",
        f"forward+backward per element: ReLU {ns['relu']:.2f} ns, GELU(erf) {ns['gelu (erf)']:.2f} ns "
        f"({op}), GELU(tanh) {ns['gelu (tanh)']:.2f} ns ({tanh}); a whole "
        f"MLP {sizes} fwd+bwd step {step}",
        "Per element GELU evaluates erf (or tanh) and its derivative, tens of FLOPs against "
        "ReLU's one comparison, so the op alone is several times slower (the tanh form is the "
        "cheap approximation the chapter mentions). " + _gelu_cpu_note(backend, op.median) + (
            "In this small MLP the activation is a visible part of the step, because its matmuls "
            "are small (O(B*H) activation work against O(B*H*H) matmul work); "
            if step.median > 1.2 else
            "In a whole step the matmuls dominate (O(B*H*H) work against the activation's "
            "O(B*H)), so the model barely notices; ") +
        "on a GPU both activations are memory-bound and the gap narrows.",
        v, "GELU(erf)/ReLU: " + reason, {"op_ratio": _band(1.0, math.inf)},
        {"op_ratio": op.to_dict(), "tanh_ratio": tanh.to_dict(), "step_ratio": step.to_dict(),
         **{f"op_s {k}": t.to_dict() for k, t in ops.timings.items()}},
        {"ns_per_elem": ns, "elements": n, "warnings": ops.warnings + steps.warnings})


# -- 5. larger batches use the hardware better ---------------------------------------------------
def _batch_steps(backend, sizes, batches):
    from .optim import SGD
    out = {}
    for b in batches:
        model = _mlp(sizes, backend=backend)
        opt = SGD(model.parameters(), lr=1e-3)
        x, y = _batch(sizes, b, backend)

        def run(model=model, opt=opt, x=x, y=y):
            opt.zero_grad()
            _loss(model(x), y).backward()
            opt.step()
        out[b] = run
    return out


def claim_batch(backend, size, models=("mlp",)) -> Claim:
    from .measure import verdict
    from .profiler import estimate
    sizes, batches = size["thru_mlp"], size["batches"]
    small, large = batches[0], batches[-1]
    m = _timed(backend, _batch_steps(backend, sizes, batches), size,
               pairs=[(small, large)] + [(b, batches[0]) for b in batches[1:]])
    gain = m.ratio(small, large).scaled(large / small, unit="x")  # samples/s at large over small
    rows = []
    for b, t in m.timings.items():
        e = estimate(sizes, b, optimizer="sgd")
        rows.append({"batch": b, "step_s": t.median, "step": t.to_dict(), "samples_per_s": b / t.median,
                     "gflops": (e.fwd_flops + e.bwd_flops) / t.median / 1e9})
    peak = max(rows, key=lambda r: r["samples_per_s"])
    v, reason = verdict(gain.ci95, 1.0, math.inf)
    return Claim(
        "batch_size", "larger batches use the hardware better",
        "throughput grows with batch size",
        f"{rows[0]['samples_per_s']:,.0f} samples/s at batch {small} -> "
        f"{rows[-1]['samples_per_s']:,.0f} at {large} ({gain})"
        + f"; best {peak['samples_per_s']:,.0f} at B={peak['batch']}; "
        + ", ".join(f"B={r['batch']}: {r['gflops']:.1f} GFLOP/s" for r in rows),
        "Each step pays fixed costs (Python, dispatching ops, the optimizer over all weights, "
        "kernel launches on a GPU) that a bigger batch spreads over more samples, and a matmul "
        "with more rows reuses each weight from cache more often. Once the matmuls are compute-"
        "bound the curve flattens, and on a CPU it can fall again once a batch's activations "
        "no longer fit in cache; a GPU, with far more parallel units, keeps gaining longer. "
        "Throughput is not the whole story: the chapter adds that very large batches can "
        "generalise worse.",
        v, f"throughput B={large} over B={small}: " + reason, {"gain": _band(1.0, math.inf)},
        {"gain": gain.to_dict(), **{f"step_s B={b}": t.to_dict() for b, t in m.timings.items()}},
        {"rows": rows, "sizes": sizes, "warnings": m.warnings})


def _arch_claim(name):
    def run(backend, size, models=("mlp",)):
        from . import claims_arch
        return getattr(claims_arch, name)(backend, size, models)
    run.__name__ = name
    return run


CHECKS = {"backward_2x": claim_backward, "adam_bytes": claim_adam_bytes,
          "checkpointing": claim_checkpointing, "gelu_cost": claim_gelu, "batch_size": claim_batch,
          "backward_memory": _arch_claim("claim_backward_memory"),
          "scaling_table": _arch_claim("claim_scaling"), "adam_1b": _arch_claim("claim_adam_1b")}
#: Architectures the claims measure (``--model``): backward_2x and backward_memory run on
#: each; checkpointing and gelu_cost add the Transformer to the MLP when "gpt" is among them.
ARCHITECTURES = ("mlp", "cnn", "gpt")


def check_claims(backend=None, size: str = "quick", only=None, progress=None,
                 models=None) -> list[Claim]:
    """Run every check (or those in ``only``) on ``backend`` with workloads of ``size``
    ("tiny", "quick" or "full") over the architectures ``models`` (default: all of
    :data:`ARCHITECTURES`); returns the Claims."""
    from .backend import backend_for
    b = backend_for(backend)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    models = tuple(ARCHITECTURES if models is None else models)
    bad = [m for m in models if m not in ARCHITECTURES]
    if bad or not models:
        raise ValueError(f"unknown model(s) {bad}; choose from {', '.join(ARCHITECTURES)}")
    size = SIZES[size]
    keys = list(CHECKS) if only is None else list(only)
    unknown = [k for k in keys if k not in CHECKS]
    if unknown:
        raise ValueError(f"unknown claim(s) {unknown}; known: {', '.join(CHECKS)}")
    out = []
    for k in keys:
        if progress:
            progress(k)
        out.append(CHECKS[k](b, size, models))
    return out


def format_claims(claims, width: int = 100, fingerprint=None) -> str:
    """The claims as text: claimed / measured / verdict and its reason / why they differ."""
    import textwrap
    lines = []
    if fingerprint:
        from .measure import describe
        lines += textwrap.wrap("environment: " + describe(fingerprint), width) + [""]
    for i, c in enumerate(claims, 1):
        lines.append(f"{i}. {c.statement}  [{c.verdict}]")
        warn = "; ".join(c.warnings[:4]) + (f"; and {len(c.warnings) - 4} more" if len(c.warnings) > 4 else "")
        for label, text in (("claimed", c.claimed), ("measured", c.measured),
                            ("verdict", f"{c.verdict}: {c.reason}"), ("why", c.why),
                            ("warning", warn)):
            if not text:
                continue
            wrapped = textwrap.wrap(text, width - 13) or [""]
            lines.append(f"   {label + ':':<10}{wrapped[0]}")
            lines += [f"   {'':<10}{w}" for w in wrapped[1:]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def claims_json(claims, fingerprint=None) -> str:
    """``{"fingerprint": ..., "claims": [...]}`` as JSON text."""
    from .measure.records import to_json
    return json.dumps({"fingerprint": to_json(fingerprint),
                       "claims": [to_json(c.to_dict()) for c in claims]}, indent=1)


def load_claims(obj) -> tuple[list, dict | None]:
    """(claims as dicts, fingerprint) from what :func:`claims_json` wrote (or the bare
    list older versions wrote)."""
    if isinstance(obj, dict):
        return list(obj.get("claims") or []), obj.get("fingerprint")
    return list(obj or []), None
