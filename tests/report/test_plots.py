"""The report's plots say what they mean (issue 15, point 13): each figure is checked
through the matplotlib objects it draws, on fresh random inputs; the PNGs themselves
were also looked at by eye when this was written."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from dlprimer.report import plots  # noqa: E402


def _stats(rng, scale):
    med = scale * rng.uniform(0.5, 2)
    return {"median": med, "q1": med * 0.8, "q3": med * 1.3, "min": med * 0.7, "max": med * 2, "n": 20}


def test_layer_times_log_axis_and_quartile_error_bars(drawn, tmp_path, rng):
    scales = [1e-2, 1e-5, 3e-3]  # 10 ms next to 10 us: a linear axis hides the small one
    layers = [{"name": f"l{i}", "forward": _stats(rng, s), "backward": _stats(rng, 2 * s),
               "time_ratio": 2.0} for i, s in enumerate(scales)]
    prof = {"layers": layers, "total": {"time_ratio": 2.1, "flop_ratio": 2.0}}
    plots.layer_times(prof, tmp_path / "lt.png")
    assert (tmp_path / "lt.png").stat().st_size > 0
    ax = drawn[-1].axes[0]
    assert ax.get_yscale() == "log"
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    assert len(bars) == 2
    seg = bars[1].errorbar.lines[2][0].get_segments()  # backward bars' vertical error lines
    for (p_lo, p_hi), r in zip(seg, layers):
        assert p_lo[1] == pytest.approx(r["backward"]["q1"] * 1e3)
        assert p_hi[1] == pytest.approx(r["backward"]["q3"] * 1e3)


def test_checkpoint_line_runs_left_to_right(drawn, tmp_path, rng):
    ks = [1, 2, 4, 8]
    extra = rng.permutation([0.05, 0.2, 0.3, 0.45])  # extra time not monotonic in k
    rows = [{"segments": k, "memory_saved": 0.1 * i, "extra_time": e}
            for i, (k, e) in enumerate(zip(ks, extra))]
    plots.checkpoint_tradeoff(rows, 8, tmp_path / "ck.png")
    a1, a2 = drawn[-1].axes[:2]
    xs = a1.lines[0].get_xdata()
    assert np.all(np.diff(xs) >= 0) and sorted(xs) == pytest.approx(sorted(100 * extra))
    assert np.all(np.diff(a2.lines[0].get_xdata()) > 0)


def test_batch_throughput_draws_one_curve_with_a_gflops_scale(drawn, tmp_path, rng):
    per_sample = rng.uniform(1e-4, 1e-3)
    rows = [{"batch": b, "samples_per_s": s, "gflops": s * per_sample}
            for b, s in zip([64, 8, 256, 32], rng.uniform(1e3, 1e5, 4))]
    plots.batch_throughput(rows, tmp_path / "bt.png")
    fig = drawn[-1]
    lines = [ln for a in fig.axes for ln in a.lines]
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [8, 32, 64, 256]
    sec = [a for a in fig.axes[0].child_axes]
    assert len(sec) == 1 and "GFLOP/s" in sec[0].get_ylabel()
    assert sec[0].get_yticks() is not None


def _records(rng, activation):
    recs = []
    for step in range(1, 21):
        r = {"event": "step", "step": step, "loss": rng.uniform(0.1, 1), "grad_norm": rng.uniform(0.1, 1),
             "grad_norm/0": rng.uniform(0.1, 1), "update_ratio/0": rng.uniform(1e-4, 1e-2)}
        if activation == "relu":
            r["dead_relu/0"] = rng.uniform(0, 0.3)
        recs.append(r)
    return recs


@pytest.mark.parametrize("activation,panels", [("relu", 3), ("gelu", 2)])
def test_diagnostics_label_every_axis_and_skip_the_dead_relu_panel_without_relus(
        drawn, tmp_path, rng, activation, panels):
    plots.diagnostics(_records(rng, activation), tmp_path / "d.png")
    axes = drawn[-1].axes
    assert len(axes) == panels
    assert all(a.get_ylabel() and a.get_xlabel() == "step" for a in axes)
    assert all(a.lines for a in axes)


def test_the_two_gelu_curves_are_told_apart(drawn, tmp_path):
    plots.activations(tmp_path / "a.png", backend="cpu")
    a1 = drawn[-1].axes[0]
    by = {ln.get_label().split(",")[0]: ln for ln in a1.lines}
    exact, tanh = by["GELU"], by["GELU (tanh)"]
    assert exact.get_linewidth() > tanh.get_linewidth()
    assert tanh.get_linestyle() != exact.get_linestyle()
    assert "max |diff|" in tanh.get_label()


def test_activation_curves_compile_no_jit_kernel(drawn, tmp_path, monkeypatch):
    """801 points on the NumPy reference ops: no JIT kernel is called (issue 18: compiling
    16 float64 kernels for this figure was most of primer's first-run compile time)."""
    from dlprimer.backend import jit
    called = []
    real = jit.call
    monkeypatch.setattr(jit, "call", lambda name, *a: called.append(name) or real(name, *a))
    jb = pytest.importorskip("dlprimer.backend.jit.backend")
    monkeypatch.setattr(jb, "call", jit.call)
    plots.activations(tmp_path / "a.png", backend="cpu")
    assert called == []
    assert len(drawn[-1].axes[0].lines) >= 8 and len(drawn[-1].axes[1].lines) >= 8
