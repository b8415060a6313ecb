"""FLOP counts from the Functions equal hand-computed ones for Linear layers."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.autograd import observe
from dlprimer.profiler import FlopCounter
from _toy_modules import Linear, Seq, Tanh, Toy, mse


@pytest.mark.parametrize("B,i,h,o", [(7, 5, 11, 3), (32, 64, 128, 10)])
def test_linear_flops_first_layer_backward_is_half(backend, rng, B, i, h, o):
    l1, l2 = Linear(i, h, rng=rng), Linear(h, o, rng=rng)
    x = dp.tensor(rng.standard_normal((B, i)))
    class PerNode:
        seen = []

        def on_forward(self, node):
            if node.name == "MatMul":
                self.seen.append(node.flops())

    with observe(PerNode()) as c:
        l2(l1(x))
    # first layer: its input needs no grad, only dW: 2BIO; second: dX and dW: 4BIO
    assert c.seen == [(2 * B * i * h, 2 * B * i * h), (2 * B * h * o, 4 * B * h * o)]


def test_input_needing_grad_makes_first_layer_4bio(rng):
    B, i, o = 6, 9, 4
    lin = Linear(i, o, rng=rng)
    x = dp.tensor(rng.standard_normal((B, i)), requires_grad=True)
    with observe(FlopCounter()) as c:
        lin(x)
    assert c.fwd[("(model)", "MatMul")] == 2 * B * i * o
    assert c.bwd[("(model)", "MatMul")] == 4 * B * i * o


def test_profile_reports_hand_computed_flops_per_layer(rng):
    B, d = 16, [20, 30, 40, 5]
    net = Seq(Linear(d[0], d[1], rng=rng), Linear(d[1], d[2], rng=rng), Linear(d[2], d[3], rng=rng))
    x = dp.tensor(rng.standard_normal((B, d[0])))
    y = dp.tensor(rng.standard_normal((B, d[3])))
    rep = dp.profiler.profile(net, mse, (x, y), warmup=1, repeats=2, memory=False)
    rows = {r["name"]: r for r in rep.layers}
    for k, name in enumerate(["0:Linear", "1:Linear", "2:Linear"]):
        f = 2 * B * d[k] * d[k + 1]
        assert rows[name]["fwd_flops"] == f
        assert rows[name]["bwd_flops"] == (f if k == 0 else 2 * f)
        assert rows[name]["flop_ratio"] == pytest.approx(1.0 if k == 0 else 2.0)
    assert "(loss)" in rows
    assert rep.total["fwd_flops"] == sum(r["fwd_flops"] for r in rep.layers)


def test_recomputed_flops_are_booked_separately(rng):
    net = Seq(Linear(8, 8, rng=rng), Tanh(), Linear(8, 8, rng=rng), Tanh())
    x = dp.tensor(rng.standard_normal((4, 8)))
    with observe(FlopCounter()) as c:
        mse(dp.checkpoint_sequential(net, 2, x), 0.0).backward()
    assert sum(v for k, v in c.recompute.items() if k[1] == "MatMul") == 2 * 4 * 8 * 8


def test_checkpointed_forward_flops_equal_plain(rng):
    """The segment's forward runs without a graph; its FLOPs are still forward FLOPs
    (seen on the replay), and the replay is booked again as recompute."""
    def run(segments):
        net = Seq(Linear(8, 8, rng=np.random.default_rng(1)), Tanh(),
                  Linear(8, 8, rng=np.random.default_rng(2)), Tanh())
        x = dp.tensor(rng.standard_normal((4, 8)), requires_grad=True)
        with observe(FlopCounter()) as c:
            out = net(x) if segments is None else dp.checkpoint_sequential(net, segments, x)
            mse(out, 0.0).backward()
        return c
    plain, ck = run(None), run(2)
    assert ck.forward_total == plain.forward_total
    assert ck.backward_total == plain.backward_total
    assert sum(ck.recompute.values()) > 0


def test_profile_does_not_book_recompute_as_forward_time(monkeypatch, rng):
    """A checkpointed child's replay in backward must not add to its forward time
    (each timer here reads 1 s, so the count of timed forwards is what shows)."""
    from dlprimer.backend.base import Timer

    class OneSecond(Timer):
        __slots__ = ()

        def __exit__(self, *exc):
            self.elapsed = 1.0
            return False

    class Ckpt(Toy):
        def __init__(self, inner):
            self.inner = inner

        def children(self):
            return [self.inner]

        def named_children(self):
            return [("inner", self.inner)]

        def parameters(self):
            return self.inner.parameters()

        def forward(self, x):
            return dp.checkpoint(self.inner, x)

    inner = Seq(Linear(8, 8, rng=rng), Tanh())
    net = Ckpt(inner)
    x = dp.tensor(rng.standard_normal((4, 8)))
    y = dp.tensor(rng.standard_normal((4, 8)))
    be = x.backend
    monkeypatch.setattr(be, "timer", lambda: OneSecond(be))
    rep = dp.profiler.profile(net, mse, (x, y), warmup=0, repeats=2, memory=False)
    rows = {r["name"]: r for r in rep.layers}
    assert rows["inner:Seq"]["forward"]["median"] == 1.0
    assert rows["inner:Seq"]["fwd_flops"] >= 2 * 4 * 8 * 8
