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
    """Per-layer gradient norms, update/weight ratios and dead-ReLU fractions over steps."""
    steps = [r for r in records if r.get("event") == "step"]
    fig, (a1, a2, a3) = _figure(13, 3.8, ncols=3)
    xs = [r["step"] for r in steps]
    keys = sorted({k for r in steps for k in r if k.startswith("grad_norm/")})
    for k in keys:
        a1.plot(xs, [r.get(k, np.nan) for r in steps], lw=0.9, label=k.split("/", 1)[1])
    a1.plot(xs, [r.get("grad_norm", np.nan) for r in steps], color="k", lw=1.2, label="global")
    a1.set_yscale("log")
    a1.set_title("gradient norm per layer")
    a1.set_xlabel("step")
    a1.legend(fontsize=7, title="layer", title_fontsize=7)
    for k in sorted({k for r in steps for k in r if k.startswith("update_ratio/")}):
        pts = [(r["step"], r[k]) for r in steps if k in r and r[k] > 0]
        if pts:
            a2.plot(*zip(*pts), lw=0.9, label=k.split("/", 1)[1])
    a2.axhline(1e-3, color="grey", ls="--", lw=0.8)
    a2.set_yscale("log")
    a2.set_title("update / weight ratio (1e-3 dashed)")
    a2.set_xlabel("step")
    if a2.lines[1:]:
        a2.legend(fontsize=7)
    for k in sorted({k for r in steps for k in r if k.startswith("dead_relu/")}):
        a3.plot(xs, [r.get(k, np.nan) for r in steps], lw=0.9, label=f"ReLU #{k.split('/', 1)[1]}")
    a3.set_ylim(-0.02, 1.02)
    a3.set_title("dead ReLU fraction")
    a3.set_xlabel("step")
    if a3.lines:
        a3.legend(fontsize=7)
    return _save(fig, path)


def activations(path, backend=None):
    """Each activation and its derivative, the derivative taken by autograd."""
    import dlprimer as dp
    from ..nn import functional as F
    fns = {"ReLU": F.relu, "Leaky ReLU (0.1)": lambda x: F.leaky_relu(x, 0.1),
           "ELU": F.elu, "GELU": F.gelu, "GELU (tanh)": lambda x: F.gelu(x, approximate="tanh"),
           "SiLU / Swish": F.silu, "sigmoid": F.sigmoid, "tanh": F.tanh}
    xs = np.linspace(-4, 4, 801)
    fig, (a1, a2) = _figure(11, 4.2, ncols=2)
    for name, f in fns.items():
        x = dp.tensor(xs, dtype="float64", requires_grad=True, backend=backend)
        y = f(x)
        y.sum().backward()
        a1.plot(xs, y.numpy(), lw=1.3, label=name)
        a2.plot(xs, x.grad.numpy(), lw=1.3, label=name)
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


def layer_times(profile, path):
    """Forward and backward time per layer (median), with the backward/forward ratio."""
    layers = [r for r in profile["layers"]]
    names = [r["name"] for r in layers]
    f = np.array([(r["forward"]["median"] or 0) * 1e3 for r in layers])
    b = np.array([(r["backward"]["median"] or 0) * 1e3 for r in layers])
    fig, ax = _figure(max(6, 0.9 * len(names) + 2), 4)
    idx = np.arange(len(names))
    ax.bar(idx - 0.2, f, 0.4, label="forward", color="#4c72b0")
    ax.bar(idx + 0.2, b, 0.4, label="backward", color="#c44e52")
    for i, r in enumerate(layers):
        if r.get("time_ratio"):
            ax.text(i + 0.2, b[i], f"{r['time_ratio']:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(idx, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per step (median)")
    t = profile["total"]
    ax.set_title(f"forward / backward time per layer (total bwd/fwd {t['time_ratio']:.2f}x time, "
                 f"{t['flop_ratio']:.2f}x FLOPs)", fontsize=10)
    ax.legend()
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
    a1.plot(extra, saved, "o-", color="#4c72b0")
    for k, x, y in zip(ks, extra, saved):
        a1.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    a1.axhspan(60, 70, color="#55a868", alpha=0.15, label="chapter: 60-70% memory")
    a1.axvspan(20, 30, color="#c44e52", alpha=0.15, label="chapter: 20-30% compute")
    a1.set_xlabel("extra step time (%)")
    a1.set_ylabel("activation memory saved (%)")
    a1.set_title(f"gradient checkpointing trade-off (L={depth})", fontsize=10)
    a1.legend(fontsize=8)
    kk = np.linspace(1, max(ks), 100)
    a2.plot(ks, [100 - s for s in saved], "o-", label="measured")
    a2.plot(kk, 100 * np.minimum(1.0, (kk + depth / kk) / depth), "--", color="grey",
            label="(k + L/k) / L model")
    a2.set_xlabel("segments k")
    a2.set_ylabel("peak activation memory (% of no checkpointing)")
    a2.set_title("memory against segment count", fontsize=10)
    a2.legend(fontsize=8)
    return _save(fig, path)


def batch_throughput(rows, path):
    fig, ax = _figure(6, 4)
    bs = [r["batch"] for r in rows]
    ax.plot(bs, [r["samples_per_s"] for r in rows], "o-", color="#4c72b0")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (training step)", color="#4c72b0")
    ax2 = ax.twinx()
    ax2.plot(bs, [r["gflops"] for r in rows], "s--", color="#c44e52")
    ax2.set_ylabel("GFLOP/s achieved", color="#c44e52")
    ax.set_title("larger batches and hardware use", fontsize=10)
    return _save(fig, path)
