"""What fusion buys: the same model, data and run profiled with fused ops and
with their unfused compositions (``dp.fusion(False)``)."""
from __future__ import annotations

from ..unfused import fusion
from .profile import profile
from .report import fmt_time


class FusionComparison:
    """Two reports (``fused``, ``unfused``) and the unfused/fused time ratios of
    forward, backward and the optimizer step (>1: fusion is faster)."""

    def __init__(self, fused, unfused):
        self.fused, self.unfused = fused, unfused

    def ratios(self) -> dict:
        out = {}
        for phase in ("forward", "backward", "step"):
            f, u = self.fused.total.get(phase), self.unfused.total.get(phase)
            if f and u and f["median"]:
                out[phase] = u["median"] / f["median"]
        return out

    def to_dict(self):
        return {"fused": self.fused.to_dict(), "unfused": self.unfused.to_dict(), "ratios": self.ratios()}

    def table(self) -> str:
        lines = [f"{'phase':<10}{'fused':>12}{'unfused':>12}{'unfused/fused':>15}"]
        r = self.ratios()
        for phase in ("forward", "backward", "step"):
            f, u = self.fused.total.get(phase), self.unfused.total.get(phase)
            if f and u:
                lines.append(f"{phase:<10}{fmt_time(f['median']):>12}{fmt_time(u['median']):>12}"
                             f"{r.get(phase, float('nan')):>15.2f}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def compare_fusion(model, loss_fn, batch, optimizer=None, warmup: int = 3, repeats: int = 20,
                   rounds: int = 2, memory: bool = False) -> FusionComparison:
    """Profile fused and unfused alternately (``rounds`` times each, timings pooled,
    so drift in machine load hits both alike) and compare."""
    reps = {True: [], False: []}
    for _ in range(rounds):
        for enabled in (True, False):
            with fusion(enabled):
                reps[enabled].append(profile(model, loss_fn, batch, optimizer=optimizer, warmup=warmup,
                                             repeats=repeats, memory=memory, estimate=False))
    return FusionComparison(_best(reps[True]), _best(reps[False]))


def _best(reports):
    """The report with the lowest median forward + backward time."""
    return min(reports, key=lambda r: r.total["forward"]["median"] + r.total["backward"]["median"])
