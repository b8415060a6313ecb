"""Train a 64-128-10 MLP on scikit-learn's bundled digits with plain SGD and print
what each step costs. Runs offline, on the CPU by default (CUDA when present)."""
import time

import numpy as np
from sklearn.datasets import load_digits

import dlprimer as dp


def main(epochs=30, batch=64, lr=0.1, seed=0):
    b = dp.get_backend()
    dp.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    tr, te = idx[:1437], idx[1437:]
    Xtr, ytr = dp.tensor(X[tr], backend=b), y[tr]
    Xte, yte = dp.tensor(X[te], backend=b), y[te]
    W1 = dp.randn(64, 128) * (2 / 64) ** 0.5
    W2 = dp.randn(128, 10) * (2 / 128) ** 0.5
    params = [W1.detach().requires_grad_(), dp.zeros(128, requires_grad=True),
              W2.detach().requires_grad_(), dp.zeros(10, requires_grad=True)]
    W1, b1, W2, b2 = params
    onehot = np.eye(10, dtype=np.float32)

    def forward(xb):
        return ((xb @ W1 + b1).relu()) @ W2 + b2

    t_fwd = t_bwd = 0.0
    steps = 0
    for epoch in range(epochs):
        perm = rng.permutation(len(tr))
        for s in range(0, len(tr), batch):
            j = perm[s:s + batch]
            xb, yb = Xtr[j], dp.tensor(onehot[ytr[j]], backend=b)
            with b.timer() as tf:
                logits = forward(xb)
                z = logits - logits.max(axis=1, keepdims=True).detach()
                loss = -(((z - z.exp().sum(axis=1, keepdims=True).log()) * yb).sum(axis=1)).mean()
            with b.timer() as tb:
                loss.backward()
            with dp.no_grad():
                for p in params:
                    p.data -= lr * p.grad.data
                    p.grad = None
            t_fwd += tf.elapsed
            t_bwd += tb.elapsed
            steps += 1
        if epoch % 10 == 9 or epoch == epochs - 1:
            with dp.no_grad():
                acc = (forward(Xte).numpy().argmax(1) == yte).mean()
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test accuracy {acc:.3f}")
    print(f"backend {b.name}: {steps} steps, forward {1e3 * t_fwd / steps:.3f} ms/step, "
          f"backward {1e3 * t_bwd / steps:.3f} ms/step, backward/forward time ratio "
          f"{t_bwd / t_fwd:.2f}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
