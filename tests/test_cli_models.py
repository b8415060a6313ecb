"""``dlprimer train|profile|claims --model mlp|cnn|gpt``: each model trains and profiles
from the command line; the MLP's options with another model are one-line errors."""
import io
import json

import pytest

from dlprimer import cli
from dlprimer.cli import build_parser
from _cli import exit_code


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "gpt", "--hidden", "8"], "--hidden: only for --model mlp"),
    (["train", "--model", "cnn", "--dataset", "iris"], "--dataset: only for --model mlp"),
    (["profile", "--model", "cnn", "--activation", "gelu"], "--activation: only for --model mlp"),
    (["train", "--model", "cnn", "--checkpoint-segments", "2"], "not cnn"),
    (["train", "--model", "gpt", "--checkpoint-segments", "9"], "only 2 Transformer blocks"),
    (["train", "--model", "rnn"], "invalid choice: 'rnn'"),
    (["claims", "--model", "rnn"], "invalid choice: 'rnn'"),
])
def test_model_option_errors_are_one_line(capsys, args, words):
    assert exit_code(args + ["--backend", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_default_model_is_the_mlp_as_before():
    a = build_parser().parse_args(["train"])
    assert a.model == "mlp"
    from dlprimer.cli_models import check_model_options
    assert check_model_options(a, a.hidden_default) is None
    assert (a.dataset, a.hidden, a.activation) == ("digits", [128, 128], "relu")
    a = build_parser().parse_args(["profile"])
    assert check_model_options(a, a.hidden_default) is None
    assert (a.dataset, a.hidden, a.activation) == ("digits", [512, 512], "relu")


@pytest.mark.parametrize("model", ["cnn", "gpt"])
def test_train_model_steps_and_logs(tmp_path, model):
    a = build_parser().parse_args(["train", "--model", model, "--steps", "6", "--batch-size", "16",
                                   "--no-progress", "--json", "--backend", "cpu", "--threads", "1",
                                   "--log-dir", str(tmp_path / "logs")])
    out = io.StringIO()
    res = cli.cmd_train(a, out=out)
    text = out.getvalue()
    assert res.step == 6 and ("SmallCNN" if model == "cnn" else "GPT 2 layers") in text
    final = json.loads(text.strip().splitlines()[-1])
    assert final["steps"] == 6 and final["val_loss"] > 0
    assert ("val_acc" in final) == (model == "cnn")  # a GPT's (N, T) targets are not classes
    first = json.loads((tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["event"] == "config" and first["model"] == model


def test_gpt_trains_below_the_unigram_baseline_from_the_cli():
    """The defaults of ``train --model gpt`` learn from context: 80 steps bring the
    validation loss below the unigram baseline."""
    a = build_parser().parse_args(["train", "--model", "gpt", "--steps", "80", "--no-progress",
                                   "--backend", "cpu", "--threads", "1"])
    res = cli.cmd_train(a, out=io.StringIO())
    from dlprimer.data import load_text
    assert res.final["val_loss"] < load_text().unigram_loss()


def test_profile_gpt_prints_layer_types_and_autocast_memory(tmp_path):
    path = tmp_path / "p.json"
    a = build_parser().parse_args(["profile", "--model", "gpt", "--batch-size", "4", "--repeats", "3",
                                   "--warmup", "1", "--autocast", "bfloat16", "--json", str(path),
                                   "--html", str(tmp_path / "html"), "--backend", "cpu",
                                   "--threads", "1"])
    out = io.StringIO()
    cli.cmd_profile(a, out=out)
    text = out.getvalue()
    assert "per layer type" in text and "attention" in text and "embedding" in text
    assert "autocast=bfloat16" in text and "memory by precision" in text
    d = json.loads(path.read_text())
    types = {r["type"] for r in d["layer_types"]}
    assert {"attention", "linear", "normalisation", "activation", "embedding"} <= types
    rows = {r["dtype"]: r for r in d["memory_by_precision"]}
    assert set(rows) == {"float32", "bfloat16"}
    assert rows["float32"]["state_per_param"] == pytest.approx(16.0, abs=0.01)  # Adam
    # --html: the report shows the per-type rows with the text's and the JSON's numbers
    from dlprimer.profiler.layer_types import row_cells
    from report.test_layer_rows import html_layer_rows
    page = (tmp_path / "html" / "index.html").read_text()
    assert f"report: {tmp_path / 'html' / 'index.html'}" in text
    shown = html_layer_rows(page)
    assert shown == [list(row_cells(r)) for r in d["layer_types"]]
    assert json.loads((tmp_path / "html" / "profile.json").read_text())["layer_types"] == d["layer_types"]
    for cells in shown:
        assert any(line.split() == " ".join(cells).split() for line in text.splitlines())
