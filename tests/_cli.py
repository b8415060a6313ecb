"""Shared helper of the command-line tests."""
from dlprimer.cli import main


def exit_code(args) -> int:
    """``dlprimer ARGS`` in this process: main's return value, or the status argparse
    exits with on a usage error."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def jit_line_start() -> str:
    """How the JIT line of ``primer`` and ``doctor`` starts here: the compile cost (or the
    cache's hits), or why the JIT did not run."""
    import importlib.util

    from dlprimer.backend import jit
    if not jit.enabled():
        return "JIT off"
    return "JIT compile: " if importlib.util.find_spec("numba") else "JIT unavailable"
