"""dist.fit's pieces in one process: the wrapped optimizer, linear scaling, warm-up."""
from __future__ import annotations

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.distributed as dist
from dlprimer import nn, optim
from dlprimer.distributed import DistributedOptimizer, LinearWarmup, scale_learning_rate


def test_linear_warmup_ramps_then_holds_and_stacks():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.4)
    w = LinearWarmup(opt, 4)
    lrs = [w.get_last_lr()[0]]
    for _ in range(5):
        w.step()
        lrs.append(w.get_last_lr()[0])
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    sd = w.state_dict()
    w2 = LinearWarmup(optim.SGD(nn.Linear(3, 2).parameters(), lr=0.4), 4)
    w2.load_state_dict(sd)
    assert w2.get_last_lr() == pytest.approx([0.4])
    opt2 = optim.SGD(nn.Linear(3, 2).parameters(), lr=1.0)
    w3 = LinearWarmup(opt2, 2, inner=optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5))
    got = [w3.get_last_lr()[0]]
    for _ in range(2):
        w3.step()
        got.append(w3.get_last_lr()[0])
    assert got == pytest.approx([0.5, 0.5, 0.25])   # warm-up factor x StepLR's lr


def test_linear_warmup_rejects_bad_steps():
    opt = optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps must be a positive integer"):
        LinearWarmup(opt, 0)


def test_scale_learning_rate_is_the_linear_rule():
    opt = optim.SGD([{"params": nn.Linear(3, 2).parameters(), "lr": 0.1}], lr=0.1)
    scale_learning_rate(opt, world_size=4, per_rank_batch=32)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)


def test_distributed_optimizer_single_rank_equals_plain_step_and_counts_arena_bytes():
    rng = np.random.default_rng()
    x = dp.tensor(rng.standard_normal((8, 5)).astype(np.float32))
    models = [nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [optim.Adam(m.parameters(), lr=0.01) for m in models]
    dopt = DistributedOptimizer(opts[1], comm=dist.SingleCommunicator(), clip=None)
    for m, o in zip(models, (opts[0], dopt)):
        o.zero_grad()
        (m(x) ** 2).mean().backward()
        o.step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert dopt.comm_bytes == 4 * (5 * 3 + 3)
    assert dopt.param_groups is opts[1].param_groups
    assert dopt.state_dict()["param_groups"][0]["lr"] == 0.01


def test_missing_gradient_takes_part_as_zeros_in_the_arena():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = optim.SGD(list(a.parameters()) + list(b.parameters()), lr=0.1)
    x = dp.tensor(np.random.default_rng().standard_normal((3, 2)).astype(np.float32))
    for _ in range(2):                       # the second pass leaves stale values in b's slice
        opt.zero_grad()
        (a(x) + b(x)).sum().backward()
        opt.step()
    opt.zero_grad()
    a(x).sum().backward()                    # b gets no gradient this time
    dist.all_reduce_gradients(opt, comm=dist.SingleCommunicator())
    for p in b.parameters():
        np.testing.assert_array_equal(p.grad.numpy(), np.zeros(p.shape, np.float32))


def test_profile_reports_communication_time_and_bytes_per_step():
    from dlprimer.distributed.profile import profile
    rng = np.random.default_rng()
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = optim.SGD(model.parameters(), lr=0.01)
    x = dp.tensor(rng.standard_normal((16, 6)).astype(np.float32))
    y = dp.tensor(rng.integers(0, 3, 16))
    rep = profile(model, nn.functional.cross_entropy, (x, y), opt,
                  comm=dist.SingleCommunicator(), warmup=1, repeats=3, memory=False)
    c = rep.total["comm"]
    assert c["bytes_per_step"] == 4 * (6 * 8 + 8 + 8 * 3 + 3) and c["calls_per_step"] == 1
    assert c["seconds"]["n"] == 3
    assert "bytes per step in 1 call(s)" in rep.table()
    assert rep.to_dict()["total"]["comm"]["world_size"] == 1
