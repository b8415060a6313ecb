"""Shared helper of the command-line tests."""
from dlprimer.cli import main


def exit_code(args) -> int:
    """``dlprimer ARGS`` in this process: main's return value, or the status argparse
    exits with on a usage error."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code
