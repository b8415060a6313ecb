"""Module: registration, traversal, modes, gradients, state dicts, moving, hooks."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(dp.ones(4))
        self.register_buffer("steps", dp.tensor(0, dtype="int64"))
        self.note = "plain attribute"

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(x).relu())


def test_registration_and_names():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["block.scale", "block.fc.weight", "block.fc.bias", "block.bn.weight",
                     "block.bn.bias", "head.weight", "head.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "block.steps", "block.bn.running_mean", "block.bn.running_var",
        "block.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert len(list(net.children())) == 2
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.fc", "block.bn", "head"]
    assert net.block.note == "plain attribute"
    assert net.num_parameters() == 4 + 12 + 4 + 4 + 4 + 8 + 2
    assert "block" not in net.__dict__ and isinstance(net.block, Block)


def test_shared_parameter_counted_once():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2
    assert seq.num_parameters() == 12
    assert len(list(seq.children())) == 2


def test_reassignment_and_deletion():
    m = Block()
    m.scale = nn.Parameter(dp.zeros(4))
    assert m._parameters["scale"] is m.scale
    with pytest.raises(TypeError, match="cannot assign Tensor to 'scale'"):
        m.scale = dp.ones(4)
    m.scale = None
    assert m.scale is None and [n for n, _ in m.named_parameters()][0] == "fc.weight"
    with pytest.raises(TypeError, match="cannot assign str to 'fc'"):
        m.fc = "no"
    m.steps = dp.tensor(5, dtype="int64")
    assert m.state_dict()["steps"].item() == 5
    with pytest.raises(TypeError, match="cannot assign list to 'steps'"):
        m.steps = [1]
    del m.fc
    assert "fc" not in dict(m.named_children())
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        m.missing


def test_forgotten_super_init():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="super\\(\\).__init__"):
        Bad()


def test_register_errors():
    m = nn.Module()
    with pytest.raises(TypeError, match="expected a Parameter"):
        m.register_parameter("w", dp.ones(2))
    with pytest.raises(TypeError, match="expected a Tensor"):
        m.register_buffer("b", np.ones(2))
    with pytest.raises(ValueError, match="invalid attribute name"):
        m.register_buffer("a.b", dp.ones(2))
    with pytest.raises(TypeError, match="expected a Module"):
        m.add_module("x", 3)
    with pytest.raises(NotImplementedError, match="does not define forward"):
        m(dp.ones(2))


def test_train_eval_propagate():
    net = Net()
    assert net.training and net.block.bn.training
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError, match="mode must be a bool"):
        net.train("no")


def test_zero_grad():
    net = Net()
    net(dp.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_has_params_and_buffers_sharing_data():
    net = Net()
    sd = net.state_dict()
    # PyTorch's order: a module's own parameters, its own buffers, then its children
    assert list(sd) == ["block.scale", "block.steps", "block.fc.weight", "block.fc.bias",
                        "block.bn.weight", "block.bn.bias", "block.bn.running_mean",
                        "block.bn.running_var", "block.bn.num_batches_tracked", "head.weight",
                        "head.bias"]
    assert sd["head.weight"].data is net.head.weight.data
    assert not sd["head.weight"].requires_grad


def _snapshot(m):
    return {k: v.numpy().copy() for k, v in m.state_dict().items()}


def test_load_state_dict_round_trip_in_place(rng):
    a, b = Net(), Net()
    a.train()
    a(dp.randn(8, 3))  # moves the running stats
    arrays_before = [p.data for p in b.parameters()]
    assert b.load_state_dict(a.state_dict()) == ([], [])
    for (k, va), vb in zip(_snapshot(a).items(), _snapshot(b).values()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    assert all(p.data is arr for p, arr in zip(b.parameters(), arrays_before))
    x = dp.randn(4, 3)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_state_dict_accepts_numpy_and_casts():
    m = nn.Linear(2, 2)
    sd = {k: v.numpy().astype(np.float64) + 1 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert m.weight.dtype == dp.float32
    np.testing.assert_allclose(m.weight.numpy(), sd["weight"], rtol=1e-6)


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "dtype", "not_array"])
def test_failed_load_leaves_model_untouched(case):
    m = Net()
    before = _snapshot(m)
    sd = {k: v.numpy() + 1 for k, v in Net().state_dict().items()}
    if case == "missing":
        del sd["head.bias"]
        match = "missing keys: head.bias"
    elif case == "unexpected":
        sd["head.extra"] = np.ones(2)
        match = "unexpected keys: head.extra"
    elif case == "shape":
        sd["block.fc.weight"] = np.ones((3, 4))
        match = r"block.fc.weight: shape \(3, 4\) in the state dict, \(4, 3\) in the model"
    elif case == "dtype":
        sd["block.bn.num_batches_tracked"] = np.array(1.5)
        match = "floating-point values for a int64 buffer"
    else:
        sd["head.bias"] = object()
        match = "head.bias"
    with pytest.raises(nn.StateDictError, match=match):
        m.load_state_dict(sd)
    for k, v in _snapshot(m).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_non_strict_load_reports_keys():
    m = Net()
    sd = m.state_dict()
    del sd["head.bias"]
    sd["bogus"] = dp.ones(1)
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["head.bias"] and res.unexpected_keys == ["bogus"]
    with pytest.raises(nn.StateDictError, match="shape"):
        m.load_state_dict({"head.bias": dp.ones(3)}, strict=False)
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict([1, 2])


def test_to_dtype_and_backend():
    m = Net()
    m(dp.randn(3, 3)).sum().backward()
    w = m.head.weight
    assert m.to("float64") is m
    assert m.head.weight is w and w.dtype == dp.float64 and w.grad.dtype == dp.float64
    assert m.block.bn.num_batches_tracked.dtype == dp.int64
    assert m.block.bn.running_mean.dtype == dp.float64
    assert m.to("cpu") is m and w.backend.name == "cpu"
    with pytest.raises(ValueError, match="floating-point dtype"):
        m.to("int32")
    with pytest.raises(ValueError, match="unknown dtype"):
        m.to("float8")


@pytest.mark.cuda
def test_to_cuda_and_back():
    if not dp.cuda_available():
        pytest.skip("CUDA is not available")
    m = Net()
    x = dp.randn(4, 3)
    m.eval()
    ref = m(x).numpy()
    m.to("cuda")
    assert all(p.backend.name == "cuda" for p in m.parameters())
    assert all(b.backend.name == "cuda" for b in m.buffers())
    np.testing.assert_allclose(m(x.to("cuda")).numpy(), ref, rtol=1e-5)
    m.to("cpu")
    np.testing.assert_allclose(m(x).numpy(), ref, rtol=1e-6)


def test_forward_hooks_order_modify_and_remove():
    m = nn.Linear(3, 2)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: calls.append(("pre", mod, args[0].shape)))
    h2 = m.register_forward_hook(lambda mod, args, out: calls.append(("post", out.shape)))
    x = dp.randn(5, 3)
    y = m(x)
    assert calls == [("pre", m, (5, 3)), ("post", (5, 2))]
    h3 = m.register_forward_hook(lambda mod, args, out: out * 0)
    assert not m(x).numpy().any()
    h4 = m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    h3.remove()
    np.testing.assert_allclose(m(x).numpy(), m.forward(x * 2).numpy(), rtol=1e-6)
    for h in (h1, h2, h4):
        h.remove()
    h1.remove()  # removing twice is harmless
    calls.clear()
    np.testing.assert_array_equal(m(x).numpy(), y.numpy())
    assert calls == []


def test_hooks_time_each_layer_of_a_model():
    net = nn.MLP([4, 8, 8, 2])
    seen = []
    handles = [mod.register_forward_hook(lambda mod, a, o, n=name: seen.append(n))
               for name, mod in net.named_modules() if name]
    net(dp.randn(3, 4))
    assert seen == ["0", "1", "2", "3", "4"]
    with handles[0]:
        pass  # a handle is a context manager that removes its hook
    seen.clear()
    net(dp.randn(3, 4))
    assert seen == ["1", "2", "3", "4"]


def test_apply_and_requires_grad_and_repr():
    net = Net()
    names = []
    net.apply(lambda m: names.append(type(m).__name__))
    assert names == ["Linear", "BatchNorm1d", "Block", "Linear", "Net"]
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    assert net.num_parameters(trainable_only=True) == 0
    r = repr(nn.Sequential(nn.Linear(2, 3), nn.GELU()))
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in r
    assert "(1): GELU(approximate='none')" in r


def test_sequential_runs_each_layers_hooks_and_own_call_as_a_call_would(rng):
    """Sequential calls a hook-free layer's forward itself (no Module.__call__ frame); a
    layer with hooks, one that gains or loses them, and one with its own __call__ still run
    as ``layer(x)`` would."""
    class Doubling(nn.Module):
        def __call__(self, x):
            return super().__call__(x) * 2

        def forward(self, x):
            return x + 1

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Doubling(), nn.Linear(4, 2))
    x = dp.tensor(rng.standard_normal((5, 3)))

    def by_hand(x):
        h = net[1](net[0](x))
        return net[3](net[2](h))
    np.testing.assert_array_equal(net(x).numpy(), by_hand(x).numpy())
    seen = []
    h1 = net[1].register_forward_pre_hook(lambda m, a: (a[0] * 0,))
    h2 = net[3].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    out = net(x).numpy()
    np.testing.assert_array_equal(out, by_hand(x).numpy())
    assert seen == [(5, 2), (5, 2)]
    h1.remove()
    h2.remove()
    np.testing.assert_array_equal(net(x).numpy(), by_hand(x).numpy())
    assert seen == [(5, 2), (5, 2)]          # a removed hook no longer runs
    assert not np.array_equal(out, net(x).numpy())
