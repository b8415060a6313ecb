"""End to end: a 64-128-10 MLP trained with plain mini-batch SGD (written here) on
scikit-learn's bundled digits reaches at least 95 % held-out accuracy."""
import numpy as np
from sklearn.datasets import load_digits

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn


def test_mlp_learns_digits():
    dp.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    idx = np.random.default_rng(0).permutation(len(X))
    tr, te = idx[:1437], idx[1437:]
    model = nn.MLP([64, 128, 10])
    params = list(model.parameters())
    rng = np.random.default_rng(1)
    lr, batch = 0.1, 32
    for epoch in range(20):
        model.train()
        for s in range(0, len(tr), batch):
            j = tr[s:s + batch]
            loss = F.cross_entropy(model(dp.tensor(X[j])), y[j])
            model.zero_grad()
            loss.backward()
            with dp.no_grad():
                for p in params:
                    p.data -= lr * p.grad.data
        rng.shuffle(tr)
    model.eval()
    with dp.no_grad():
        acc = (model(dp.tensor(X[te])).numpy().argmax(1) == y[te]).mean()
    print(f"held-out accuracy {acc:.4f}")
    assert acc >= 0.95, f"held-out accuracy {acc:.3f}"
    assert np.isfinite(loss.item())
