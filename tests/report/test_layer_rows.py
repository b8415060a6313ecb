"""The report's per-layer-type table: the profile's own rows, formatted as the text
table formats them (one source of truth), for the MLP, the CNN and the GPT."""
import json
import re

import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn
from dlprimer.measure.records import to_json
from dlprimer.profiler.layer_types import COLUMNS, row_cells
from dlprimer.report import build_report


def html_layer_rows(page):
    """The cells of the report's per-layer-type table, row by row (heads checked)."""
    m = re.search(r"<table class='layer-types'>(.*?)</table>", page, re.S)
    assert m, "no per-layer-type table in the report"
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)
    assert re.findall(r"<th>(.*?)</th>", rows[0]) == [c.replace("&", "&amp;") for c in COLUMNS]
    return [[c.replace("&amp;", "&") for c in re.findall(r"<td>(.*?)</td>", r)] for r in rows[1:]]


def _case(kind, rng):
    if kind == "mlp":
        return (nn.MLP([8, 16, 3]), F.cross_entropy,
                (dp.tensor(rng.standard_normal((6, 8)).astype("float32")), dp.tensor(rng.integers(0, 3, 6))))
    if kind == "cnn":
        return (nn.SmallCNN(channels=(2, 4), hidden=8), F.cross_entropy,
                (dp.tensor(rng.standard_normal((4, 1, 8, 8)).astype("float32")),
                 dp.tensor(rng.integers(0, 10, 4))))
    ids = rng.integers(0, 11, (2, 7))
    return (nn.GPT(11, block_size=6, n_layer=1, n_head=2, n_embd=8),
            lambda lg, t: F.cross_entropy(lg.reshape(-1, 11), t.reshape(-1)),
            (dp.tensor(ids[:, :-1]), dp.tensor(ids[:, 1:])))


@pytest.mark.parametrize("kind, types", [
    ("mlp", {"linear", "activation", "loss"}),
    ("cnn", {"convolution", "pooling", "linear", "activation"}),
    ("gpt", {"attention", "linear", "normalisation", "activation", "embedding"})])
def test_report_shows_the_profiles_layer_type_rows(tmp_path, rng, kind, types):
    model, loss_fn, batch = _case(kind, rng)
    rep = dp.profiler.profile(model, loss_fn, batch, warmup=1, repeats=3, memory=False,
                              roofline=False)
    prof = to_json(rep.to_dict())
    (tmp_path / "profile.json").write_text(json.dumps(prof))
    page = open(build_report(str(tmp_path), measure=False, backend="cpu")).read()
    shown = html_layer_rows(page)
    assert [r[0] for r in shown] == [r["type"] for r in rep.layer_types]
    assert types <= {r[0] for r in shown}
    # the same strings as the record read back and as the live report's rows
    assert shown == [list(row_cells(r)) for r in prof["layer_types"]]
    assert shown == [list(row_cells(r)) for r in rep.layer_types]
    text = rep.table()
    for cells in shown:
        assert any(line.split() == " ".join(cells).split() for line in text.splitlines())
    # and those strings are the numbers: a row's forward is its median, formatted
    lin = next(r for r in rep.layer_types if r["type"] == "linear")
    assert dp.profiler.report.fmt_time(lin["forward"]["median"]) in {r[1] for r in shown}


def test_no_layer_type_table_without_rows(tmp_path):
    from dlprimer.report import step_sections

    class Page:
        sections = []

        def add(self, s):
            self.sections.append(s)
    p = Page()
    step_sections.layer_types_section(p, {"layer_types": []})
    step_sections.layer_types_section(p, None)
    assert p.sections == []
