"""Finding and running ``mpiexec`` from Python (tests, benchmarks, the CLI).

The ``dist`` extra installs MPICH from its PyPI wheel, whose ``mpiexec`` (Hydra)
lands beside the Python interpreter, so that one is preferred over any other on
``PATH``. Open MPI refuses to run as root and to start more ranks than cores
unless told; :func:`mpiexec_command` adds those flags when it finds Open MPI.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def find_mpiexec() -> str | None:
    """Path of the ``mpiexec`` to use, or None when there is none."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    return shutil.which("mpiexec")


def _is_open_mpi(mpiexec: str) -> bool:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "open mpi" in (out.stdout + out.stderr).lower()


def mpiexec_command(n: int, argv: list, mpiexec: str | None = None) -> list:
    """``[mpiexec, -n, n, ..., *argv]`` with the flags this MPI needs here."""
    mpiexec = mpiexec or find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError(
            "no mpiexec found beside the Python interpreter or on PATH; install one with "
            "`pip install 'dlprimer[dist]'`")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of ranks must be a positive integer, got {n!r}")
    cmd = [mpiexec, "-n", str(n)]
    if _is_open_mpi(mpiexec):
        cmd += ["--oversubscribe", "--allow-run-as-root"]
    return cmd + [str(a) for a in argv]


def run(n: int, argv: list, timeout: float = 60.0, env: dict | None = None,
        cwd=None) -> subprocess.CompletedProcess:
    """Run ``argv`` on ``n`` ranks and wait at most ``timeout`` seconds.

    On timeout the whole process group (launcher and ranks) is killed and
    ``subprocess.TimeoutExpired`` is raised, so a hung job never outlives its caller.
    """
    full_env = dict(os.environ)
    full_env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    if env:
        full_env.update(env)
    proc = subprocess.Popen(mpiexec_command(n, argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
