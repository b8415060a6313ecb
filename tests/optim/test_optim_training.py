"""An MLP built from dp Parameters trains after its parameters moved into an arena, and
state_dict/load_state_dict of model and optimizer resume the same trajectory."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter


class TinyMLP:
    """2 -> 16 -> 16 -> 1 tanh MLP; parameters as a name -> Parameter dict."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        sizes = [2, 16, 16, 1]
        self.params = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.params[f"l{i}.weight"] = Parameter(dp.tensor(
                (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)))
            self.params[f"l{i}.bias"] = Parameter(dp.zeros(b))

    def __call__(self, x):
        n = len(self.params) // 2
        for i in range(n):
            x = x @ self.params[f"l{i}.weight"] + self.params[f"l{i}.bias"]
            if i < n - 1:
                x = x.tanh()
        return x

    def state_dict(self):
        return {k: p.numpy().copy() for k, p in self.params.items()}

    def load_state_dict(self, sd):
        for k, p in self.params.items():
            p.data[...] = sd[k]


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (128, 2)).astype(np.float32)
    y = (np.sin(x[:, :1] * 1.5) * np.cos(x[:, 1:])).astype(np.float32)
    return dp.tensor(x), dp.tensor(y)


def _train(model, opt, sched, x, y, steps, clip=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        r = model(x) - y
        loss = (r * r).mean()
        loss.backward()
        if clip:
            dp.utils.clip_grad_norm_(model.params.values(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


OPTS = {
    "SGD": (lambda ps: dp.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), None),
    "Adam": (lambda ps: dp.optim.Adam(ps, lr=0.02),
             lambda o: dp.optim.lr_scheduler.WarmupCosineLR(o, 10, 200)),
    "AdamW": (lambda ps: dp.optim.AdamW(ps, lr=0.02),
              lambda o: dp.optim.lr_scheduler.OneCycleLR(o, 0.03, 200)),
    "LAMB": (lambda ps: dp.optim.LAMB(ps, lr=0.05), None),
    "LARS": (lambda ps: dp.optim.LARS(ps, lr=2.0, trust_coefficient=0.02), None),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_mlp_trains_in_the_arena(name):
    x, y = _data()
    model = TinyMLP(1)
    make_opt, make_sched = OPTS[name]
    opt = make_opt(model.params.items())
    assert all(np.shares_memory(p.data, opt.arenas[0].data) for p in model.params.values())
    sched = make_sched(opt) if make_sched else None
    losses = _train(model, opt, sched, x, y, 150, clip=5.0)
    assert losses[-1] < 0.35 * losses[0], f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("name", list(OPTS))
def test_state_dict_resumes_the_same_trajectory(name):
    x, y = _data()
    make_opt, make_sched = OPTS[name]
    model = TinyMLP(2)
    opt = make_opt(model.params.items())
    sched = make_sched(opt) if make_sched else None
    _train(model, opt, sched, x, y, 20)
    ckpt = (model.state_dict(), opt.state_dict(), sched.state_dict() if sched else None)
    straight = _train(model, opt, sched, x, y, 15)
    final = model.state_dict()

    model2 = TinyMLP(99)  # different init, all overwritten by the checkpoint
    opt2 = make_opt(model2.params.items())
    sched2 = make_sched(opt2) if make_sched else None
    model2.load_state_dict(ckpt[0])
    opt2.load_state_dict(ckpt[1])
    if sched2:
        sched2.load_state_dict(ckpt[2])
    resumed = _train(model2, opt2, sched2, x, y, 15)
    assert resumed == straight
    for k in final:
        np.testing.assert_array_equal(model2.state_dict()[k], final[k])


def test_state_dict_is_numpy_and_indexed_like_torch():
    model = TinyMLP(3)
    opt = dp.optim.Adam([{"params": list(model.params.values())[:2]},
                         {"params": list(model.params.values())[2:], "lr": 0.1}])
    x, y = _data()
    _train(model, opt, None, x, y, 2)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3, 4, 5]]
    assert sd["param_groups"][1]["lr"] == 0.1
    st = sd["state"][3]
    assert st["step"] == 2 and isinstance(st["exp_avg"], np.ndarray)
    assert st["exp_avg"].shape == (16,) and st["exp_avg_sq"].dtype == np.float32


def _nn_model(seed):
    dp.manual_seed(seed)
    nn = dp.nn
    return nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(),
                         nn.Linear(32, 1))


def _nn_train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        model.zero_grad()  # the Module's zero_grad (grad = None) works with the arena
        loss = dp.nn.functional.mse_loss(model(x), y)
        loss.backward()
        dp.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def test_nn_module_trains_and_resumes_through_the_arena():
    x, y = _data()
    model = _nn_model(0)
    opt = dp.optim.AdamW(model.named_parameters(), lr=0.01, weight_decay=0.01)
    assert "'0.weight'" in opt.arenas[0].names[0]
    assert all(np.shares_memory(p.data, opt.arenas[0].data) for p in model.parameters())
    losses = _nn_train(model, opt, x, y, 60)
    assert losses[-1] < 0.35 * losses[0]
    ckpt = ({k: v.numpy().copy() for k, v in model.state_dict().items()}, opt.state_dict())
    straight = _nn_train(model, opt, x, y, 10)

    model2 = _nn_model(1)
    opt2 = dp.optim.AdamW(model2.named_parameters(), lr=0.01, weight_decay=0.01)
    model2.load_state_dict(ckpt[0])  # in place: the parameters stay arena views
    opt2.load_state_dict(ckpt[1])
    assert all(p.data is v for p, v in zip(model2.parameters(), opt2.arenas[0].views))
    assert _nn_train(model2, opt2, x, y, 10) == straight
