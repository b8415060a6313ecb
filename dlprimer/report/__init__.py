"""The HTML report: what a run measured, in pictures and numbers.

:func:`build_report` reads what ``dlprimer primer`` or ``dlprimer train`` left
in a run directory (``logs/metrics.jsonl`` or ``metrics.jsonl``,
``profile.json``, ``claims.json``: measurement records, never the command line's
internals), measures what is missing (a profile, the
memory split of a few configurations, the checkpointing trade-off) unless told
not to, and writes ``index.html`` with PNG plots beside it.
"""
from __future__ import annotations

import html
import json
import os
import time

from . import plots, step_sections

__all__ = ["build_report", "plots"]


def _find_metrics(run):
    for p in (os.path.join(run, "logs", "metrics.jsonl"), os.path.join(run, "metrics.jsonl")):
        if os.path.isfile(p):
            return p
    return None


def _load_json(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _measure_memory_configs(backend, seed, size="quick"):
    """The memory split of one step for a few optimizer / batch configurations."""
    from ..workloads import profile_mlp
    cfgs = []
    width = 512 if size != "tiny" else 128
    for opt, batch in (("sgd", 256), ("adam", 256), ("adam", 1024)):
        rep, *_ = profile_mlp("digits", [width, width], "relu", batch, opt, None, seed, 1, 1)
        m = rep.memory
        cfgs.append({"label": f"MLP 64-{width}-{width}-10\n{opt.upper() if opt == 'sgd' else 'Adam'}, B={batch}",
                     "split": m["split"], "peak": m["peak"], "analytic": m.get("analytic")})
    return cfgs


def _measure_tradeoff(backend, seed, size="quick"):
    """The checkpointing claim's rows (the same records the claims table reads)."""
    import dlprimer as dp
    from ..claims import SIZES, claim_checkpointing
    dp.manual_seed(seed)
    c = claim_checkpointing(backend, SIZES[size])
    return c.data["rows"], c.data["depth"]


class _Page:
    """The sections of the report and the PNGs they show."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.sections = []
        self.images = []
        self.fingerprints = []   # (what, fingerprint) of each record the page shows

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def img(self, name, caption):
        self.images.append(name)
        return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def add(self, text):
        self.sections.append(text)


def _training_section(page, run):
    from ..logs import read_jsonl
    mpath = _find_metrics(run) if os.path.isdir(run) else None
    records = read_jsonl(mpath) if mpath else []
    if not records:
        page.add("<h2>Training</h2><p>No training log found in "
                 f"<code>{html.escape(str(run))}</code> (run <code>dlprimer primer</code> or "
                 "<code>dlprimer train --log-dir DIR</code>).</p>")
        return
    cfg = next((r for r in records if r.get("event") == "config"), {})
    epochs = [r for r in records if r.get("event") == "epoch"]
    warns = [r for r in records if r.get("event") in ("warning", "diverged")]
    page.fingerprints.append(("training", cfg.get("fingerprint")))
    plots.loss_curves(records, page.path("loss_accuracy.png"))
    plots.diagnostics(records, page.path("diagnostics.png"))
    last = epochs[-1] if epochs else {}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt_item(k, v, cfg))}</td></tr>"
                   for k, v in list(cfg.items()) + [("final " + k, v) for k, v in last.items()]
                   if k not in ("event", "fingerprint"))
    wl = "".join(f"<li>{html.escape(str(w.get('message')))}</li>" for w in warns) or \
        "<li>none: no vanishing or exploding gradients, no dying ReLUs</li>"
    page.add(
        "<h2>Training</h2>" + page.img("loss_accuracy.png", "Loss and accuracy: per step (light) "
                                       "and per epoch; validation on held-out data.")
        + page.img("diagnostics.png", "The chapter's diagnostics per step: gradient norm per "
                   "layer (vanishing or exploding gradients), update/weight ratio (about 1e-3 is "
                   "healthy), fraction of dead ReLU units.")
        + f"<h3>Warnings</h3><ul>{wl}</ul>"
        + f"<details><summary>run configuration and final metrics</summary><table>{rows}"
          f"</table></details>")


def _activation_section(page, backend):
    plots.activations(page.path("activations.png"), backend=backend)
    page.add("<h2>Activation functions</h2>" + page.img(
        "activations.png", "Each activation and its derivative (computed by dlprimer's autograd). "
        "ReLU's derivative is 0 for x < 0 (dying units); sigmoid and tanh saturate (vanishing "
        "gradients); GELU and SiLU are smooth."))


def _load_profile(run, measure, seed):
    """The run's ``profile.json``, else (``measure``) a fresh profile's record."""
    prof = _load_json(os.path.join(run, "profile.json")) if os.path.isdir(run) else None
    if prof is None and measure:
        from ..measure.records import to_json
        from ..workloads import profile_mlp
        rep, *_ = profile_mlp("digits", [128, 128], "relu", 256, "adam", None, seed, 3, 20)
        prof = to_json(rep.to_dict())
    return prof


def _workload_label(meta) -> str:
    w = (meta or {}).get("workload") or {}
    if w.get("sizes"):
        return f"MLP {'-'.join(map(str, w['sizes']))}, batch {w.get('batch')}, {w.get('optimizer')}"
    shape = (meta or {}).get("inputs_shape")
    return f"the profiled model (inputs {shape})" if shape else "the profiled model"


def _profile_section(page, prof, claims):
    plots.layer_times(prof, page.path("layer_times.png"))
    t = prof["total"]
    ci = t.get("time_ratio_ci95")
    span = f" [95% interval {ci[0]:.2f}-{ci[1]:.2f}]" if ci else ""
    text = (f"<p>Whole step of {html.escape(_workload_label(prof.get('meta')))}: backward/forward = "
            f"<b>{_fmtv(t.get('time_ratio'))}x</b>{span} in time (median of per-step ratios, the "
            f"figure in the plot's labels and the profile table), <b>{_fmtv(t.get('flop_ratio'))}x"
            f"</b> in FLOPs (the chapter: about 2x).")
    bw = next((c for c in claims if c.get("key") == "backward_2x"), None)
    if bw:
        f = (bw.get("figures") or {}).get("time_ratio") or {}
        d = bw.get("data") or {}
        text += (f" The claims table below gives {_fmtv(f.get('median'))}x: another model "
                 f"(MLP {'-'.join(map(str, d.get('sizes', [])))}, batch {d.get('batch')}), with "
                 "larger matmuls, so a different share of elementwise and engine work.")
    page.add("<h2>Forward and backward, per layer</h2>"
             + page.img("layer_times.png", "Median forward and backward time of each layer in one "
                        "training step; the label over a backward bar is its backward/forward ratio.")
             + text + "</p>")


def _memory_section(page, prof, backend, seed, size, measure):
    cfgs = []
    if prof and prof.get("memory"):
        cfgs.append({"label": f"primer {_workload_label(prof.get('meta'))}".replace(", batch", "\nB="),
                     "split": prof["memory"]["split"], "peak": prof["memory"]["peak"]})
    if measure:
        cfgs += _measure_memory_configs(backend, seed, size)
    if not cfgs:
        return
    plots.memory_split(cfgs, page.path("memory_split.png"))
    trs = "".join(
        f"<tr><td>{html.escape(c['label'].replace(chr(10), ', '))}</td>"
        + "".join(f"<td>{_fmt_bytes(c['split'].get(k))}</td>" for k in plots.COLORS)
        + f"<td>{_fmt_bytes(c.get('peak'))}</td></tr>" for c in cfgs)
    head = "".join(f"<th>{k}</th>" for k in plots.COLORS)
    page.add(
        "<h2>Memory split</h2>" + page.img(
            "memory_split.png", "Where a training step's memory goes: weights, gradients, "
            "optimizer state (Adam: two moments), inputs, saved activations and temporary "
            "workspace; measured on one untimed step with the allocator meter on.")
        + f"<table><tr><th>configuration</th>{head}<th>peak</th></tr>{trs}</table>")


def _checkpoint_section(page, claims, backend, seed, size, measure):
    ck = next((c for c in claims if c.get("key") == "checkpointing"), None)
    rows, depth = (ck["data"]["rows"], ck["data"]["depth"]) if ck else (None, None)
    if rows is None and measure:
        rows, depth = _measure_tradeoff(backend, seed, size)
    if rows:
        plots.checkpoint_tradeoff(rows, depth, page.path("checkpoint_tradeoff.png"))
        page.add("<h2>Gradient checkpointing</h2>" + page.img(
            "checkpoint_tradeoff.png", "Recomputing activations in k segments: extra step time "
            "(median of per-round ratios to the plain step) against activation memory saved "
            "(shaded: the chapter's 20-30% / 60-70%), and peak activation memory against k "
            "beside the (k + L/k)/L model. Same records as the claims table."))


def _batch_section(page, claims):
    bt = next((c for c in claims if c.get("key") == "batch_size"), None)
    if bt:
        plots.batch_throughput(bt["data"]["rows"], page.path("batch_throughput.png"))
        page.add("<h2>Batch size and hardware use</h2>" + page.img(
            "batch_throughput.png", "Training-step throughput and achieved FLOP/s by batch size "
            "(medians; the same records as the claims table)."))


def _claims_section(page, claims):
    if not claims:
        return
    trs = "".join(
        f"<tr class='{html.escape(c['verdict'])}'><td>{html.escape(c['statement'])}</td>"
        f"<td>{html.escape(c['claimed'])}</td><td>{html.escape(c['measured'])}</td>"
        f"<td>{html.escape(c['verdict'])}<br><small>{html.escape(c.get('reason', ''))}</small></td>"
        f"<td>{html.escape(c['why'])}</td></tr>"
        for c in claims)
    page.add("<h2>The chapter's claims, re-measured</h2><p>A verdict is <i>holds</i> only when "
             "the 95% interval of the measured figure lies inside the claim's band, <i>differs"
             "</i> only when it lies outside, and <i>inconclusive</i> when it straddles an edge "
             "(a busy machine widens the interval).</p><table class='claims'><tr>"
             "<th>claim</th><th>claimed</th><th>measured here</th><th>verdict</th>"
             f"<th>why they differ</th></tr>{trs}</table>")


def _environment_section(page, fps):
    from ..measure import describe
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(describe(fp))}</li>"
                    for k, fp in fps if fp)
    if items:
        page.add(f"<h2>Environment</h2><ul>{items}</ul>")


def build_report(run, out_dir=None, measure: bool = True, backend=None, seed: int = 0,
                 size: str = "quick") -> str:
    """Write ``index.html`` and its PNGs for run directory ``run``; returns the HTML path.

    Every figure comes from a measurement record (``profile.json``, ``claims.json``,
    the training log); measure: measure what the run lacks (profile, memory split,
    checkpointing trade-off) with workloads of ``size`` ("tiny" or "quick")."""
    import dlprimer as dp
    from ..backend import backend_for
    from ..claims import load_claims
    from ..measure import finish, fingerprint
    b = backend_for(backend)
    fp = fingerprint(b)
    out_dir = out_dir or os.path.join(run, "report")
    os.makedirs(out_dir, exist_ok=True)
    page = _Page(out_dir)
    _training_section(page, run)
    _activation_section(page, b)
    prof = _load_profile(run, measure, seed)
    claims, claims_fp = load_claims(_load_json(os.path.join(run, "claims.json"))
                                    if os.path.isdir(run) else None)
    if prof:
        _profile_section(page, prof, claims)
        step_sections.layer_types_section(page, prof)
        step_sections.roofline_section(page, prof)
    _memory_section(page, prof, b, seed, size, measure)
    step_sections.timeline_section(page, prof, seed, size, measure)
    _checkpoint_section(page, claims, b, seed, size, measure)
    _batch_section(page, claims)
    _claims_section(page, claims)
    _environment_section(page, page.fingerprints + [("this report", finish(fp)),
                                ("profile", ((prof or {}).get("meta") or {}).get("fingerprint")),
                                ("claims", claims_fp)])
    doc = _PAGE.format(
        title="dlprimer report", backend=html.escape(b.name),
        when=html.escape(time.strftime("%Y-%m-%d %H:%M:%S")),
        version=html.escape(dp.__version__), body="\n".join(page.sections))
    path = os.path.join(out_dir, "index.html")
    from ..train.checkpoints import atomic_write
    atomic_write(path, doc.encode())
    return path


def _fmt_item(key, v, cfg):
    """A config or final-metric value as a reader wants it: bytes in KiB/MiB, the
    epoch counted from 1 ("3 of 3"; the log counts from 0), seconds with a unit."""
    name = key[len("final "):] if key.startswith("final ") else key
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _fmtv(v)
    if name.startswith("mem_") or name.endswith("_bytes"):
        return _fmt_bytes(v)
    if name == "epoch" and key != name:
        total = cfg.get("epochs")
        return f"{int(v) + 1} of {total}" if total else str(int(v) + 1)
    if name.startswith("time_"):
        return f"{v:.3g} s"
    return _fmtv(v)


def _fmtv(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; margin-top: 2em; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
table {{ border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }}
table.claims td:nth-child(5) {{ max-width: 420px; }}
tr.holds td:nth-child(4) {{ color: #1a7f37; font-weight: bold; }}
tr.inconclusive td:nth-child(4) {{ color: #9a6700; font-weight: bold; }}
tr.differs td:nth-child(4) {{ color: #cf222e; font-weight: bold; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>{title}</h1>
<p class="meta">dlprimer {version} &middot; backend {backend} &middot; {when}</p>
{body}
</body></html>
"""
