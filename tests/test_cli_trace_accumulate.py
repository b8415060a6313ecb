"""``dlprimer profile --trace PATH`` and ``dlprimer train --accumulate K``."""
import io
import json

import pytest

from dlprimer.cli import COMMANDS, build_parser, main


def _run(args):
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def _cmd(args):
    """Run a command in this process; returns its printed output."""
    a, out = build_parser().parse_args(args), io.StringIO()
    COMMANDS[a.command](a, out=out)
    return out.getvalue()


def test_profile_trace_writes_chrome_json(tmp_path):
    path = tmp_path / "step.json"
    out = _cmd(["profile", "--dataset", "iris", "--hidden", "16,16", "--repeats", "2", "--warmup", "1",
                "--backend", "cpu", "--trace", str(path)])
    assert f"trace: {path}" in out and "roofline: peaks" in out
    evs = json.loads(path.read_text())["traceEvents"]
    cats = {e.get("cat") for e in evs}
    assert {"phase", "layer", "forward", "backward"} <= cats
    assert any(e["ph"] == "C" and e["name"] == "memory" for e in evs)


def test_train_accumulate(tmp_path):
    out = _cmd(["train", "--dataset", "iris", "--hidden", "8", "--batch-size", "8", "--steps", "3",
                "--accumulate", "3", "--backend", "cpu", "--no-progress", "--json",
                "--log-dir", str(tmp_path / "log")])
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 3
    lines = [json.loads(x) for x in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r.get("event") == "step"]
    assert len(steps) == 3 and all(r["micro_batches"] == 3 for r in steps)
    assert any(r.get("accumulate") == 3 for r in lines)


@pytest.mark.parametrize("args, words", [
    (["train", "--accumulate", "0"], "--accumulate"),
    (["profile", "--trace", "{dir}/missing/t.json"], "missing does not exist"),
])
def test_bad_arguments_exit_2(args, words, tmp_path, capfd):
    rc = _run([a.replace("{dir}", str(tmp_path)) for a in args])
    err = capfd.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1
