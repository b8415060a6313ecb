"""The communicator layer in one process: API, statistics, helpers, and every error path."""
from __future__ import annotations

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.distributed as dist
from dlprimer.distributed import CommStats, SingleCommunicator, bus_bandwidth
from dlprimer.distributed.parallel import all_reduce_gradients, broadcast_parameters


@pytest.fixture
def comm(monkeypatch):
    for var in dist._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    dist.finalize()
    c = dist.init("auto")
    yield c
    dist.finalize()


def test_auto_without_launcher_is_single(comm):
    assert isinstance(comm, SingleCommunicator)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)
    assert dist.init("single") is comm and dist.is_initialized()


def test_single_collectives_are_identity_and_counted(comm):
    rng = np.random.default_rng()
    a = rng.standard_normal(7).astype(np.float32)
    ref = a.copy()
    assert dist.all_reduce_(a) is a
    dist.all_reduce_(a, op="sum")
    dist.broadcast_(a)
    dist.barrier()
    np.testing.assert_array_equal(a, ref)
    t = dp.randn(3, 4)
    dist.all_reduce_(t)
    s = dist.stats()
    assert s.by_op["all_reduce"].calls == 3
    assert s.by_op["all_reduce"].bytes == 2 * 28 + 48
    assert s.by_op["broadcast"].bytes == 28 and s.by_op["barrier"].calls == 1
    assert s.bytes == 2 * 28 + 48 + 28 and s.seconds >= 0


def test_stats_snapshot_and_since():
    st = CommStats()
    st.record("all_reduce", 100, 0.5)
    snap = st.snapshot()
    st.record("all_reduce", 40, 0.25)
    st.record("broadcast", 8, 0.125)
    d = st.since(snap)
    assert d["bytes"] == 48 and d["calls"] == 2 and d["seconds"] == pytest.approx(0.375)
    assert d["by_op"]["all_reduce"] == {"calls": 1, "bytes": 40, "seconds": 0.25}
    assert st.to_dict()["bytes"] == 148
    st.reset()
    assert st.calls == 0


def test_bus_bandwidth():
    assert bus_bandwidth(1000, 1.0, 2) == pytest.approx(1000.0)
    assert bus_bandwidth(1000, 1.0, 4) == pytest.approx(1500.0)
    assert bus_bandwidth(1000, 2.0, 1) == pytest.approx(500.0)
    assert bus_bandwidth(1000, 0.0, 2) == float("inf")


def test_all_reduce_gradients_packs_loose_parameters(comm):
    ps = [dp.randn(3, 2, requires_grad=True), dp.randn(4, requires_grad=True),
          dp.tensor(np.random.default_rng().standard_normal(2), requires_grad=True)]
    (ps[0].sum() * 2).backward()
    nbytes = all_reduce_gradients(ps)
    assert nbytes == (6 + 4) * 4 + 2 * 8
    np.testing.assert_array_equal(ps[0].grad.numpy(), np.full((3, 2), 2.0, np.float32))
    np.testing.assert_array_equal(ps[1].grad.numpy(), np.zeros(4, np.float32))  # None -> zeros
    assert dist.stats().by_op["all_reduce"].calls == 2                          # one per dtype
    broadcast_parameters(ps)
    assert dist.stats().by_op["broadcast"].calls == 2


def test_metrics_and_seed_helpers(comm):
    assert dist.reduce_metrics({"n": 3, "loss": 1.5}) == {"n": 3.0, "loss": 1.5}
    assert dist.shared_seed(11) == 11
    assert isinstance(dist.shared_seed(), int)


def test_bad_op_dtype_layout_and_root(comm):
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce_(np.ones(3), op="max")
    with pytest.raises(TypeError, match="op='mean' needs a floating array"):
        dist.all_reduce_(np.ones(3, np.int64), op="mean")
    with pytest.raises(ValueError, match="C-contiguous"):
        dist.all_reduce_(np.ones((4, 4))[:, 1])
    with pytest.raises(TypeError, match="expected a Tensor or a cpu backend array"):
        dist.all_reduce_([1.0, 2.0])
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast_(np.ones(3), root=1)
    with pytest.raises(TypeError, match="expected an optimizer, a Module or an iterable"):
        all_reduce_gradients(3)
    with pytest.raises(TypeError, match="expected Tensors"):
        all_reduce_gradients([np.ones(3)])


def test_init_errors(comm, monkeypatch):
    with pytest.raises(ValueError, match="unknown distributed backend 'gloo'"):
        dist.init("gloo")
    with pytest.raises(RuntimeError, match="already initialised with 'single'"):
        dist.init("mpi")
    dist.finalize()
    monkeypatch.setenv("PMI_SIZE", "2")
    assert dist.launched_world_size() == 2
    with pytest.raises(RuntimeError, match="launched as one of 2 MPI ranks"):
        dist.init("single")


def test_mpi_missing_gives_install_hint(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from dlprimer.distributed.mpi import import_mpi
    with pytest.raises(ImportError, match=r"pip install 'dlprimer\[dist\]'"):
        import_mpi()


def test_launcher_rejects_bad_rank_count():
    from dlprimer.distributed import launch
    if launch.find_mpiexec() is None:
        with pytest.raises(FileNotFoundError, match="no mpiexec"):
            launch.mpiexec_command(2, ["true"])
    else:
        with pytest.raises(ValueError, match="positive integer"):
            launch.mpiexec_command(0, ["true"])
        assert launch.mpiexec_command(2, ["x"])[1:3] == ["-n", "2"]


@pytest.mark.cuda
def test_nccl_single_rank_path():
    if not dp.cuda_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("mpi4py")
    from dlprimer.distributed.nccl import NCCLCommunicator
    c = NCCLCommunicator()
    with dp.use_backend("cuda"):
        t = dp.ones(1000)
        c.all_reduce_(t, op="sum")
        c.broadcast_(t)
        c.barrier()
    np.testing.assert_array_equal(t.numpy(), np.ones(1000, np.float32) * c.world_size)
    assert c.stats.by_op["all_reduce"].bytes == 4000
    c.finalize()


class _FakeRank(SingleCommunicator):
    """Rank ``r`` of ``w`` for the sharding logic (objects come from a fixed root)."""

    def __init__(self, r, w, root_value):
        super().__init__()
        self.rank, self.world_size, self._root_value = r, w, root_value

    def broadcast_object(self, obj, root=0):
        return self._root_value if self.rank != root else obj


@pytest.mark.parametrize("n,w", [(30, 3), (31, 3), (10, 4)])
def test_shard_loader_disjoint_covering_and_reseeded_per_epoch(n, w):
    from dlprimer.data import DataLoader, TensorDataset
    ds = TensorDataset(np.arange(n, dtype=np.float32)[:, None])
    loaders = [dist.shard_loader(DataLoader(ds, batch_size=2, shuffle=True, seed=100 + r),
                                 comm=_FakeRank(r, w, 100)) for r in range(w)]
    orders = []
    for epoch in range(2):
        parts = [np.concatenate([b[0].numpy()[:, 0] for b in ld]).astype(int) for ld in loaders]
        assert len({len(p) for p in parts}) == 1                # same number of steps
        allidx = np.concatenate(parts)
        assert set(allidx.tolist()) == set(range(n))            # covering
        pad = len(allidx) - n
        assert pad == (-n) % w and len(set(allidx.tolist())) == n  # disjoint up to padding
        orders.append(parts[0])
    assert not np.array_equal(orders[0], orders[1])              # a new order each epoch


def test_shard_loader_drop_last_leaving_nothing_is_an_error():
    from dlprimer.data import DataLoader, TensorDataset
    ds = TensorDataset(np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError, match="leaves no batch"):
        dist.shard_loader(DataLoader(ds, batch_size=4, drop_last=True), comm=_FakeRank(0, 2, 0))
