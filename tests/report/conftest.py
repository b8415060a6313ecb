"""Shared fixtures of the report's tests."""
import pytest


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save (the PNGs are still written), so a test can
    check what a plot draws through matplotlib's objects."""
    pytest.importorskip("matplotlib")
    from dlprimer.report import plots, step_plots
    figs = []
    real = plots._save

    def keep(fig, path):
        figs.append(fig)
        return real(fig, path)
    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(step_plots, "_save", keep)
    return figs
