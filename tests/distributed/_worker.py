"""Rank program for tests/distributed: ``python _worker.py SCENARIO OUTDIR [args]``.

Run under ``mpiexec -n N`` (or alone, as one rank). Each rank writes what the
test checks to OUTDIR/rank<r>.npz.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import dlprimer as dp
import dlprimer.distributed as dist

N, D, H, C = 48, 6, 16, 3


def data():
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((D, C))).astype(np.float32)
    return x, y


def make_params(seed):
    rng = np.random.default_rng(seed)
    shapes = [(D, H), (H,), (H, C), (C,)]
    return [dp.tensor((0.5 * rng.standard_normal(s)).astype(np.float32), requires_grad=True)
            for s in shapes]


def loss_fn(params, x, y):
    w1, b1, w2, b2 = params
    out = (x @ w1 + b1).tanh() @ w2 + b2
    return ((out - y) ** 2).mean()


def train(out, batch, epochs, lr=0.1):
    from dlprimer.data import DataLoader, TensorDataset
    comm = dist.init("auto")
    params = make_params(seed=comm.rank)           # deliberately different per rank
    dist.broadcast_parameters(params)              # ... until rank 0's are broadcast
    # a different seed per rank too: shard_loader must make rank 0's the shared one
    loader = dist.shard_loader(DataLoader(TensorDataset(*data()), batch_size=batch,
                                          shuffle=True, seed=7 + comm.rank))
    seen = []
    for epoch in range(epochs):
        for xb, yb in loader:
            for p in params:
                p.grad = None
            seen.append(xb.numpy()[:, 0])
            loss = loss_fn(params, xb, yb)
            loss.backward()
            dist.all_reduce_gradients(params)
            for p in params:
                p.data -= np.float32(lr) * p.grad.data
    s = dist.stats()
    np.savez(os.path.join(out, f"rank{comm.rank}.npz"), *[p.numpy() for p in params],
             seen=np.concatenate(seen),
             world=comm.world_size, ar_calls=s.by_op["all_reduce"].calls,
             ar_bytes=s.by_op["all_reduce"].bytes)


def collectives(out):
    comm = dist.init("mpi")
    r, w = comm.rank, comm.world_size
    a = np.full(5, r + 1.0, np.float32)
    dist.all_reduce_(a)                            # mean
    s = np.arange(4, dtype=np.int64) * (r + 1)
    dist.all_reduce_(s, op="sum")
    t = dp.tensor(np.full((2, 3), float(r), np.float64))
    dist.all_reduce_(t, op="sum")
    b = np.arange(6.0) + 100 * r
    dist.broadcast_(b, root=w - 1)
    obj = comm.broadcast_object({"seed": 42 + r}, root=0)
    seed = dist.shared_seed()
    m = dist.reduce_metrics({"n": 10 + r, "loss": 0.5})
    dist.barrier()
    st = dist.stats()
    np.savez(os.path.join(out, f"rank{r}.npz"), a=a, s=s, t=t.numpy(), b=b,
             obj=obj["seed"], seed=seed, mn=m["n"], mloss=m["loss"],
             ar_calls=st.by_op["all_reduce"].calls, ar_bytes=st.by_op["all_reduce"].bytes,
             bc_bytes=st.by_op["broadcast"].bytes)


def fail(out, how):
    comm = dist.init("mpi")
    a = np.ones(1000, np.float32)
    dist.all_reduce_(a)
    if comm.rank == 1:
        time.sleep(0.3)
        if how == "raise":
            raise RuntimeError("injected failure on rank 1")
        if how == "kill":
            os.kill(os.getpid(), 9)
        if how == "hang":
            time.sleep(600)
    for _ in range(3):
        dist.all_reduce_(a)                        # rank 0 waits here for rank 1
    print("rank", comm.rank, "finished", flush=True)


if __name__ == "__main__":
    scenario, outdir = sys.argv[1], sys.argv[2]
    if scenario == "train":
        train(outdir, batch=int(sys.argv[3]), epochs=int(sys.argv[4]))
    elif scenario == "collectives":
        collectives(outdir)
    elif scenario == "fail":
        fail(outdir, sys.argv[3])
    elif scenario != "fit":
        raise SystemExit(f"unknown scenario {scenario!r}")


def fit_run(out, batch, epochs, opt_name, extra):
    """dist.fit with a real Module and an arena optimizer; extra: 'scale' / 'warmup' / 'clip'."""
    from dlprimer import nn, optim
    from dlprimer.data import DataLoader, TensorDataset
    comm = dist.init("auto")
    dp.manual_seed(100 + comm.rank)                 # different initial weights per rank
    model = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, C))
    opt = (optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
           else optim.Adam(model.parameters(), lr=0.01))
    loader = DataLoader(TensorDataset(*data()), batch_size=batch, shuffle=True, seed=3)
    kw = {}
    if "scale" in extra:
        kw["scale_lr"] = True
    if "warmup" in extra:
        kw["warmup_steps"] = 4
    if "clip" in extra:
        kw["clip"] = 0.05
    res = dist.fit(model, opt, loader, epochs=epochs, log_dir=os.path.join(out, f"log{comm.rank}"),
                   checkpoint_dir=os.path.join(out, f"ckpt{comm.rank}"), progress=False, **kw)
    s = dist.stats()
    np.savez(os.path.join(out, f"rank{comm.rank}.npz"),
             *[p.numpy() for p in model.parameters()], lr=opt.param_groups[0]["lr"],
             steps=res.step, ar_calls=s.by_op["all_reduce"].calls,
             ar_bytes=s.by_op["all_reduce"].bytes, n_params=sum(p.size for p in model.parameters()))


if __name__ == "__main__" and sys.argv[1] == "fit":
    fit_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
            sys.argv[6] if len(sys.argv) > 6 else "")
