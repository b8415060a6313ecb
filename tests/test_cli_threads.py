"""``--threads N|auto`` on every subcommand: parsed in one place, applied before work,
bad values a one-line error with exit status 2."""
import os

import pytest

from dlprimer import cli
from dlprimer.measure import threads

SUBCOMMANDS = ["primer", "train", "profile", "estimate", "claims", "report", "bench"]


def _subcommands():
    p = cli.build_parser()
    action = next(a for a in p._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_subcommand_takes_threads():
    assert set(SUBCOMMANDS) <= set(_subcommands())
    for cmd in _subcommands():
        extra = ["--sizes", "4,2"] if cmd == "estimate" else []
        a = cli.build_parser().parse_args([cmd, "--threads", "2", *extra])
        assert a.threads == 2
        a = cli.build_parser().parse_args([cmd, "--threads", "auto", *extra])
        assert a.threads == "auto"


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_bad_threads_is_a_one_line_error(capsys, cmd, bad):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, f"--threads={bad}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err and repr(bad) in err


def test_threads_applied_before_the_command(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(threads, "_policy", threads._policy)
    monkeypatch.setattr("dlprimer.set_num_threads", lambda n: seen.append(n))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(threads, "runnable_now", lambda: None)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 4)
    assert cli.main(["estimate", "--sizes", "4,2", "--threads", "3"]) == 0
    assert cli.main(["estimate", "--sizes", "4,2", "--threads", "auto"]) == 0
    assert cli.main(["estimate", "--sizes", "4,2"]) == 0          # default: auto
    assert seen == [3, 3, 3]
