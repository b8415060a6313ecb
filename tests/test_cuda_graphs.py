"""dp.cuda: CUDA graphs with PyTorch's names (issue 17, point 3).

Without a GPU: the clear errors (CPU backend, replay before capture, what a graph cannot
replay). With one (marked cuda): a captured step equals the eager step bit for bit.
"""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim


def test_capture_on_the_cpu_is_a_clear_error():
    g = dp.cuda.CUDAGraph()
    with dp.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="CUDA graphs need the 'cuda' backend; this is "
                                               "the 'cpu' backend"):
            with dp.cuda.graph(g):
                dp.randn(3) * 2
    assert not g.captured
    with pytest.raises(RuntimeError, match=r"replay\(\): nothing captured yet"):
        g.replay()
    with pytest.raises(TypeError, match="takes a dp.cuda.CUDAGraph, got int"):
        with dp.cuda.graph(3):
            pass


def test_a_graphed_step_refuses_what_a_graph_would_freeze():
    model = nn.MLP([4, 8, 3])
    with pytest.raises(ValueError, match="Adam cannot be replayed from a CUDA graph"):
        dp.cuda.make_graphed_step(model, F.cross_entropy, optim.Adam(model.parameters()))
    drop = nn.MLP([4, 8, 3], dropout=0.5)
    with pytest.raises(ValueError, match="same dropout mask"):
        dp.cuda.make_graphed_step(drop, F.cross_entropy, optim.SGD(drop.parameters(), lr=0.1))


def test_a_graphed_step_on_the_cpu_runs_its_warmup_then_says_why_it_cannot_capture():
    rng = np.random.default_rng()
    model = nn.MLP([4, 8, 3])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = dp.cuda.make_graphed_step(model, F.cross_entropy, opt, clip=1.0, warmup=1)
    x, y = dp.tensor(rng.normal(size=(5, 4)).astype(np.float32)), dp.tensor(rng.integers(0, 3, 5))
    w0 = model[0].weight.numpy().copy()
    out, loss = step(x, y)  # warm-up: an eager step
    assert out.shape == (5, 3) and np.isfinite(loss.item())
    assert not np.array_equal(model[0].weight.numpy(), w0)
    with pytest.raises(RuntimeError, match="CUDA graphs need the 'cuda' backend"):
        step(x, y)


@pytest.mark.cuda
def test_a_captured_step_equals_the_eager_step_bit_for_bit():
    if not dp.cuda_available():
        pytest.skip("no usable CUDA GPU")
    rng = np.random.default_rng()
    xs = [rng.normal(size=(32, 20)).astype(np.float32) for _ in range(6)]
    ys = [rng.integers(0, 5, 32) for _ in range(6)]
    results = []
    for graphed in (False, True):
        with dp.use_backend("cuda"):
            dp.manual_seed(3)
            model = nn.MLP([20, 64, 64, 5], activation="gelu")
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
            step = dp.cuda.make_graphed_step(model, F.cross_entropy, opt, clip=0.5)
            losses = []
            for x, y in zip(xs, ys):
                xt, yt = dp.tensor(x, backend="cuda"), dp.tensor(y, backend="cuda")
                if graphed:
                    _, loss = step(xt, yt)
                else:
                    _, loss = step._eager(xt, yt)
                losses.append(loss.item())
            results.append((losses, [p.numpy() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.cuda
def test_cuda_graph_replays_on_static_buffers():
    if not dp.cuda_available():
        pytest.skip("no usable CUDA GPU")
    with dp.use_backend("cuda"):
        x = dp.randn(1000)
        (x * 2).relu()  # warm-up: kernels compiled outside the capture
        g = dp.cuda.CUDAGraph()
        with dp.cuda.graph(g):
            y = (x * 2).relu()
        g.replay()
        np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy() * 2, 0))
        x.data[...] = dp.randn(1000).data
        g.replay()
        np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy() * 2, 0))


def test_fit_with_cuda_graph_on_the_cpu_is_a_clear_error():
    from dlprimer.data import DataLoader, TensorDataset
    from dlprimer.train import fit
    rng = np.random.default_rng()
    model = nn.MLP([4, 3])
    data = TensorDataset(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8))
    with pytest.raises(RuntimeError, match="cuda_graph=True needs the 'cuda' backend"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), DataLoader(data, 4), cuda_graph=True,
            progress=False)
    sched_opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="cannot be combined with a scheduler"):
        fit(model, sched_opt, DataLoader(data, 4), cuda_graph=True, progress=False,
            scheduler=optim.lr_scheduler.StepLR(sched_opt, 1))
    with pytest.raises(ValueError, match="cannot accumulate 2 micro-batches"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), DataLoader(data, 4), cuda_graph=True,
            progress=False, accumulate=2)


def test_train_cuda_graph_flag_without_a_gpu_exits_2(capsys):
    from dlprimer.cli import main
    assert main(["train", "--cuda-graph", "--backend", "cpu", "--steps", "1", "--no-progress"]) == 2
    assert "--cuda-graph needs the cuda backend (a GPU); the backend is 'cpu'" in \
        capsys.readouterr().err
