"""The roofline model (Williams, Waterman and Patterson, 2009): where each op sits.

For an op doing F FLOPs over B bytes in t seconds, the arithmetic intensity is
I = F / B (FLOP/byte) and the attainable rate is ``roof(I) = min(P, I * W)`` for the
machine's peak compute P (FLOP/s) and bandwidth W (byte/s). The op is
*memory-bound* when I * W < P (left of the ridge I = P / W), *compute-bound*
otherwise; its fraction of the roof is (F / t) / roof(I). An op with no FLOPs (a
reshape, a copy) is memory-bound and its fraction is its achieved bandwidth B / t
over W. A fraction above 1 means the op beat the measured roof: its arrays were
served from a cache (the copy peak is measured out of cache), or the byte count
(compulsory traffic, :mod:`dlprimer.profiler.traffic`) overstates what it moved.
"""
from __future__ import annotations


def place(flops, nbytes, seconds, peaks) -> dict:
    """Roofline figures of one op: intensity, achieved GFLOP/s and GB/s, the roof at its
    intensity, ``bound`` ("memory" | "compute") and ``roof_fraction``. Missing or zero
    time gives None figures rather than a division by zero."""
    out = {"flops": int(flops), "bytes": int(nbytes),
           "intensity": flops / nbytes if nbytes else None,
           "gflops_per_s": flops / seconds / 1e9 if seconds else None,
           "gbytes_per_s": nbytes / seconds / 1e9 if seconds else None,
           "bound": None, "roof_gflops_per_s": None, "roof_fraction": None}
    if not peaks or not nbytes:
        return out
    P, W = peaks["flops"], peaks["bandwidth"]
    if flops:
        roof = min(P, flops / nbytes * W)
        out["bound"] = "memory" if flops / nbytes * W < P else "compute"
        out["roof_gflops_per_s"] = roof / 1e9
        if seconds:
            out["roof_fraction"] = (flops / seconds) / roof
    else:
        out["bound"] = "memory"
        if seconds:
            out["roof_fraction"] = (nbytes / seconds) / W
    return out
