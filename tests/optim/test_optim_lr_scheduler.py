"""Learning-rate sequences over >= 40 steps against hand-written references (the
formulas PyTorch documents) and against PyTorch itself where installed."""
import math

import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter
from dlprimer.optim import lr_scheduler as S

N = 45


def _opt(lr=0.1, cls="SGD", groups=1, **kw):
    params = [{"params": [Parameter(dp.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return getattr(dp.optim, cls)(params, lr=lr, **kw)


def _run(sched, n=N, metrics=None):
    """lrs seen by the optimizer at steps 0..n-1 (scheduler stepped after each)."""
    out = []
    for t in range(n):
        out.append(sched.get_last_lr())
        sched.step() if metrics is None else sched.step(metrics[t])
    return np.array(out)


def _torch_run(make, n=N, metrics=None, lr=0.1, groups=1, opt="SGD", **kw):
    torch = pytest.importorskip("torch")
    params = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr * (i + 1)}
              for i in range(groups)]
    o = getattr(torch.optim, opt)(params, lr=lr, **kw)
    s = make(torch.optim.lr_scheduler, o)
    out = []
    for t in range(n):
        out.append([g["lr"] for g in o.param_groups])
        o.step()
        s.step() if metrics is None else s.step(metrics[t])
    return np.array(out, dtype=float), o


def test_step_lr():
    got = _run(S.StepLR(_opt(groups=2), step_size=7, gamma=0.5))
    t = np.arange(N)[:, None]
    np.testing.assert_allclose(got, np.array([[0.1, 0.2]]) * 0.5 ** (t // 7), rtol=1e-14)
    ref, _ = _torch_run(lambda m, o: m.StepLR(o, step_size=7, gamma=0.5), groups=2)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("T_max,eta_min", [(20, 0.01), (45, 0.0), (7, 0.001)])
def test_cosine_annealing(T_max, eta_min):
    got = _run(S.CosineAnnealingLR(_opt(groups=2), T_max=T_max, eta_min=eta_min), n=50)
    t = np.arange(50)[:, None]
    base = np.array([[0.1, 0.2]])
    closed = eta_min + (base - eta_min) * (1 + np.cos(np.pi * t / T_max)) / 2
    np.testing.assert_allclose(got, closed, rtol=1e-9, atol=1e-15)
    ref, _ = _torch_run(lambda m, o: m.CosineAnnealingLR(o, T_max=T_max, eta_min=eta_min),
                        n=50, groups=2)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-18)


def _one_cycle_ref(max_lr, total, pct=0.3, div=25.0, final_div=1e4, base_m=0.85, max_m=0.95):
    initial, lrs, moms = max_lr / div, [], []
    min_lr = initial / final_div
    end1 = pct * total - 1

    def cos(a, b, f):
        return b + (a - b) / 2 * (math.cos(math.pi * f) + 1)
    for t in range(total):
        if t <= end1:
            f = t / end1
            lrs.append(cos(initial, max_lr, f))
            moms.append(cos(max_m, base_m, f))
        else:
            f = (t - end1) / (total - 1 - end1)
            lrs.append(cos(max_lr, min_lr, f))
            moms.append(cos(base_m, max_m, f))
    return np.array(lrs), np.array(moms)


@pytest.mark.parametrize("total,pct", [(50, 0.3), (41, 0.25)])
def test_one_cycle_sgd(total, pct):
    opt = _opt(cls="SGD", momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=pct)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        moms.append(opt.param_groups[0]["momentum"])
        sched.step() if len(lrs) < total else None
    want_lr, want_m = _one_cycle_ref(1.0, total, pct)
    np.testing.assert_allclose(lrs, want_lr, rtol=1e-12)
    np.testing.assert_allclose(moms, want_m, rtol=1e-12)
    assert lrs[0] == pytest.approx(1.0 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-2)
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-6)
    sched.step()  # step total_steps is the last allowed
    with pytest.raises(ValueError, match="total_steps is"):
        sched.step()
    ref, _ = _torch_run(lambda m, o: m.OneCycleLR(o, max_lr=1.0, total_steps=total,
                                                  pct_start=pct), n=total, momentum=0.9)
    np.testing.assert_allclose(np.array(lrs)[:, None], ref, rtol=1e-14)


def test_one_cycle_adam_cycles_beta1_like_torch():
    opt = _opt(cls="Adam")
    sched = S.OneCycleLR(opt, max_lr=0.01, total_steps=N, three_phase=True,
                         anneal_strategy="linear")
    got, b1 = [], []
    for _ in range(N):
        got.append(sched.get_last_lr())
        b1.append(opt.param_groups[0]["betas"][0])
        sched.step()
    torch = pytest.importorskip("torch")
    p = torch.zeros(2, requires_grad=True)
    o = torch.optim.Adam([p], lr=0.1)
    s = torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=N, three_phase=True,
                                            anneal_strategy="linear")
    ref, rb1 = [], []
    for _ in range(N):
        ref.append([o.param_groups[0]["lr"]])
        rb1.append(o.param_groups[0]["betas"][0])
        o.step()
        s.step()
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    np.testing.assert_allclose(b1, rb1, rtol=1e-14)
    assert opt.param_groups[0]["betas"][1] == 0.999


def _plateau_ref(metrics, lr, factor, patience, cooldown, min_lr, mode="min", threshold=1e-4,
                 threshold_mode="rel", eps=1e-8):
    """PyTorch's documented rule, written out: lrs used at each step."""
    best = math.inf if mode == "min" else -math.inf
    bad = cool = 0
    out = []
    for m in metrics:
        out.append(lr)
        if mode == "min":
            better = m < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        else:
            better = m > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        if better:
            best, bad = m, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
    return np.array(out)


def test_plateau_patience_and_cooldown_by_hand():
    # improves for 5 steps, then flat: the 3rd bad step (> patience=2) cuts the rate at
    # step 7; cooldown 2 ignores steps 8-9; bad steps count again from 10, cut at 12...
    metrics = [10, 9, 8, 7, 6] + [6.0] * 40
    sched = S.ReduceLROnPlateau(_opt(lr=1.0), factor=0.5, patience=2, cooldown=2, min_lr=0.05)
    got = _run(sched, metrics=metrics)[:, 0]
    want = np.ones(N)
    for cut, lr in [(8, 0.5), (13, 0.25), (18, 0.125), (23, 0.0625), (28, 0.05)]:
        want[cut:] = lr
    np.testing.assert_array_equal(got, want)
    assert sched.num_bad_epochs >= 0 and sched.best == 6


def test_plateau_threshold_means_relative_improvement():
    # 1e-5 relative improvements are below threshold=1e-4: they count as bad steps
    metrics = [1.0 - 1e-5 * t for t in range(N)]
    got = _run(S.ReduceLROnPlateau(_opt(lr=1.0), patience=3), metrics=metrics)[:, 0]
    np.testing.assert_allclose(got, _plateau_ref(metrics, 1.0, 0.1, 3, 0, 0.0))
    assert got[-1] < 1.0


@pytest.mark.parametrize("mode,threshold_mode", [("min", "rel"), ("min", "abs"),
                                                 ("max", "rel"), ("max", "abs")])
def test_plateau_random_walk_vs_reference_and_torch(mode, threshold_mode):
    rng = np.random.default_rng(5)
    metrics = list(np.cumsum(rng.standard_normal(60)) * 0.1 + 5)
    kw = dict(mode=mode, factor=0.3, patience=2, threshold=0.01,
              threshold_mode=threshold_mode, cooldown=1, min_lr=[1e-3, 2e-3])
    got = _run(S.ReduceLROnPlateau(_opt(lr=1.0, groups=2), **kw), n=60, metrics=metrics)
    for g, lr0 in enumerate([1.0, 2.0]):
        np.testing.assert_allclose(got[:, g], _plateau_ref(
            metrics, lr0, 0.3, 2, 1, kw["min_lr"][g], mode, 0.01, threshold_mode), rtol=1e-15)
    assert len(set(got[:, 0])) > 2, "the walk should trigger several reductions"
    ref, _ = _torch_run(lambda m, o: m.ReduceLROnPlateau(o, **kw), n=60, metrics=metrics,
                        lr=1.0, groups=2)
    np.testing.assert_allclose(got, ref, rtol=1e-15)


def _warmup_cosine_ref(t, W, T, base, eta):
    if t < W:
        return base * t / W
    if t >= T:
        return eta
    return eta + (base - eta) * (1 + math.cos(math.pi * (t - W) / (T - W))) / 2


@pytest.mark.parametrize("W,T,eta", [(10, 40, 0.0), (10, 40, 1e-3), (0, 40, 0.0), (40, 40, 0.0),
                                     (1, 45, 0.01)])
def test_warmup_cosine(W, T, eta):
    got = _run(S.WarmupCosineLR(_opt(lr=0.5, groups=2), warmup_steps=W, total_steps=T,
                                eta_min=eta), n=50)
    for g, base in enumerate([0.5, 1.0]):
        np.testing.assert_allclose(got[:, g], [_warmup_cosine_ref(t, W, T, base, eta)
                                               for t in range(50)], rtol=1e-12, atol=1e-17)
    # the edges
    if W > 0:
        assert got[0, 0] == 0.0 and got[W - 1, 0] == pytest.approx(0.5 * (W - 1) / W)
    if W < T:
        assert got[W, 0] == pytest.approx(0.5)
    assert got[T, 0] == eta and got[49, 0] == eta
    assert np.all(np.diff(got[:W, 0]) > 0) and np.all(np.diff(got[W:T + 1, 0]) <= 1e-15)

    def factor(t):  # Hugging Face's get_cosine_schedule_with_warmup factor (t <= T)
        if t < W:
            return t / W
        return 0.5 * (1 + math.cos(math.pi * (t - W) / max(1, T - W)))
    if eta == 0.0 and W < T:  # equal to LambdaLR with that factor up to total_steps
        ref, _ = _torch_run(lambda m, o: m.LambdaLR(o, factor), n=T + 1, lr=0.5, groups=2)
        np.testing.assert_allclose(got[:T + 1], ref, rtol=1e-12, atol=1e-17)


@pytest.mark.parametrize("make", [
    lambda o: S.StepLR(o, 5, 0.3), lambda o: S.CosineAnnealingLR(o, 17, 0.01),
    lambda o: S.OneCycleLR(o, 0.5, 60), lambda o: S.WarmupCosineLR(o, 8, 50),
    lambda o: S.ReduceLROnPlateau(o, patience=1)])
def test_scheduler_state_dict_resumes(make):
    metrics = [1.0, 0.9, 0.95, 0.95, 0.97, 0.8, 0.85, 0.9] * 6
    step = (lambda s, t: s.step(metrics[t])) if "Plateau" in repr(make(_opt())) else (
        lambda s, t: s.step())
    a_opt = _opt(momentum=0.9)
    a = make(a_opt)
    for t in range(20):
        step(a, t)
    sd = a.state_dict()
    osd = a_opt.state_dict()
    b_opt = _opt(momentum=0.9)
    b = make(b_opt)
    b_opt.load_state_dict(osd)
    b.load_state_dict(sd)
    for t in range(20, 45):
        assert a.get_last_lr() == b.get_last_lr()
        step(a, t)
        step(b, t)
    assert a.get_last_lr() == b.get_last_lr()


def test_scale_lr():
    assert dp.optim.scale_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert dp.optim.scale_lr(3e-4, 32, 64) == pytest.approx(1.5e-4)
    for bad in [(0.1, 0, 256), (0.1, 256, -1), (0.1, 2.5, 256), (-0.1, 256, 256),
                (float("nan"), 1, 1)]:
        with pytest.raises(ValueError):
            dp.optim.scale_lr(*bad)


@pytest.mark.parametrize("make,what", [
    (lambda o: S.StepLR(o, 0), "step_size"),
    (lambda o: S.CosineAnnealingLR(o, 0), "T_max"),
    (lambda o: S.OneCycleLR(o, 0.1, 0), "total_steps"),
    (lambda o: S.OneCycleLR(o, 0.1, 10, pct_start=1.5), "pct_start"),
    (lambda o: S.OneCycleLR(o, 0.1, 10, anneal_strategy="exp"), "anneal_strategy"),
    (lambda o: S.OneCycleLR(o, [0.1, 0.2], 10), "one per param group"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "factor"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), "mode"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="pct"), "threshold_mode"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), "patience"),
    (lambda o: S.ReduceLROnPlateau(o, cooldown=1.5), "cooldown"),
    (lambda o: S.WarmupCosineLR(o, -1, 10), "warmup_steps"),
    (lambda o: S.WarmupCosineLR(o, 0, 0), "total_steps"),
    (lambda o: S.WarmupCosineLR(o, 11, 10), "exceeds"),
])
def test_scheduler_bad_arguments(make, what):
    with pytest.raises(ValueError, match=what):
        make(_opt())


def test_scheduler_needs_an_optimizer_with_momentum_to_cycle():
    with pytest.raises(TypeError, match="not a dlprimer Optimizer"):
        S.StepLR(object(), 3)
    with pytest.raises(TypeError, match="not a dlprimer Optimizer"):
        S.ReduceLROnPlateau("adam")

    class Plain(dp.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})
    with pytest.raises(ValueError, match="cycle_momentum"):
        S.OneCycleLR(Plain([Parameter(dp.zeros(2))]), 0.1, 10)
    S.OneCycleLR(Plain([Parameter(dp.zeros(2))]), 0.1, 10, cycle_momentum=False)
