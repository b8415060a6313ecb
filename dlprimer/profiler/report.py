"""The profiler's report: a text table for people, a dict for JSON."""
from __future__ import annotations

from ..measure.stats import ratio as _paired, summarize


def stats(xs) -> dict:
    """The record of repeated timings in seconds (:func:`dlprimer.measure.summarize`):
    median, ``ci95``, quartiles, min, max, ``n``, spread; zeros when there are none."""
    xs = [float(x) for x in xs]
    if not xs:
        return {"median": 0.0, "ci95": [0.0, 0.0], "q1": 0.0, "q3": 0.0, "min": 0.0, "max": 0.0,
                "n": 0, "spread": None, "confidence": 0.0, "unit": "s", "warnings": []}
    return summarize(xs).to_dict()


def paired_ratio(a, b) -> dict | None:
    """The record of per-step ratios ``a[i] / b[i]`` (None unless both are the same
    non-empty length with positive denominators)."""
    if not a or len(a) != len(b) or any(y <= 0 for y in b):
        return None
    return _paired(list(a), list(b)).to_dict()


def _ratio(a, b):
    return a / b if b else None


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def fmt_time(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_flops(f) -> str:
    if f is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(f) >= scale:
            return f"{f / scale:.2f}{unit}"
    return f"{f:.0f}"


def _span(st) -> str:
    lo, hi = st.get("ci95") or (st["q1"], st["q3"])
    return f"{fmt_time(st['median'])} [{fmt_time(lo)}-{fmt_time(hi)}]"


def _fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}"


class Report:
    """What :func:`dlprimer.profiler.profile` measured.

    ``layers`` (list of dicts), ``total`` (dict), ``ops`` (per (layer, op), most
    expensive backward first: backward and forward self time, FLOPs, bytes, roofline
    figures), ``memory`` (peak per phase and the split, beside the analytic estimate;
    ``memory["timeline"]``: bytes in use through the step), ``meta`` (backend,
    repeats, shapes, fusion), ``roofline`` (``peaks`` and one row per op and
    direction, :func:`dlprimer.profiler.ops.op_rows`).
    """

    def __init__(self, layers, total, ops, memory, meta, roofline=None):
        self.layers = layers
        self.total = total
        self.ops = ops
        self.memory = memory
        self.meta = meta
        self.roofline = roofline
        self.layer_types = []   # per layer type rows (:mod:`.layer_types`)

    def to_dict(self) -> dict:
        return {"meta": self.meta, "layers": self.layers, "total": self.total, "ops": self.ops,
                "memory": self.memory, "roofline": self.roofline,
                "layer_types": self.layer_types}

    def __repr__(self):
        t = self.total
        return (f"<profiler.Report {self.meta.get('backend')}: fwd {fmt_time(t['forward']['median'])}, "
                f"bwd {fmt_time(t['backward']['median'])}, bwd/fwd time {_fmt_ratio(t['time_ratio'])}, "
                f"FLOPs {_fmt_ratio(t['flop_ratio'])}>")

    def table(self, top_ops: int = 8) -> str:
        """A readable text table: per layer and total, then the costliest backward
        ops, then memory (measured split beside the analytic estimate)."""
        m = self.meta
        lines = [f"dlprimer profile  backend={m['backend']}  fusion={'on' if m['fusion'] else 'off'}  "
                 f"warmup={m['warmup']}  repeats={m['repeats']}"
                 + (f"  autocast={m['autocast']}" if m.get("autocast") else "")
                 + "  (times: median [95% interval])"]
        if m.get("fingerprint"):
            from ..measure import describe
            lines.append(f"environment: {describe(m['fingerprint'])}")
        head = (f"{'layer':<22}{'forward':>30}{'backward':>30}{'fwd FLOPs':>11}{'bwd FLOPs':>11}"
                f"{'bwd/fwd t':>10}{'bwd/fwd F':>10}{'GFLOP/s':>9}")
        lines += [head, "-" * len(head)]

        def row(name, r):
            f, b = r["forward"], r["backward"]
            t = (f["median"] or 0) + (b["median"] or 0)
            rate = (r["fwd_flops"] + r["bwd_flops"]) / t / 1e9 if t else None
            return (f"{name[:21]:<22}"
                    f"{_span(f):>30}{_span(b):>30}"
                    f"{fmt_flops(r['fwd_flops']):>11}{fmt_flops(r['bwd_flops']):>11}"
                    f"{_fmt_ratio(r['time_ratio']):>10}{_fmt_ratio(r['flop_ratio']):>10}"
                    f"{'-' if rate is None else f'{rate:.2f}':>9}")
        for r in self.layers:
            lines.append(row(r["name"], r))
        lines.append("-" * len(head))
        lines.append(row("total", self.total))
        st = self.total.get("step")
        if st is not None:
            lines.append(f"optimizer step: {_span(st)}")
        tr = self.total.get("time_ratio_ci95")
        if tr:
            lines.append(f"backward/forward time, median of per-step ratios: "
                         f"{self.total['time_ratio']:.2f}x [{tr[0]:.2f}-{tr[1]:.2f}]")
        for ph in ("forward", "backward", "step"):
            for w in ((self.total.get(ph) or {}).get("warnings") or []):
                lines.append(f"warning: total {ph}: {w}")
        eng = self.total.get("backward_engine")
        if eng is not None:
            lines.append(f"backward outside ops (engine, gradient accumulation): {fmt_time(eng)}")
        if self.ops:
            lines.append("")
            lines.append(f"costliest backward ops (self time, median per step){'':>4}share  bwd FLOPs")
            for o in self.ops[:top_ops]:
                lines.append(f"  {o['layer'][:20]:<21}{o['op'][:18]:<19}{fmt_time(o['backward']):>10}"
                             f"{o['share'] * 100:>8.1f}%  {fmt_flops(o['bwd_flops'])}")
        from .layer_types import format_layer_types
        lines += format_layer_types(self.layer_types)
        lines += roofline_lines(self.roofline)
        mem = self.memory
        if mem:
            lines.append("")
            lines.append(f"memory ({mem['meter']}, one untimed step)   measured      analytic")
            est = mem.get("analytic") or {}
            for k in ("params", "grads", "optimizer", "inputs", "activations", "workspace"):
                lines.append(f"  {k:<30}{fmt_bytes(mem['split'][k]):>12}  {fmt_bytes(est.get(k)):>12}")
            for ph, v in mem["phases"].items():
                lines.append(f"  peak during {ph:<18}{fmt_bytes(v['peak']):>12}")
            lines.append(f"  {'peak of the step':<30}{fmt_bytes(mem['peak']):>12}  "
                         f"{fmt_bytes(est.get('total')):>12}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def roofline_lines(roof) -> list:
    """The roofline section of the table: the machine's peaks, then each op and
    direction with its bytes, intensity, achieved rates and fraction of the roof."""
    if not roof or not roof.get("ops"):
        return []
    pk = roof.get("peaks")
    out = [""]
    if pk:
        out.append(f"roofline: peaks {pk['flops'] / 1e9:.1f} GFLOP/s (float32 matmul {pk['matmul_n']}), "
                   f"{pk['bandwidth'] / 1e9:.1f} GB/s (copy), ridge {pk['ridge']:.1f} FLOP/B")
    out.append(f"  {'layer':<16}{'op':<20}{'dir':<9}{'time':>10}{'bytes':>11}{'FLOP/B':>8}"
               f"{'GFLOP/s':>9}{'GB/s':>8}  bound    roof")
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in roof["ops"]:
        out.append(f"  {r['layer'][:15]:<16}{r['op'][:19]:<20}{r['direction'][:8]:<9}"
                   f"{fmt_time(r['time']):>10}{fmt_bytes(r['bytes']):>11}{num(r['intensity'], '.2f'):>8}"
                   f"{num(r['gflops_per_s'], '.2f'):>9}{num(r['gbytes_per_s'], '.2f'):>8}  "
                   f"{r['bound'] or '-':<8}{num(r['roof_fraction'] and 100 * r['roof_fraction'], '.0f'):>4}%")
    return out
