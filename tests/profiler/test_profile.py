"""profile(), compare_fusion() and checkpoint_tradeoff() on real nn models."""
import json
import time

import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from dlprimer import optim


def _setup(rng, sizes=(20, 64, 64, 5), B=32, activation="gelu", dropout=0.0):
    net = nn.MLP(list(sizes), activation=activation, dropout=dropout)
    x = dp.tensor(rng.standard_normal((B, sizes[0])).astype("float32"))
    y = dp.tensor(rng.integers(0, sizes[-1], B))
    return net, x, y


def test_profile_with_adam_reports_everything(rng):
    net, x, y = _setup(rng)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), optimizer=opt, warmup=2, repeats=4)
    names = [r["name"] for r in rep.layers]
    assert names[:5] == ["0:Linear", "1:GELU", "2:Linear", "3:GELU", "4:Linear"] and names[-1] == "(loss)"
    P = sum(p.size for p in net.parameters())
    for r in rep.layers:
        assert r["forward"]["n"] == 4 and r["forward"]["median"] > 0
        assert r["forward"]["q1"] <= r["forward"]["median"] <= r["forward"]["q3"]
    lin = {r["name"]: r for r in rep.layers}
    assert lin["0:Linear"]["fwd_flops"] == 2 * 32 * 20 * 64 + 32 * 64
    assert lin["0:Linear"]["bwd_flops"] == 2 * 32 * 20 * 64 + 32 * 64       # no dX for the first layer
    assert lin["2:Linear"]["bwd_flops"] == 4 * 32 * 64 * 64 + 32 * 64
    t = rep.total
    assert t["step"]["n"] == 4 and t["step"]["median"] > 0
    lo, hi = t["time_ratio_ci95"]
    assert lo <= t["time_ratio"] <= hi      # the median of per-step backward/forward ratios
    assert t["forward"]["ci95"][0] <= t["forward"]["median"] <= t["forward"]["ci95"][1]
    assert set(rep.meta["fingerprint"]) >= {"cpu", "cores", "load_start", "load_end", "thread_pools"}
    assert t["flop_ratio"] == pytest.approx(t["bwd_flops"] / t["fwd_flops"])
    assert t["flops_per_s"] > 0
    ops = {(o["layer"], o["op"]) for o in rep.ops}
    assert ("2:Linear", "Linear") in ops and ("1:GELU", "GELU") in ops
    assert sum(o["share"] for o in rep.ops) <= 1.0 + 1e-9
    mem = rep.memory
    assert mem["split"]["params"] == 4 * P
    assert mem["split"]["grads"] == 4 * P
    assert mem["split"]["optimizer"] == 8 * P                 # Adam: m and v, float32
    assert mem["analytic"]["optimizer"] == 8 * P and mem["analytic"]["params"] == 4 * P
    assert set(mem["phases"]) == {"forward", "backward", "step"}
    act, est = mem["split"]["activations"], mem["analytic"]["activations"]
    assert abs(act - est) <= 0.1 * est
    json.dumps(rep.to_dict())
    text = rep.table()
    for word in ("0:Linear", "total", "optimizer step", "bwd/fwd", "costliest backward ops", "peak of the step"):
        assert word in text
    assert "bwd/fwd time" in repr(rep)


def test_totals_exclude_the_per_op_observers_own_work(rng, monkeypatch):
    # the per-op observers (FLOP and byte counts, op timers) run inside the forward
    # pass: an expensive one must lengthen neither the step's totals nor any op's self
    # time, or the whole-step bwd/fwd ratio is biased low (a small GPT: 0.7 for 1.0)
    net, x, y = _setup(rng, sizes=(8, 16, 4), B=4)
    slow = 0.004
    seen = []

    def costly(self, node, _orig=dp.profiler.FlopCounter.on_forward):
        seen.append(node.name)
        time.sleep(slow)
        return _orig(self, node)
    monkeypatch.setattr(dp.profiler.FlopCounter, "on_forward", costly)
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), warmup=1, repeats=3, memory=False,
                              roofline=False)
    per_step = len(seen) / 3
    assert per_step >= 4                       # Linear, ReLU, Linear, the loss at least
    assert rep.total["forward"]["median"] < slow * per_step / 2
    for r in rep.layer_types:
        assert r["forward"]["median"] < slow
    assert rep.total["fwd_flops"] > 0          # the counts still come from the observed steps


def test_profile_restores_the_model(rng):
    net, x, y = _setup(rng)
    dp.profiler.profile(net, F.cross_entropy, (x, y), warmup=0, repeats=1, memory=False)
    assert all("forward" not in vars(m) for m in net.children())
    assert not net.children().__next__()._forward_hooks


def test_profile_errors(rng):
    net, x, y = _setup(rng)
    ce = F.cross_entropy
    with pytest.raises(TypeError, match="callable"):
        dp.profiler.profile(3, ce, (x, y))
    with pytest.raises(TypeError, match="parameters"):
        dp.profiler.profile(lambda a: a, ce, (x, y))
    with pytest.raises(TypeError, match="loss_fn"):
        dp.profiler.profile(net, None, (x, y))
    with pytest.raises(TypeError, match="pair"):
        dp.profiler.profile(net, ce, x)
    with pytest.raises(TypeError, match="step"):
        dp.profiler.profile(net, ce, (x, y), optimizer=object())
    with pytest.raises(ValueError, match="repeats"):
        dp.profiler.profile(net, ce, (x, y), repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        dp.profiler.profile(net, ce, (x, y), warmup=-1)
    with pytest.raises(TypeError, match="scalar Tensor"):
        dp.profiler.profile(net, lambda o, t: o, (x, y), warmup=1)
    frozen = nn.Linear(20, 5)
    for p in frozen.parameters():
        p.requires_grad = False
    with pytest.raises(RuntimeError, match="does not require grad"):
        dp.profiler.profile(frozen, ce, (x, y), warmup=1)


def test_compare_fusion_same_model_same_data(rng):
    net, x, y = _setup(rng)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    cmp = dp.profiler.compare_fusion(net, F.cross_entropy, (x, y), optimizer=opt, warmup=1, repeats=2, rounds=1)
    assert cmp.fused.meta["fusion"] is True and cmp.unfused.meta["fusion"] is False
    assert set(cmp.ratios()) == {"forward", "backward", "step"}
    assert cmp.fused.total["fwd_flops"] == cmp.unfused.total["fwd_flops"]
    assert "unfused/fused" in cmp.table()
    for phase, rec in cmp.records.items():
        assert rec["n"] >= 6 and rec["ci95"][0] <= rec["median"] <= rec["ci95"][1]
        assert cmp.ratios()[phase] == rec["median"]
    json.dumps(cmp.to_dict())
    assert dp.fusion_enabled()


def test_checkpoint_tradeoff_marks_sqrt_and_saves_memory(rng):
    net, x, y = _setup(rng, sizes=(16,) + (48,) * 16 + (4,), B=16, activation="gelu", dropout=0.1)
    tr = dp.profiler.checkpoint_tradeoff(net, F.cross_entropy, (x, y), segments=[1, 2, 8], repeats=1, warmup=0)
    assert tr.depth == 17 and tr.sqrt_choice == 4
    assert [r["segments"] for r in tr.rows] == [1, 2, 4, 8]
    assert tr.row(1)["memory_ratio"] == 1.0
    assert tr.row(4)["peak_saved_bytes"] < 0.5 * tr.row(1)["peak_saved_bytes"]
    assert tr.row(4)["saved_ratio"] == tr.row(4)["peak_saved_bytes"] / tr.row(1)["peak_saved_bytes"]
    assert tr.row(4)["peak_bytes"] < tr.row(1)["peak_bytes"]
    assert tr.row(4)["kept_after_forward"] < tr.row(1)["kept_after_forward"]
    assert "<- sqrt(L)" in tr.table()
    assert tr.row(1)["time_ratio"] == 1.0 and tr.meta["rounds"] == 1
    lo, hi = tr.row(4)["time_ratio_ci95"]
    assert lo <= tr.row(4)["time_ratio"] <= hi
    json.dumps(tr.to_dict())
    with pytest.raises(KeyError, match="measured"):
        tr.row(3)


def test_checkpoint_tradeoff_errors(rng):
    net, x, y = _setup(rng)
    with pytest.raises(ValueError, match="positive ints"):
        dp.profiler.checkpoint_tradeoff(net, F.cross_entropy, (x, y), segments=[0])
    with pytest.raises(TypeError, match="pair"):
        dp.profiler.checkpoint_tradeoff(net, F.cross_entropy, x)
    with pytest.raises(TypeError, match="no child layers"):
        dp.profiler.checkpoint_tradeoff(nn.Linear(20, 5), F.cross_entropy, (x, y))


def test_leaf_model_is_one_row_with_its_own_times(rng):
    lin = nn.Linear(20, 5)
    x = dp.tensor(rng.standard_normal((8, 20)).astype("float32"))
    y = dp.tensor(rng.integers(0, 5, 8))
    rep = dp.profiler.profile(lin, F.cross_entropy, (x, y), warmup=1, repeats=3, memory=False)
    rows = {r["name"]: r for r in rep.layers}
    assert set(rows) == {"(model)", "(loss)"}
    m = rows["(model)"]
    assert m["forward"]["median"] > 0 and m["backward"]["median"] > 0
    assert m["fwd_flops"] == 2 * 8 * 20 * 5 + 8 * 5 and m["time_ratio"] is not None
