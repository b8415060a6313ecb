"""The roofline and memory-timeline plots and their report sections, from real profiles."""
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import dlprimer as dp  # noqa: E402
from dlprimer.measure.records import to_json  # noqa: E402
from dlprimer.report import build_report, step_plots  # noqa: E402
from dlprimer.report.step_sections import measure_timelines  # noqa: E402
from dlprimer.workloads import profile_mlp  # noqa: E402


def test_roofline_plot_draws_the_roofs_and_every_op(drawn, tmp_path, rng):
    P, W = rng.uniform(10, 100) * 1e9, rng.uniform(2, 20) * 1e9
    ops = [{"layer": f"{i}:L", "op": "Op", "direction": d, "intensity": float(I),
            "gflops_per_s": float(g)} for i, (d, I, g) in
           enumerate(zip(["forward", "backward", "step"], rng.uniform(0.1, 50, 3), rng.uniform(0.1, 5, 3)))]
    step_plots.roofline({"peaks": {"flops": P, "bandwidth": W}, "ops": ops}, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    ax = drawn[-1].axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    roof = ax.lines[0]
    x, y = roof.get_xdata(), roof.get_ydata()
    np.testing.assert_allclose(y, np.minimum(P / 1e9, x * W / 1e9))
    pts = {(round(float(line.get_xdata()[0]), 6), round(float(line.get_ydata()[0]), 6))
           for line in ax.lines[2:]}
    assert pts == {(round(o["intensity"], 6), round(o["gflops_per_s"], 6)) for o in ops}


def test_memory_timeline_plot_shades_phases_and_marks_the_peak(drawn, tmp_path):
    tls = measure_timelines(size="tiny")
    assert len(tls) == 2 and "checkpointing" in tls[1][0]
    step_plots.memory_timeline(tls, tmp_path / "m.png")
    axes = drawn[-1].axes
    assert len(axes) == 2
    for ax, (_, tl) in zip(axes, tls):
        assert max(ax.lines[1].get_ydata()) == pytest.approx(tl["peak"] / 2**20)
        assert len(ax.patches) == 3                     # forward, backward, optimizer step
    assert tls[1][1]["peak"] < tls[0][1]["peak"]         # checkpointing lowers the peak


def test_report_shows_roofline_and_timeline(tmp_path):
    rep, *_ = profile_mlp("iris", [16], "relu", 32, "adam", None, 0, 1, 3)
    (tmp_path / "profile.json").write_text(json.dumps(to_json(rep.to_dict())))
    page = build_report(str(tmp_path), measure=False, backend="cpu")
    text = open(page).read()
    assert "roofline.png" in text and "memory_timeline.png" in text
    assert (tmp_path / "report" / "roofline.png").stat().st_size > 0
    assert "ridge" in text and dp.__version__ in text
