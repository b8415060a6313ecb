"""Independent plain-NumPy references for the optimizer tests: a small tanh MLP whose
gradient is written out by hand, and each optimizer's textbook update per parameter."""
import numpy as np

import dlprimer as dp
from dlprimer.nn.parameter import Parameter

SHAPES = [(4, 6), (6,), (6, 3), (3,)]


def make_problem(seed, dtype):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) * 0.7 for s in SHAPES]
    x = rng.standard_normal((8, 4)).astype(dtype)
    y = rng.standard_normal((8, 3)).astype(dtype)
    return init, x, y


def np_loss_grad(ws, x, y):
    """Loss mean((tanh(x W1 + b1) W2 + b2 - y)^2) and its gradient, by hand."""
    w1, b1, w2, b2 = ws
    h = np.tanh(x @ w1 + b1)
    r = h @ w2 + b2 - y
    dout = 2 * r / r.size
    dz = (dout @ w2.T) * (1 - h * h)
    return float((r * r).mean()), [x.T @ dz, dz.sum(0), h.T @ dout, dout.sum(0)]


def dp_params(init, backend=None):
    return [Parameter(dp.tensor(a.copy(), backend=backend)) for a in init]


def dp_loss(params, x, y):
    w1, b1, w2, b2 = params
    h = (x @ w1 + b1).tanh()
    r = h @ w2 + b2 - y
    return (r * r).mean()


class RefSGD:
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.h = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                      wd=weight_decay)
        self.buf = {}

    def step(self, ws, gs):
        h = self.h
        for i, (w, g) in enumerate(zip(ws, gs)):
            d = g + h["wd"] * w
            if h["momentum"]:
                if i not in self.buf:
                    self.buf[i] = d.copy()
                else:
                    self.buf[i] = h["momentum"] * self.buf[i] + (1 - h["dampening"]) * d
                d = d + h["momentum"] * self.buf[i] if h["nesterov"] else self.buf[i]
            w -= h["lr"] * d


class RefAdam:
    """Kingma & Ba, Alg. 1, with L2 (g += wd w) or decoupled (w *= 1 - lr wd) decay."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.decoupled = decoupled
        self.m, self.v, self.t = {}, {}, {}

    def moments(self, i, w, g):
        t = self.t[i] = self.t.get(i, 0) + 1
        m = self.m[i] = self.b1 * self.m.get(i, 0) + (1 - self.b1) * g
        v = self.v[i] = self.b2 * self.v.get(i, 0) + (1 - self.b2) * g * g
        return m / (1 - self.b1 ** t), v / (1 - self.b2 ** t)

    def step(self, ws, gs, skip=()):
        for i, (w, g) in enumerate(zip(ws, gs)):
            if i in skip:
                continue
            if self.decoupled:
                w *= 1 - self.lr * self.wd
            else:
                g = g + self.wd * w
            mh, vh = self.moments(i, w, g)
            w -= self.lr * mh / (np.sqrt(vh) + self.eps)


class RefLAMB(RefAdam):
    """You et al. 2019, Alg. 2: u = m_hat/(sqrt(v_hat)+eps) + wd w; w -= lr ||w||/||u|| u."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(lr, betas, eps, weight_decay)

    def step(self, ws, gs):
        for i, (w, g) in enumerate(zip(ws, gs)):
            mh, vh = self.moments(i, w, g)
            u = mh / (np.sqrt(vh) + self.eps) + self.wd * w
            wn, un = np.linalg.norm(w), np.linalg.norm(u)
            trust = wn / un if wn > 0 and un > 0 else 1.0
            w -= self.lr * trust * u


class RefLARS:
    """You et al. 2017, Alg. 1 with the global lr outside the momentum buffer."""

    def __init__(self, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-9):
        self.lr, self.mu, self.wd, self.tc, self.eps = lr, momentum, weight_decay, trust_coefficient, eps
        self.buf = {}

    def step(self, ws, gs):
        for i, (w, g) in enumerate(zip(ws, gs)):
            wn, gn = np.linalg.norm(w), np.linalg.norm(g)
            local = self.tc * wn / (gn + self.wd * wn + self.eps) if wn > 0 and gn > 0 else 1.0
            d = local * (g + self.wd * w)
            self.buf[i] = self.mu * self.buf.get(i, 0) + d
            w -= self.lr * self.buf[i]
