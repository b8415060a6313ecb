"""The CPU memory meter and the profiler's memory split."""
import numpy as np

import dlprimer as dp
from dlprimer.profiler.memory import buffer_bytes, optimizer_state_bytes
from _toy_modules import Linear, ReLU, Seq, mse


def test_cpu_meter_sees_a_known_allocation_within_5_percent():
    meter = dp.get_backend().memory if dp.get_backend().name == "cpu" else dp.use_backend("cpu")
    meter = dp.set_backend("cpu").memory
    meter.start()
    try:
        base = meter.current()
        meter.reset_peak()
        a = np.ones(3_000_000, dtype=np.float32)   # 12 MB
        held = meter.current() - base
        del a
        freed = meter.current() - base
        peak = meter.peak() - base
    finally:
        meter.stop()
    assert abs(held - 12_000_000) <= 0.05 * 12_000_000
    assert abs(peak - 12_000_000) <= 0.05 * 12_000_000
    assert abs(freed) <= 0.05 * 12_000_000


def test_buffer_bytes_counts_views_once():
    arena = np.zeros(100, dtype=np.float32)
    views = [arena[:40], arena[40:].reshape(6, 10)]
    assert buffer_bytes(views) == 400
    assert buffer_bytes(views + [np.zeros(5)]) == 440


def test_optimizer_state_is_read_from_its_arrays(rng):
    class FakeAdam:
        def __init__(self, params):
            self.param_groups = [{"params": params}]
            self.state = {id(p): {"m": np.zeros_like(p.data), "v": np.zeros_like(p.data)} for p in params}

        def step(self):
            pass

        def zero_grad(self):
            pass

    lin = Linear(10, 20, bias=True, rng=rng)
    opt = FakeAdam(lin.parameters())
    assert optimizer_state_bytes(opt, lin.parameters(), dp.get_backend()) == 2 * (200 + 20) * 8


def test_profile_memory_split_matches_the_arrays_and_the_estimate(rng):
    dp.set_backend("cpu")
    B, sizes = 64, [32, 256, 256, 10]
    net = Seq(Linear(32, 256, bias=True, rng=rng), ReLU(), Linear(256, 256, bias=True, rng=rng), ReLU(),
              Linear(256, 10, bias=True, rng=rng))
    x = dp.tensor(rng.standard_normal((B, 32)))
    y = dp.tensor(rng.standard_normal((B, 10)))
    rep = dp.profiler.profile(net, mse, (x, y), warmup=1, repeats=2)
    mem = rep.memory
    n_params = sum(p.size for p in net.parameters())
    assert mem["split"]["params"] == n_params * 8
    assert mem["split"]["grads"] == n_params * 8
    assert mem["split"]["optimizer"] == 0
    assert mem["split"]["inputs"] == x.nbytes + y.nbytes
    # kept after forward: the two ReLU outputs (also the next matmuls' inputs) + the
    # loss's (B, 10) difference; the estimator's convention says the same
    expected = (B * 256 * 2 + B * 10) * 8
    assert abs(mem["split"]["activations"] - expected) <= 0.05 * expected
    est = mem["analytic"]
    assert est["activations"] == expected
    assert est["params"] == n_params * 8
    assert mem["peak"] >= sum(mem["split"][k] for k in ("params", "grads", "inputs"))
    assert set(mem["phases"]) == {"forward", "backward"}  # no optimizer, no step phase
    for ph in ("forward", "backward"):
        assert mem["phases"][ph]["peak"] >= mem["phases"][ph]["after"] > 0
    text = rep.table()
    assert "activations" in text and "peak of the step" in text


def test_saved_tracker_counts_the_graph_like_the_estimator(rng):
    import dlprimer.nn as nn
    import dlprimer.nn.functional as F
    from dlprimer.autograd import observe
    from dlprimer.profiler import SavedTracker
    net = nn.MLP([12, 24, 24, 5], activation="gelu")
    x = dp.tensor(rng.standard_normal((7, 12)).astype("float32"))
    y = dp.tensor(rng.integers(0, 5, 7))
    with observe(SavedTracker(exclude=[p.data for p in net.parameters()])) as t:
        loss = F.cross_entropy(net(x), y)
        after_forward = t.current
        loss.backward()
    est = dp.estimate(net, x, optimizer="sgd")
    # the first Linear keeps the batch and the loss the targets (inputs, to the estimator)
    assert after_forward == t.peak == est.activation_bytes + x.nbytes + y.nbytes
    assert t.current == 0 and not t.live


def test_split_adds_up_to_peak_when_backward_allocates_the_grads(rng):
    """No optimizer arena: zero_grad sets .grad to None and backward allocates the
    gradients. They are counted once (as grads), not again as backward workspace."""
    net = Seq(Linear(32, 128, bias=True, rng=rng), ReLU(), Linear(128, 128, bias=True, rng=rng), ReLU(),
              Linear(128, 10, bias=True, rng=rng))
    x = dp.tensor(rng.standard_normal((64, 32)))
    y = dp.tensor(rng.standard_normal((64, 10)))
    mem = dp.profiler.profile(net, mse, (x, y), warmup=1, repeats=1).memory
    assert mem["sources"]["grads"] == "allocator"
    assert mem["split"]["workspace"] >= 0
    assert sum(mem["split"].values()) == mem["peak"]
