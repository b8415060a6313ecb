"""Bytes per op (profiler.traffic) against hand counts, and the roofline placement."""
import sys
import os

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import optim
from dlprimer.autograd import observe
from dlprimer.profiler.roofline import place
from dlprimer.profiler.traffic import node_bytes, update_bytes

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from _fake_device import installed  # noqa: E402


class _Catch:
    """Keeps each recorded node with the ids of its input arrays."""

    def __init__(self):
        self.nodes, self._ids = [], {}

    def on_forward_begin(self, node, arrays):
        self._ids[id(node)] = {id(a) for a in arrays}

    def on_forward(self, node):
        self.nodes.append((node, self._ids.pop(id(node))))

    def bytes_of(self, name):
        (node, ids), = [(n, i) for n, i in self.nodes if n.name == name]
        return node_bytes(node, ids)


def _t(rng, shape, dtype, grad=True):
    return dp.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=grad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_grad", [True, False])
def test_linear_bytes_equal_a_hand_count(rng, dtype, x_grad):
    B, i, o = rng.integers(3, 40, 3)
    x, w, b = _t(rng, (B, i), dtype, x_grad), _t(rng, (o, i), dtype), _t(rng, (o,), dtype)
    with observe(_Catch()) as c:
        F.linear(x, w, b)
    s = np.dtype(dtype).itemsize
    fwd = s * (B * i + o * i + o + B * o)
    # gy; saved x (for gW) and W (only when x needs gX); gX when needed; gW; gb
    bwd = s * (B * o + B * i + (o * i if x_grad else 0) + (B * i if x_grad else 0) + o * i + o)
    assert c.bytes_of("Linear") == (fwd, bwd)


@pytest.mark.parametrize("act,name", [(F.relu, "ReLU"), (F.gelu, "GELU")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_bytes_equal_a_hand_count(rng, act, name, dtype):
    shape = tuple(rng.integers(2, 30, 2))
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with observe(_Catch()) as c:
        act(_t(rng, shape, dtype))
    # forward reads x, writes y; backward reads what it saved (ReLU y, GELU x) and gy, writes gx
    assert c.bytes_of(name) == (2 * n, 3 * n)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_bytes_equal_a_hand_count(rng, dtype):
    N, C = rng.integers(2, 50, 2)
    logits = _t(rng, (N, C), dtype)
    target = dp.tensor(rng.integers(0, C, N))
    with observe(_Catch()) as c:
        F.cross_entropy(logits, target)
    s = np.dtype(dtype).itemsize
    # forward: read logits and int64 targets, write the scalar loss and the probabilities
    fwd = s * N * C + 8 * N + s + s * N * C
    # backward: read gy (scalar), probabilities, targets; write the logits' gradient
    bwd = s + s * N * C + 8 * N + s * N * C
    assert c.bytes_of("CrossEntropy") == (fwd, bwd)


def test_adam_update_bytes_equal_a_hand_count(rng):
    sizes = rng.integers(2, 20, 3)
    ps = [dp.nn.Parameter(dp.tensor(rng.standard_normal((int(k), 3)).astype("float32")))
          for k in sizes]
    P = sum(p.size for p in ps)
    nbytes, flops = update_bytes(optim.Adam(ps), ps)
    assert nbytes == 4 * P * 7          # reads w, g, m, v; writes w, m, v
    assert flops > 0
    assert update_bytes(optim.SGD(ps, lr=0.1), ps)[0] == 4 * P * 3
    assert update_bytes(optim.SGD(ps, lr=0.1, momentum=0.9), ps)[0] == 4 * P * 5
    assert update_bytes(object(), ps) is None


def test_roofline_places_ops_by_intensity():
    peaks = {"flops": 100e9, "bandwidth": 10e9}          # ridge at 10 FLOP/B
    mem = place(flops=2e6, nbytes=1e6, seconds=1e-3, peaks=peaks)   # I = 2: roof 20 GFLOP/s
    assert mem["bound"] == "memory" and mem["intensity"] == 2
    assert mem["roof_fraction"] == pytest.approx(2e9 / 20e9)
    assert mem["gbytes_per_s"] == pytest.approx(1.0)
    comp = place(flops=5e7, nbytes=1e6, seconds=1e-3, peaks=peaks)  # I = 50: roof 100 GFLOP/s
    assert comp["bound"] == "compute" and comp["roof_fraction"] == pytest.approx(0.5)
    copy = place(flops=0, nbytes=5e6, seconds=1e-3, peaks=peaks)     # no FLOPs: bandwidth share
    assert copy["bound"] == "memory" and copy["roof_fraction"] == pytest.approx(0.5)
    none = place(flops=10, nbytes=10, seconds=0.0, peaks=peaks)
    assert none["roof_fraction"] is None and none["gflops_per_s"] is None
    assert place(10, 10, 1.0, None)["bound"] is None


def test_peaks_are_measured_once_through_the_backend_timer(monkeypatch):
    from dlprimer.profiler import peaks as pk
    with pytest.raises(ValueError, match="repeats"):
        pk.measure_peaks(dp.get_backend(), repeats=0)
    with installed(monkeypatch) as dev:
        calls = []
        real = dev.timer
        monkeypatch.setattr(dev, "timer", lambda: calls.append(1) or real())
        p = pk.measure_peaks(dev, repeats=3, copy_bytes=1 << 16, matmul_n=32)
        assert len(calls) == 6                      # 3 copies + 3 matmuls, each timed
        assert p["bandwidth"] > 0 and p["flops"] > 0 and p["backend"] == "cuda"
        assert p["bandwidth"] >= p["bandwidth_median"] and p["copy_bytes"] == 2 * (1 << 16)
        monkeypatch.setattr(pk, "_CACHE", {})
        monkeypatch.setattr(pk, "measure_peaks", lambda b: {"flops": 1.0, "bandwidth": 1.0})
        first = pk.machine_peaks(dev)
        assert pk.machine_peaks(dev) is first       # once per run
