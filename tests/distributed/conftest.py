"""Shared launch helpers: run tests/distributed/_worker.py on N ranks via mpiexec."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker.py")
LAUNCH_TIMEOUT = 60.0


def _env(extra=None):
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "DLPRIMER_BACKEND": "cpu", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.update(extra or {})
    return env


@pytest.fixture
def launcher():
    """dlprimer.distributed.launch, skipping the test where MPI is not installed."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'dlprimer[dist]')")
    from dlprimer.distributed import launch
    if launch.find_mpiexec() is None:
        pytest.skip("no mpiexec (pip install 'dlprimer[dist]')")
    return launch


@pytest.fixture
def mpirun(launcher):
    """``mpirun(n, scenario, *args, env=None, timeout=...) -> (CompletedProcess, [npz per rank])``."""
    launch = launcher

    def go(n, scenario, *args, outdir, env=None, timeout=LAUNCH_TIMEOUT, check=True):
        argv = [sys.executable, str(WORKER), scenario, str(outdir), *map(str, args)]
        if n == 0:      # a plain single process, no launcher
            full = dict(os.environ)
            full.update(_env(env))
            proc = subprocess.run(argv, capture_output=True, text=True, env=full,
                                  timeout=timeout)
            n = 1
        else:
            proc = launch.run(n, argv, timeout=timeout, env=_env(env))
        if check:
            assert proc.returncode == 0, f"rank program failed:\n{proc.stdout}\n{proc.stderr}"
            return proc, [dict(np.load(Path(outdir) / f"rank{r}.npz")) for r in range(n)]
        return proc, None

    return go


@pytest.fixture
def rank_env():
    """The environment a launched rank program needs (this checkout's dlprimer, CPU)."""
    env = dict(os.environ)
    env.update(_env())
    return env
