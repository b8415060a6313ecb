"""Run in a fresh process by test_threads.py: train a few steps with NumPy's BLAS at
one thread and every other loaded pool at two, and print the CPU time (clock ticks)
that threads other than the main one burned meanwhile. Only a second thread pool
(another BLAS, OpenMP, a JIT's) doing work in the step can make that non-zero.

``python _blas_probe.py clean|saxpy`` (``saxpy``: the positive control, SciPy's own
BLAS called in the step as the optimizer once did)."""
import json
import os
import sys
import threading

import numpy as np


def thread_ticks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


def main(mode):
    import dlprimer as dp
    import dlprimer.nn.functional as F
    from dlprimer import nn, optim
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().lib_controllers
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    mine = [lib for lib in libs if lib.filepath.startswith(os.path.join(numpy_dir, "numpy"))]
    for lib in libs:
        lib.set_num_threads(1 if lib in mine else 2)
    model = nn.MLP([784, 1024, 1024, 10], activation="gelu")
    opts = [optim.Adam(model.parameters()), optim.SGD(model.parameters(), lr=0.01, momentum=0.9)]
    x = dp.randn(256, 784)
    y = dp.tensor(np.random.default_rng().integers(0, 10, 256))
    if mode == "saxpy":
        import scipy.linalg.blas as sblas
        a = np.ones(4_000_000, np.float32)
    main_tid, before = threading.get_native_id(), thread_ticks()
    for i in range(12):
        opt = opts[i % 2]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if mode == "saxpy":
            for _ in range(20):
                sblas.saxpy(a, a, a=0.5)
    after = thread_ticks()
    print(json.dumps({"numpy_blas": [lib.filepath for lib in mine],
                      "pools": [[lib.internal_api, lib.filepath, lib.num_threads] for lib in libs],
                      "main": after[main_tid] - before[main_tid],
                      "others": sum(v - before.get(t, 0) for t, v in after.items() if t != main_tid)}))


if __name__ == "__main__":
    main(sys.argv[1])
