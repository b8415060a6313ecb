"""The report's plots, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot`` and no global backend switch: each function builds a
``Figure``, attaches a ``FigureCanvasAgg`` and writes one PNG, so importing
this module never changes the user's matplotlib state.
"""
from __future__ import annotations

import numpy as np

COLORS = {"params": "#4c72b0", "grads": "#55a868", "optimizer": "#c44e52", "inputs": "#8172b2",
          "activations": "#ccb974", "workspace": "#64b5cd"}


def _figure(w=7.0, h=4.0, ncols=1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path):
    fig.savefig(path, format="png")
    return path


def loss_curves(records, path):
    """Training loss per step, train/validation loss and accuracy per epoch."""
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    fig, (ax, ax2) = _figure(10, 4, ncols=2)
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="#9bb7d4", lw=0.8,
                label="train loss (step)")
    if epochs:
        xs = [r["step"] for r in epochs]
        ax.plot(xs, [r["train_loss"] for r in epochs], "o-", color="#1f4e79", label="train loss (epoch)")
        if any("val_loss" in r for r in epochs):
            ax.plot(xs, [r.get("val_loss", np.nan) for r in epochs], "s-", color="#c44e52",
                    label="validation loss")
        for key, style, label in (("train_acc", "o-", "train accuracy"),
                                  ("val_acc", "s-", "validation accuracy")):
            if any(key in r for r in epochs):
                ax2.plot(xs, [r.get(key, np.nan) for r in epochs], style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.set_title("accuracy")
    if ax2.lines:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no accuracy (regression)", ha="center", transform=ax2.transAxes)
    return _save(fig, path)


def diagnostics(records, path):
    """Per-layer gradient norms, update/weight ratios and (for a model with ReLUs) the
    dead-ReLU fraction over steps; a GELU/SiLU model gets two panels, not an empty third."""
    steps = [r for r in records if r.get("event") == "step"]
    dead_keys = sorted({k for r in steps for k in r if k.startswith("dead_relu/")})
    fig, axes = _figure(13 if dead_keys else 9.5, 3.8, ncols=3 if dead_keys else 2)
    a1, a2 = axes[0], axes[1]
    xs = [r["step"] for r in steps]
    keys = sorted({k for r in steps for k in r if k.startswith("grad_norm/")})
    for k in keys:
        a1.plot(xs, [r.get(k, np.nan) for r in steps], lw=0.9, label=k.split("/", 1)[1])
    a1.plot(xs, [r.get("grad_norm", np.nan) for r in steps], color="k", lw=1.2, label="global")
    a1.set_yscale("log")
    a1.set_title("gradient norm per layer")
    a1.set_xlabel("step")
    a1.set_ylabel("L2 norm of the gradient")
    a1.legend(fontsize=7, title="layer", title_fontsize=7)
    for k in sorted({k for r in steps for k in r if k.startswith("update_ratio/")}):
        pts = [(r["step"], r[k]) for r in steps if k in r and r[k] > 0]
        if pts:
            a2.plot(*zip(*pts), lw=0.9, label=k.split("/", 1)[1])
    a2.axhline(1e-3, color="grey", ls="--", lw=0.8)
    a2.set_yscale("log")
    a2.set_title("update / weight ratio (1e-3 dashed)")
    a2.set_xlabel("step")
    a2.set_ylabel("||\u0394w|| / ||w|| (one step)")
    if a2.lines[1:]:
        a2.legend(fontsize=7)
    if dead_keys:
        a3 = axes[2]
        for k in dead_keys:
            a3.plot(xs, [r.get(k, np.nan) for r in steps], lw=0.9, label=f"ReLU #{k.split('/', 1)[1]}")
        a3.set_ylim(-0.02, 1.02)
        a3.set_title("dead ReLU fraction")
        a3.set_xlabel("step")
        a3.set_ylabel("fraction of units at 0 for the whole batch")
        a3.legend(fontsize=7)
    return _save(fig, path)


def activations(path, backend=None):
    """Each activation and its derivative, the derivative taken by autograd. On the CPU the
    curves come from the NumPy reference ops (``backend/cpu.py``), not the JIT kernels:
    801 points need no compiled code, and compiling the 16 float64 kernels for them was
    most of a first run's JIT cost (issue 18)."""
    import dlprimer as dp
    from ..backend import backend_for
    from ..backend.cpu import CPUBackend
    from ..nn import functional as F
    backend = backend_for(backend)
    if getattr(backend, "jit", False):
        backend = CPUBackend()
    fns = {"ReLU": F.relu, "Leaky ReLU (0.1)": lambda x: F.leaky_relu(x, 0.1),
           "ELU": F.elu, "GELU": F.gelu, "GELU (tanh)": lambda x: F.gelu(x, approximate="tanh"),
           "SiLU / Swish": F.silu, "sigmoid": F.sigmoid, "tanh": F.tanh}
    xs = np.linspace(-4, 4, 801)
    fig, (a1, a2) = _figure(11, 4.2, ncols=2)
    curves = {}
    for name, f in fns.items():
        x = dp.tensor(xs, dtype="float64", requires_grad=True, backend=backend)
        y = f(x)
        y.sum().backward()
        curves[name] = (y.numpy(), x.grad.numpy())
    # the tanh GELU lies within 1e-3 of the exact one: drawn dashed on top, in the same
    # colour, with the largest gap in its label, so neither hides the other
    gap = np.abs(curves["GELU"][0] - curves["GELU (tanh)"][0]).max()
    for name, (y, g) in curves.items():
        style = dict(lw=1.3)
        label = name
        if name == "GELU":
            style = dict(lw=3.0, alpha=0.45)
        elif name == "GELU (tanh)":
            style = dict(lw=1.2, ls=(0, (3, 2)), color=a1.lines[-1].get_color())
            label = f"GELU (tanh), max |diff| {gap:.0e}"
        a1.plot(xs, y, label=label, **style)
        a2.plot(xs, g, label=label, **style)
    a1.set_title("activation f(x)")
    a1.set_ylim(-1.6, 4)
    a2.set_title("derivative f'(x) (by autograd)")
    a2.set_ylim(-0.2, 1.3)
    for a in (a1, a2):
        a.axhline(0, color="grey", lw=0.5)
        a.axvline(0, color="grey", lw=0.5)
        a.set_xlabel("x")
    a1.legend(fontsize=8)
    return _save(fig, path)


def _ms(layers, phase, key):
    return np.array([((r[phase].get(key) if r[phase].get(key) is not None else r[phase]["median"])
                      or 0) * 1e3 for r in layers])


def layer_times(profile, path):
    """Forward and backward time per layer: median bars with q1-q3 error bars on a log
    axis (a layer of 0.01 ms stays visible beside one of 10 ms), with the bwd/fwd ratio."""
    layers = [r for r in profile["layers"]]
    names = [r["name"] for r in layers]
    fig, ax = _figure(max(6, 0.9 * len(names) + 2), 4)
    idx = np.arange(len(names))
    tops = {}
    for dx, phase, color in ((-0.2, "forward", "#4c72b0"), (0.2, "backward", "#c44e52")):
        med = _ms(layers, phase, "median")
        lo, hi = _ms(layers, phase, "q1"), _ms(layers, phase, "q3")
        err = np.vstack([np.clip(med - lo, 0, None), np.clip(hi - med, 0, None)])
        ok = med > 0  # a log axis cannot show 0: such a bar is left out
        ax.bar(idx[ok] + dx, med[ok], 0.4, yerr=err[:, ok], capsize=3, label=f"{phase} (median, q1-q3)",
               color=color, error_kw=dict(lw=0.9, ecolor="#333"))
        tops[phase] = np.maximum(med, hi)
    for i, r in enumerate(layers):
        if r.get("time_ratio") and tops["backward"][i] > 0:
            ax.text(i + 0.2, tops["backward"][i] * 1.08, f"{r['time_ratio']:.1f}x", ha="center",
                    va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(idx, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per step (log scale)")
    t = profile["total"]
    ax.set_title(f"forward / backward time per layer (total bwd/fwd {t['time_ratio']:.2f}x time, "
                 f"{t['flop_ratio']:.2f}x FLOPs)", fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    return _save(fig, path)


def memory_split(configs, path):
    """Stacked bars: params / grads / optimizer / inputs / activations / workspace."""
    parts = list(COLORS)
    fig, ax = _figure(max(6, 1.6 * len(configs) + 2), 4.5)
    labels = [c["label"] for c in configs]
    bottom = np.zeros(len(configs))
    for part in parts:
        vals = np.array([(c["split"].get(part) or 0) / 2**20 for c in configs])
        ax.bar(labels, vals, bottom=bottom, label=part, color=COLORS[part])
        bottom += vals
    for i, c in enumerate(configs):
        if c.get("peak"):
            ax.plot([i - 0.4, i + 0.4], [c["peak"] / 2**20] * 2, color="k", lw=1.5)
    ax.set_ylabel("MiB")
    ax.set_title("memory of one training step (black line: measured peak)", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def checkpoint_tradeoff(rows, depth, path):
    """Extra step time against activation memory saved, per segment count k."""
    fig, (a1, a2) = _figure(11, 4, ncols=2)
    ks = [r["segments"] for r in rows]
    saved = [100 * r["memory_saved"] for r in rows]
    extra = [100 * r["extra_time"] for r in rows]
    order = np.argsort(extra, kind="stable")  # joined left to right: a measured curve,
    a1.plot(np.take(extra, order), np.take(saved, order), "o-", color="#4c72b0")  # not k order
    for k, x, y in zip(ks, extra, saved):
        a1.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    a1.axhspan(60, 70, color="#55a868", alpha=0.15, label="chapter: 60-70% memory")
    a1.axvspan(20, 30, color="#c44e52", alpha=0.15, label="chapter: 20-30% compute")
    a1.set_xlabel("extra step time (%)")
    a1.set_ylabel("activation memory saved (%)")
    a1.set_title(f"gradient checkpointing trade-off (L={depth})", fontsize=10)
    a1.margins(x=0.1)  # room for the k= labels
    a1.legend(fontsize=8)
    kk = np.linspace(1, max(ks), 100)
    by_k = np.argsort(ks, kind="stable")
    a2.plot(np.take(ks, by_k), [100 - saved[i] for i in by_k], "o-", label="measured")
    a2.plot(kk, 100 * np.minimum(1.0, (kk + depth / kk) / depth), "--", color="grey",
            label="(k + L/k) / L model")
    a2.set_xlabel("segments k")
    a2.set_ylabel("peak activation memory (% of no checkpointing)")
    a2.set_title("memory against segment count", fontsize=10)
    a2.legend(fontsize=8)
    return _save(fig, path)


def batch_throughput(rows, path):
    """Training-step throughput by batch size. GFLOP/s is samples/s times the FLOPs of
    one sample, the same curve in other units: it is a second scale on the right, not
    a second line drawn over the first."""
    fig, ax = _figure(6, 4)
    rows = sorted(rows, key=lambda r: r["batch"])
    bs = [r["batch"] for r in rows]
    sps = np.array([r["samples_per_s"] for r in rows], dtype=float)
    ax.plot(bs, sps, "o-", color="#4c72b0")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (training step)")
    gf = np.array([r.get("gflops") or np.nan for r in rows], dtype=float)
    per = gf / sps
    per = per[np.isfinite(per) & (per > 0)]
    if per.size:
        k = float(np.median(per))  # GFLOP per sample
        sec = ax.secondary_yaxis("right", functions=(lambda v: v * k, lambda g: g / k))
        sec.set_ylabel("GFLOP/s achieved (same curve)")
    ax.set_title("larger batches and hardware use", fontsize=10)
    return _save(fig, path)
