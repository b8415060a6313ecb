"""The recorded step: Chrome trace export, memory timeline, per-op forward rows."""
import json

import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from dlprimer import optim


def _setup(rng, sizes=(12, 48, 48, 4), B=16):
    net = nn.MLP(list(sizes), activation="relu")
    x = dp.tensor(rng.standard_normal((B, sizes[0])).astype("float32"))
    y = dp.tensor(rng.integers(0, sizes[-1], B))
    return net, x, y


def _inside(e, parent):
    return parent["ts"] <= e["ts"] and e["ts"] + e["dur"] <= parent["ts"] + parent["dur"] + 1e-6


def test_trace_is_chrome_json_nested_by_phase_and_layer(rng, tmp_path):
    net, x, y = _setup(rng)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    path = tmp_path / "step.json"
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), optimizer=opt, warmup=1, repeats=2,
                              trace=path)
    doc = json.loads(path.read_text())
    evs = doc["traceEvents"]
    assert isinstance(evs, list) and doc["otherData"]["backend"] == "cpu"
    for e in evs:
        assert e["ph"] in ("X", "C", "M") and isinstance(e["pid"], int) and "name" in e
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["tid"], int)
    X = [e for e in evs if e["ph"] == "X"]
    phases = {e["name"]: e for e in X if e["cat"] == "phase"}
    assert set(phases) == {"forward", "backward", "optimizer"}
    assert phases["forward"]["ts"] + phases["forward"]["dur"] <= phases["backward"]["ts"] + 1e-6
    assert phases["backward"]["ts"] + phases["backward"]["dur"] <= phases["optimizer"]["ts"] + 1e-6
    layers = [e for e in X if e["cat"] == "layer"]
    names = {f"{n}:{type(c).__name__}" for n, c in net.named_children()}
    for direction in ("forward", "backward"):
        ops = [e for e in X if e["cat"] == direction]
        assert {e["args"]["layer"] for e in ops} >= {"0:Linear", "1:ReLU", "2:Linear", "(loss)"}
        for op in ops:
            assert _inside(op, phases[direction])
            if op["args"]["layer"] == "(loss)":
                continue
            owners = [lay for lay in layers if lay["name"] == op["args"]["layer"] and _inside(op, lay)]
            assert owners, f"{direction} op {op['name']} is not nested in its layer"
            assert all(_inside(o, phases[direction]) for o in owners)
    assert {e["name"] for e in layers} - {"(loss)"} == names
    mem = [e for e in evs if e["ph"] == "C"]
    assert mem and all(e["name"] == "memory" and e["args"]["allocated"] > 0 for e in mem)
    assert max(e["args"]["interval_peak"] for e in mem) == rep.memory["timeline"]["peak"]


def test_memory_timeline_peak_is_the_profilers_peak(rng):
    net, x, y = _setup(rng, sizes=(16, 256, 256, 256, 8), B=64)
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), optimizer=opt, warmup=1, repeats=2)
    tl = rep.memory["timeline"]
    # the recorded step's meter reads are points of the timeline: equal, not close
    assert tl["peak"] == tl["step_peak"] == max(tl["phase_peaks"].values())
    assert max(m["peak"] for m in tl["samples"]) == tl["peak"]
    # and the recorded step is the profiler's memory step plus a few hundred bytes per node
    assert abs(tl["peak"] - rep.memory["peak"]) <= 0.02 * rep.memory["peak"]
    # activations pile up in forward and are released in backward
    fwd = [m["bytes"] for m in tl["samples"] if m["phase"] == "forward"]
    bwd = [m["bytes"] for m in tl["samples"] if m["phase"] == "backward"]
    acts = rep.memory["split"]["activations"]
    assert fwd[-1] - fwd[0] >= 0.9 * acts
    assert bwd[-1] < max(fwd)
    assert [p["name"] for p in tl["phases"]] == ["forward", "backward", "step"]


def test_timeline_with_checkpointing_peaks_lower(rng):
    sizes = [32] + [128] * 8 + [8]
    net = nn.MLP(sizes, activation="gelu")
    x = dp.tensor(rng.standard_normal((512, 32)).astype("float32"))
    y = dp.tensor(rng.integers(0, 8, 512))
    opt = optim.SGD(net.parameters(), lr=0.01)    # gradients live in its arena: not in the peak

    class Ckpt(nn.Module):
        def __init__(self, seq):
            super().__init__()
            self.seq = seq

        def forward(self, a):
            return dp.checkpoint_sequential(self.seq, 4, a)
    plain = dp.profiler.profile(net, F.cross_entropy, (x, y), opt, warmup=1, repeats=1)
    ck = dp.profiler.profile(Ckpt(net), F.cross_entropy, (x, y), opt, warmup=1, repeats=1,
                             trace=None)
    tp, tc = plain.memory["timeline"], ck.memory["timeline"]
    assert tc["peak"] < 0.8 * tp["peak"]
    assert tc["peak"] == tc["step_peak"]
    assert ck.memory["peak"] < plain.memory["peak"]


def test_ops_have_forward_and_backward_with_bytes(rng):
    net, x, y = _setup(rng)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), optimizer=opt, warmup=1, repeats=3)
    d = rep.to_dict()
    for o in d["ops"]:
        assert o["forward"] > 0 and o["backward"] > 0
        lo, hi = o["forward_ci95"]
        assert lo <= o["forward"] <= hi
        assert o["fwd_bytes"] > 0 and o["bwd_bytes"] > 0
        assert o["fwd_bound"] in ("memory", "compute") and o["fwd_roof_fraction"] > 0
    roof = d["roofline"]
    assert roof["peaks"] is d["meta"]["fingerprint"]["peaks"]
    assert roof["peaks"]["flops"] > 0 and roof["peaks"]["bandwidth"] > 0
    dirs = {(r["layer"], r["op"], r["direction"]) for r in roof["ops"]}
    assert ("2:Linear", "Linear", "forward") in dirs and ("(optimizer)", "Adam.step", "step") in dirs
    P = sum(p.size for p in net.parameters())
    step_row = next(r for r in roof["ops"] if r["direction"] == "step")
    assert step_row["bytes"] == 7 * 4 * P
    lin = next(r for r in roof["ops"] if r["layer"] == "2:Linear" and r["direction"] == "forward")
    assert lin["bytes"] == 4 * (16 * 48 + 48 * 48 + 48 + 16 * 48)
    assert lin["intensity"] == pytest.approx(lin["flops"] / lin["bytes"])
    assert "roofline: peaks" in rep.table()
    json.dumps(dp.measure.to_json(d))


def test_trace_without_memory_and_bad_path(rng, tmp_path):
    net, x, y = _setup(rng)
    p = tmp_path / "t.json"
    rep = dp.profiler.profile(net, F.cross_entropy, (x, y), warmup=0, repeats=1, memory=False,
                              roofline=False, trace=str(p))
    evs = json.loads(p.read_text())["traceEvents"]
    assert not [e for e in evs if e["ph"] == "C"]
    assert {e["name"] for e in evs if e.get("cat") == "phase"} == {"forward", "backward"}
    assert rep.roofline["peaks"] is None
    with pytest.raises(ValueError, match="does not exist"):
        dp.profiler.profile(net, F.cross_entropy, (x, y), warmup=0, repeats=1, memory=False,
                            trace=tmp_path / "nope" / "t.json")
    with pytest.raises(ValueError, match="is a directory"):
        dp.profiler.profile(net, F.cross_entropy, (x, y), trace=tmp_path)
    with pytest.raises(TypeError, match="file path"):
        dp.profiler.profile(net, F.cross_entropy, (x, y), trace=3)


def _properly_nested(events):
    """Every two complete events are disjoint or one holds the other (what a trace
    viewer needs to draw one thread's stack)."""
    xs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X"]
    for i, (a0, a1) in enumerate(xs):
        for b0, b1 in xs[i + 1:]:
            disjoint = a1 <= b0 + 1e-6 or b1 <= a0 + 1e-6
            nested = (a0 <= b0 + 1e-6 and b1 <= a1 + 1e-6) or (b0 <= a0 + 1e-6 and a1 <= b1 + 1e-6)
            if not (disjoint or nested):
                return False
    return True


def test_trace_of_a_checkpointed_model_nests_and_shows_the_recompute(rng, tmp_path):
    net = nn.MLP([12, 32, 32, 32, 4], activation="gelu")

    class Ckpt(nn.Module):
        def __init__(self, seq):
            super().__init__()
            self.seq = seq

        def forward(self, a):
            return dp.checkpoint_sequential(self.seq, 3, a)
    x = dp.tensor(rng.standard_normal((8, 12)).astype("float32"))
    y = dp.tensor(rng.integers(0, 4, 8))
    p = tmp_path / "ck.json"
    dp.profiler.profile(Ckpt(net), F.cross_entropy, (x, y), optim.SGD(net.parameters(), lr=0.1),
                        warmup=1, repeats=1, trace=p, roofline=False)
    evs = json.loads(p.read_text())["traceEvents"]
    assert _properly_nested(evs)
    assert any(e.get("cat") == "recompute" for e in evs)


def test_profile_and_trace_on_the_fake_device(rng, tmp_path, monkeypatch):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from _fake_device import installed
    with installed(monkeypatch):
        with dp.use_backend("cuda"):
            net, x, y = _setup(rng)
            net.to("cuda")
            x, y = x.to("cuda"), y.to("cuda")
            p = tmp_path / "dev.json"
            rep = dp.profiler.profile(net, F.cross_entropy, (x, y), optim.Adam(net.parameters()),
                                      warmup=1, repeats=2, trace=p)
    assert rep.meta["backend"] == "cuda" and rep.roofline["peaks"]["backend"] == "cuda"
    evs = json.loads(p.read_text())["traceEvents"]
    assert _properly_nested(evs) and any(e["ph"] == "C" for e in evs)
    assert rep.memory["timeline"]["peak"] == rep.memory["timeline"]["step_peak"]
