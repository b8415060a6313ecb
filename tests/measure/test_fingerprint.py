"""The environment fingerprint carries every field a reader needs."""
import json

import dlprimer as dp
from dlprimer.measure import describe, finish, fingerprint


def test_fingerprint_fields_present():
    fp = finish(fingerprint(dp.get_backend()))
    for key in ("cpu", "cores", "cpu_count", "load_start", "load_end", "thread_pools", "blas",
                "backend", "gpu", "versions", "dlprimer", "git_commit", "platform"):
        assert key in fp, key
    assert fp["cores"] >= 1 and fp["dlprimer"] == dp.__version__
    assert fp["backend"] == dp.get_backend().name
    assert len(fp["load_start"]) == 3 and len(fp["load_end"]) == 3
    assert fp["blas"] and all(b.strip() for b in fp["blas"])
    if dp.get_backend().name == "cpu":   # which library runs dlprimer's own products
        from dlprimer.backend import blas
        assert fp["gemm"] == blas.active() and f"GEMM {fp['gemm']}" in describe(fp)
    for pool in fp["thread_pools"]:
        assert set(pool) >= {"api", "library", "version", "threads"} and pool["threads"] >= 1
    assert fp["versions"]["numpy"]
    if not dp.cuda_available():
        assert fp["gpu"] is None
    json.dumps(fp)  # plain JSON
    line = describe(fp)
    assert fp["cpu"] in line and "cores" in line and "load" in line and "threads:" in line
