"""The report's sections on one step: time and FLOPs per layer type, the roofline and
memory over time.

Both read measurement records: the profile's ``roofline`` (peaks and op rows) and the
memory timelines of one plain and one checkpointed step of the same MLP (measured here
unless the page is built without measuring; then the profile's own timeline alone).
"""
from __future__ import annotations

import html

from . import step_plots


def _fmt(v, f=".2f"):
    return "-" if v is None else format(v, f)


def layer_types_section(page, prof):
    """The profile's per-layer-type rows (``layer_types``), formatted by the same
    :func:`dlprimer.profiler.layer_types.row_cells` as ``dlprimer profile``'s text."""
    from ..profiler.layer_types import COLUMNS, row_cells
    rows = (prof or {}).get("layer_types") or []
    if not rows:
        return
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row_cells(r)) + "</tr>"
                  for r in rows)
    page.add(
        "<h2>Forward and backward, per layer type</h2><p>Every autograd op of the step booked "
        "to its layer type (attention, convolution, linear, normalisation, activation, "
        "embedding, pooling, loss, other): the ops' own forward and backward time (medians "
        "over the timed steps), the backward/forward time ratio (median of per-step ratios, "
        "95% interval) beside the counted FLOPs and their ratio, and each type's share of "
        "the ops' time. The chapter's 2x is a statement about matrix products: linear and "
        "convolution rows are where to look for it. The last row, framework, is the step's "
        "time outside every op: the modules' Python and the recording of nodes in forward, "
        "the autograd engine in backward.</p>"
        f"<table class='layer-types'><tr>{head}</tr>{trs}</table>")


def roofline_section(page, prof):
    roof = (prof or {}).get("roofline") or {}
    if not roof.get("peaks") or not roof.get("ops"):
        return
    step_plots.roofline(roof, page.path("roofline.png"))
    pk = roof["peaks"]
    rows = "".join(
        f"<tr><td>{html.escape(r['layer'])}</td><td>{html.escape(r['op'])}</td>"
        f"<td>{r['direction']}</td><td>{_fmt((r['time'] or 0) * 1e6, '.1f')}</td>"
        f"<td>{r['bytes']}</td><td>{_fmt(r['intensity'])}</td><td>{_fmt(r['gflops_per_s'])}</td>"
        f"<td>{_fmt(r['gbytes_per_s'])}</td><td>{r['bound'] or '-'}</td>"
        f"<td>{_fmt(r['roof_fraction'] and 100 * r['roof_fraction'], '.0f')}%</td></tr>"
        for r in roof["ops"])
    page.add(
        "<h2>The roofline: what bounds each op</h2>"
        + page.img("roofline.png", "Each op's achieved GFLOP/s at its arithmetic intensity "
                   "(FLOPs over compulsory bytes), under the machine's roofs measured in the "
                   "same run: a copy for bandwidth, a float32 matmul for compute.")
        + f"<p>Peaks: {pk['bandwidth'] / 1e9:.1f} GB/s (copy of {pk['copy_bytes'] // 2**21} MiB), "
          f"{pk['flops'] / 1e9:.1f} GFLOP/s (matmul {pk['matmul_n']}); ridge "
          f"{pk['ridge']:.1f} FLOP/byte. Elementwise ops (activations, the loss, the optimizer "
          "update) sit far left of the ridge: their cost is bytes moved, which is why the "
          "chapter's fusion pays. A fraction above 100% means an op ran from cache, faster "
          "than the out-of-cache copy.</p>"
          "<table><tr><th>layer</th><th>op</th><th>direction</th><th>time (us)</th>"
          "<th>bytes</th><th>FLOP/B</th><th>GFLOP/s</th><th>GB/s</th><th>bound</th>"
          f"<th>of roof</th></tr>{rows}</table>")


def measure_timelines(seed: int = 0, size: str = "quick"):
    """Memory timelines of one step of an MLP on digits, plain and checkpointed
    (sqrt-many segments), Adam: ``[(label, timeline), ...]``."""
    import dlprimer as dp
    from ..data import DataLoader, load_dataset
    from ..nn import functional as F
    from ..profiler import profile
    from ..workloads import build_model, make_optimizer
    width, depth, batch = (128, 4, 128) if size == "tiny" else (512, 6, 512)
    data = load_dataset("digits", seed=seed)
    sizes = [data.num_features] + [width] * depth + [data.num_outputs]
    b = next(iter(DataLoader(data.train, min(batch, len(data.train)), shuffle=True, seed=seed)))
    out = []
    for k in (1, 3):
        dp.manual_seed(seed)
        model = build_model(sizes, "gelu", 0.0, k)
        opt = make_optimizer("adam", model.parameters())
        rep = profile(model, F.cross_entropy, b, optimizer=opt, warmup=1, repeats=1, estimate=False,
                      roofline=False)
        label = f"MLP {'-'.join(map(str, sizes))}, B={len(b[1])}" + (
            "" if k == 1 else f", checkpointing ({k} segments)")
        out.append((label, rep.memory["timeline"]))
    return out


def timeline_section(page, prof, seed, size, measure):
    tls = measure_timelines(seed, size) if measure else []
    own = ((prof or {}).get("memory") or {}).get("timeline")
    if not tls and own and own.get("samples"):
        tls = [("the profiled step", own)]
    if not tls:
        return
    step_plots.memory_timeline(tls, page.path("memory_timeline.png"))
    peaks = ", ".join(f"{html.escape(lab)}: {tl['peak'] / 2**20:.2f} MiB" for lab, tl in tls)
    page.add(
        "<h2>Memory over one step</h2>"
        + page.img("memory_timeline.png", "Bytes allocated (the allocator's view: tracemalloc on "
                   "the CPU, CuPy's pool on CUDA), sampled at every op's start and end; forward, "
                   "backward and the optimizer step shaded. Activations pile up in forward and "
                   "are released in backward; with checkpointing only the segment boundaries "
                   "are kept and a segment is recomputed in backward.")
        + f"<p>Peaks: {peaks}.</p>")
