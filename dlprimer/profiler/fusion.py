"""What fusion buys: the same model, data and run profiled with fused ops and
with their unfused compositions (``dp.fusion(False)``), the two measured in turn."""
from __future__ import annotations

from ..measure.stats import ratio, summarize
from ..backend.unfused import fusion
from .profile import _backend_of, _zero_grad, profile
from .report import fmt_time

PHASES = ("forward", "backward", "step")


class FusionComparison:
    """Two reports (``fused``, ``unfused``, for their per-layer tables) and the
    unfused/fused ratio of forward, backward and optimizer step, each the median of
    per-round ratios of steps run in turn (``records``: median, ci95, n; >1: fusion is
    faster)."""

    def __init__(self, fused, unfused, records=None, warnings=()):
        self.fused, self.unfused = fused, unfused
        self.records = records or {}
        self.warnings = list(warnings)

    def ratios(self) -> dict:
        if self.records:
            return {ph: r["median"] for ph, r in self.records.items()}
        out = {}
        for phase in PHASES:
            f, u = self.fused.total.get(phase), self.unfused.total.get(phase)
            if f and u and f["median"]:
                out[phase] = u["median"] / f["median"]
        return out

    def to_dict(self):
        return {"fused": self.fused.to_dict(), "unfused": self.unfused.to_dict(),
                "ratios": self.ratios(), "ratio_records": self.records, "warnings": self.warnings}

    def table(self) -> str:
        lines = [f"{'phase':<10}{'fused':>12}{'unfused':>12}{'unfused/fused':>15}{'95% interval':>16}"]
        r = self.ratios()
        for phase in PHASES:
            f, u = self.fused.total.get(phase), self.unfused.total.get(phase)
            if f and u:
                ci = self.records.get(phase, {}).get("ci95")
                span = f"[{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "-"
                lines.append(f"{phase:<10}{fmt_time(f['median']):>12}{fmt_time(u['median']):>12}"
                             f"{r.get(phase, float('nan')):>15.2f}{span:>16}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _phase_step(model, loss_fn, batch, optimizer, backend, enabled):
    """One training step under ``fusion(enabled)``, returning its phase times."""
    params = list(model.parameters())

    def run():
        with fusion(enabled):
            _zero_grad(model, optimizer, params)
            with backend.timer() as tf:
                loss = loss_fn(model(batch[0]), batch[1])
            with backend.timer() as tb:
                loss.backward()
            del loss
            out = {"forward": tf.elapsed, "backward": tb.elapsed}
            if optimizer is not None:
                with backend.timer() as ts:
                    optimizer.step()
                out["step"] = ts.elapsed
        return out
    return run


def _paired_phases(model, loss_fn, batch, optimizer, warmup, rounds):
    """Fused and unfused steps in turn (F U, U F, ...): per phase, the per-round
    unfused/fused ratio records."""
    backend = _backend_of(list(model.parameters()), batch)
    runs = {True: _phase_step(model, loss_fn, batch, optimizer, backend, True),
            False: _phase_step(model, loss_fn, batch, optimizer, backend, False)}
    for _ in range(warmup):
        runs[True]()
        runs[False]()
    got = {True: [], False: []}
    for r in range(rounds):
        for enabled in ((True, False) if r % 2 == 0 else (False, True)):
            got[enabled].append(runs[enabled]())
    records, warnings = {}, []
    for ph in (p for p in PHASES if p in got[True][0]):
        rec = ratio([u[ph] for u in got[False]], [f[ph] for f in got[True]], name=f"{ph} unfused/fused")
        records[ph] = rec.to_dict()
        warnings += rec.warnings
        for enabled in (True, False):
            warnings += summarize([x[ph] for x in got[enabled]],
                                  name=f"{ph} {'fused' if enabled else 'unfused'}").warnings
    return records, warnings


def compare_fusion(model, loss_fn, batch, optimizer=None, warmup: int = 3, repeats: int = 20,
                   rounds: int = 2, memory: bool = False) -> FusionComparison:
    """Profile fused and unfused once each (the per-layer tables), then time
    ``max(repeats, 6)`` more steps of each in turn, so that drift in machine load hits
    both alike: the ratios are medians of per-round ratios with 95% intervals.
    ``rounds`` is kept for compatibility (profiles beyond the first are not needed)."""
    reports = {}
    for enabled in (True, False):
        with fusion(enabled):
            reports[enabled] = profile(model, loss_fn, batch, optimizer=optimizer, warmup=warmup,
                                       repeats=repeats, memory=memory, estimate=False)
    records, warnings = _paired_phases(model, loss_fn, batch, optimizer, min(warmup, 2),
                                       max(repeats, 6))
    return FusionComparison(reports[True], reports[False], records, warnings)
