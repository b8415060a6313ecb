"""25 steps of every optimizer against the plain-NumPy references (and PyTorch CPU
where installed) on a loss whose gradient depends on the parameters."""
import numpy as np
import pytest

import dlprimer as dp
from .optim_refs import (RefAdam, RefLAMB, RefLARS, RefSGD, dp_loss, dp_params, make_problem,
                        np_loss_grad)

STEPS = 25
# float64 pins the arithmetic; float32 must agree to its rounding. (LAMB and LARS
# normalise each layer's step, which amplifies rounding where a gradient is near zero;
# their settings keep 100 random problems within a third of the tolerance.)
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-5, atol=1e-6)}

CASES = [
    ("SGD", dict(lr=0.1), RefSGD),
    ("SGD", dict(lr=0.05, momentum=0.9), RefSGD),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01), RefSGD),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05), RefSGD),
    ("Adam", dict(lr=0.01), RefAdam),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), RefAdam),
    ("AdamW", dict(lr=0.02, weight_decay=0.1), lambda **k: RefAdam(decoupled=True, **k)),
    ("LAMB", dict(lr=0.02), RefLAMB),
    ("LAMB", dict(lr=0.01, betas=(0.85, 0.99), weight_decay=0.05), RefLAMB),
    ("LARS", dict(lr=0.5, trust_coefficient=0.02), RefLARS),
    ("LARS", dict(lr=0.5, momentum=0.0, weight_decay=0.01, trust_coefficient=0.02), RefLARS),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _ in CASES]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kwargs,ref_cls", CASES, ids=IDS)
def test_matches_numpy_reference(backend, name, kwargs, ref_cls, dtype):
    init, x, y = make_problem(seed=None, dtype=dtype)  # fresh draws every run
    params = dp_params(init, backend)
    xt, yt = dp.tensor(x, backend=backend), dp.tensor(y, backend=backend)
    opt = getattr(dp.optim, name)(params, **kwargs)
    ref = ref_cls(**{("weight_decay" if k == "weight_decay" else k): v for k, v in kwargs.items()})
    ws = [a.copy() for a in init]
    for step in range(STEPS):
        opt.zero_grad()
        dp_loss(params, xt, yt).backward()
        _, gs = np_loss_grad(ws, x, y)
        opt.step()
        ref.step(ws, [g.astype(dtype) for g in gs])
        for p, w in zip(params, ws):
            np.testing.assert_allclose(p.numpy(), w, **TOL[dtype],
                                       err_msg=f"{name} step {step + 1}")
    moved = max(float(np.abs(w - a).max()) for w, a in zip(ws, init))
    assert moved > 1e-3, "the optimizer barely moved the parameters; the test would be vacuous"


TORCH_CASES = [c for c in CASES if c[0] in ("SGD", "Adam", "AdamW")]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kwargs,ref_cls", TORCH_CASES,
                         ids=[i for c, i in zip(CASES, IDS) if c in TORCH_CASES])
def test_matches_torch(name, kwargs, ref_cls, dtype):
    torch = pytest.importorskip("torch")
    init, x, y = make_problem(seed=None, dtype=dtype)
    params = dp_params(init)
    xt, yt = dp.tensor(x), dp.tensor(y)
    opt = getattr(dp.optim, name)(params, **kwargs)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    topt = getattr(torch.optim, name)(tparams, **kwargs)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for step in range(STEPS):
        opt.zero_grad()
        dp_loss(params, xt, yt).backward()
        opt.step()
        topt.zero_grad()
        w1, b1, w2, b2 = tparams
        ((torch.tanh(tx @ w1 + b1) @ w2 + b2 - ty) ** 2).mean().backward()
        topt.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), **TOL[dtype],
                                       err_msg=f"{name} step {step + 1}")


def test_param_groups_and_lr_change_take_effect_next_step(backend):
    init, x, y = make_problem(seed=3, dtype=np.float64)
    params = dp_params(init, backend)
    xt, yt = dp.tensor(x, backend=backend), dp.tensor(y, backend=backend)
    opt = dp.optim.SGD([{"params": params[:2], "lr": 0.1},
                        {"params": params[2:], "momentum": 0.9}], lr=0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[1]["momentum"] == 0.9
    ref_a, ref_b = RefSGD(lr=0.1), RefSGD(lr=0.05, momentum=0.9)
    ws = [a.copy() for a in init]
    for step in range(12):
        if step == 6:
            opt.param_groups[0]["lr"] = 0.3
            ref_a.h["lr"] = 0.3
            opt.param_groups[1]["lr"] = 0.01
            ref_b.h["lr"] = 0.01
        opt.zero_grad()
        dp_loss(params, xt, yt).backward()
        opt.step()
        _, gs = np_loss_grad(ws, x, y)
        ref_a.step(ws[:2], gs[:2])
        ref_b.step(ws[2:], gs[2:])
        for p, w in zip(params, ws):
            np.testing.assert_allclose(p.numpy(), w, rtol=1e-10, atol=1e-12)
    assert len(opt.arenas) == 2 and opt.arenas[1].numel == 6 * 3 + 3


def test_parameters_without_gradient_are_left_alone_like_torch():
    """A parameter the loss does not use keeps grad None: no update, no Adam step count."""
    torch = pytest.importorskip("torch")
    init, x, y = make_problem(seed=11, dtype=np.float64)
    extra = np.linspace(-1, 1, 5)
    params = dp_params(init + [extra])
    opt = dp.optim.Adam(params, lr=0.05, weight_decay=0.01)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in init + [extra]]
    topt = torch.optim.Adam(tparams, lr=0.05, weight_decay=0.01)
    xt, yt, tx, ty = dp.tensor(x), dp.tensor(y), torch.tensor(x), torch.tensor(y)
    for step in range(10):
        use_b1 = step % 3 != 0
        use_extra = step % 2 == 0
        opt.zero_grad()
        w1, b1, w2, b2, e = params
        h = ((xt @ w1 + b1) if use_b1 else (xt @ w1)).tanh()
        loss = ((h @ w2 + b2 - yt) ** 2).mean()
        if use_extra:
            loss = loss + (e * e).sum()
        loss.backward()
        opt.step()
        topt.zero_grad()
        w1, b1, w2, b2, e = tparams
        h = torch.tanh((tx @ w1 + b1) if use_b1 else (tx @ w1))
        tl = ((h @ w2 + b2 - ty) ** 2).mean()
        if use_extra:
            tl = tl + (e * e).sum()
        tl.backward()
        topt.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-12)
    counts = opt.arenas[0].counts
    assert list(counts) == [10, 6, 10, 10, 5]
