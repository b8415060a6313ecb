"""Plots of one profiled step: each op on the roofline, and memory over the step.

Same conventions as :mod:`dlprimer.report.plots` (object API on the Agg canvas, one
PNG per function, no global matplotlib state).
"""
from __future__ import annotations

import numpy as np

from .plots import _figure, _save

DIRECTION = {"forward": ("o", "#4c72b0"), "backward": ("s", "#c44e52"), "step": ("^", "#55a868")}
PHASE = {"forward": "#4c72b0", "backward": "#c44e52", "step": "#55a868"}


def roofline(roof, path):
    """Log-log roofline: attainable GFLOP/s = min(P, I W) against arithmetic intensity
    I (FLOP/byte), with each op's achieved rate at its intensity (forward circles,
    backward squares, the optimizer update a triangle). Ops without FLOPs are left out
    (their bandwidth share is in the table)."""
    pk = roof["peaks"]
    P, W = pk["flops"] / 1e9, pk["bandwidth"] / 1e9
    ops = [r for r in roof["ops"] if r.get("intensity") and r.get("gflops_per_s")]
    fig, ax = _figure(7.5, 5)
    lo = min([r["intensity"] for r in ops] + [P / W / 100]) / 2
    hi = max([r["intensity"] for r in ops] + [P / W * 10]) * 2
    xs = np.geomspace(lo, hi, 200)
    ax.plot(xs, np.minimum(P, xs * W), color="k", lw=1.5,
            label=f"roof: {W:.1f} GB/s copy, {P:.1f} GFLOP/s matmul")
    ax.axvline(P / W, color="grey", ls=":", lw=1)
    seen = set()
    for r in ops:
        m, c = DIRECTION.get(r["direction"], ("x", "k"))
        ax.plot(r["intensity"], r["gflops_per_s"], m, color=c, ms=7, alpha=0.85,
                label=r["direction"] if r["direction"] not in seen else None)
        seen.add(r["direction"])
        short = {"forward": "fwd", "backward": "bwd"}.get(r["direction"], r["direction"])
        ax.annotate(f"{r['layer']} {short}"[:26], (r["intensity"], r["gflops_per_s"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, compulsory traffic)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"each op on the roofline (ridge {P / W:.1f} FLOP/B: left of it memory-bound)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def memory_timeline(timelines, path):
    """Bytes in use against time through one step, one panel per ``(label, timeline)``
    (:meth:`dlprimer.profiler.timeline.StepRecorder.timeline`), forward / backward /
    optimizer step shaded, the interval peaks as a thin line, the step's peak dashed."""
    fig, axes = _figure(6.5 * len(timelines), 4, ncols=len(timelines))
    axes = np.atleast_1d(axes)
    top = max(tl["peak"] for _, tl in timelines) / 2**20 * 1.08
    for ax, (label, tl) in zip(axes, timelines):
        t = np.array([m["t"] for m in tl["samples"]]) * 1e3
        # a sample is the state from its time on: steps, not lines between samples
        ax.plot(t, [m["bytes"] / 2**20 for m in tl["samples"]], color="k", lw=1.2, label="in use",
                drawstyle="steps-post")
        ax.plot(t, [m["peak"] / 2**20 for m in tl["samples"]], color="#c44e52", lw=0.6,
                alpha=0.7, label="peak since the previous sample", drawstyle="steps-pre")
        for ph in tl["phases"]:
            ax.axvspan(ph["ts"] * 1e3, (ph["ts"] + ph["dur"]) * 1e3, color=PHASE.get(ph["name"], "grey"),
                       alpha=0.12, label=ph["name"] if ph["name"] != "step" else "optimizer step")
        ax.axhline(tl["peak"] / 2**20, color="#c44e52", ls="--", lw=0.8)
        ax.set_ylim(0, top)
        ax.set_xlabel("time in the step (ms; a metered step: slower than the timed ones)")
        ax.set_ylabel("MiB allocated")
        ax.set_title(f"{label}: peak {tl['peak'] / 2**20:.2f} MiB", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
