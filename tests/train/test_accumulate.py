"""Gradient accumulation: k micro-batches per optimizer step equal one batch k times the size."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn
from dlprimer.data import DataLoader, TensorDataset
from dlprimer.optim import SGD, Adam
from dlprimer.train import fit


def _data(rng, n, d, c):
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    return TensorDataset(dp.tensor(x), dp.tensor(y))


def _f64_model(rng, sizes):
    """Two identical float64 MLPs' worth: a fresh one loaded with weights drawn from ``rng``."""
    net = nn.MLP(sizes, activation="gelu")
    sd = {k: dp.tensor(rng.standard_normal(v.shape) * 0.3) for k, v in net.state_dict().items()}
    net64 = nn.MLP(sizes, activation="gelu")
    for p in net64.parameters():
        p.data = p.data.astype("float64")
    net64.load_state_dict(sd)
    return net64, sd


@pytest.mark.parametrize("opt_cls,k,n", [(SGD, 4, 64), (Adam, 3, 60), (SGD, 4, 70)])
def test_accumulate_equals_the_large_batch(rng, opt_cls, k, n):
    sizes = [int(rng.integers(3, 8)), 16, 16, 3]
    ds = _data(rng, n, sizes[0], sizes[-1])
    micro = int(rng.integers(3, 6))
    nets = []
    for acc, bs in ((1, micro * k), (k, micro)):
        net, sd = _f64_model(np.random.default_rng(7), sizes)
        assert all(p.dtype == "float64" for p in net.parameters())
        opt = opt_cls(net.parameters(), lr=0.05) if opt_cls is SGD else opt_cls(net.parameters(), lr=1e-2)
        res = fit(net, opt, DataLoader(ds, batch_size=bs), epochs=2, progress=False, accumulate=acc)
        nets.append((net, res))
    (big, rb), (acc, ra) = nets
    assert len(rb.steps) == len(ra.steps) == 2 * -(-n // (micro * k))   # a short last step too
    for pb, pa in zip(big.parameters(), acc.parameters()):
        np.testing.assert_allclose(pa.numpy(), pb.numpy(), rtol=1e-10, atol=1e-12)
    for sb, sa in zip(rb.steps, ra.steps):
        assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-10)
    assert rb.epochs[-1]["train_loss"] == pytest.approx(ra.epochs[-1]["train_loss"], rel=1e-10)


def test_accumulate_lowers_the_peak(rng):
    sizes = [64, 512, 512, 10]
    ds = _data(rng, 512, sizes[0], sizes[-1])
    peaks = {}
    for acc, bs in ((1, 256), (4, 64)):
        net = nn.MLP(sizes)
        res = fit(net, SGD(net.parameters(), lr=0.01), DataLoader(ds, batch_size=bs), steps=2,
                  progress=False, memory_every=1, accumulate=acc)
        peaks[acc] = max(s["mem_peak"] for s in res.steps if "mem_peak" in s)  # JIT: not step 1
        assert res.steps[0].get("micro_batches", 1) == acc
        assert res.steps[0]["samples_per_s"] > 0
    assert peaks[4] < 0.75 * peaks[1]


def test_accumulate_counts_optimizer_steps_and_checks_its_argument(rng):
    ds = _data(rng, 40, 4, 2)
    net = nn.MLP([4, 8, 2])
    res = fit(net, SGD(net.parameters(), lr=0.1), DataLoader(ds, batch_size=4), steps=3,
              progress=False, accumulate=2)
    assert [s["step"] for s in res.steps] == [1, 2, 3]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="accumulate"):
            fit(net, SGD(net.parameters(), lr=0.1), DataLoader(ds, batch_size=4), progress=False,
                accumulate=bad)
