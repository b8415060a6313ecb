"""The standard workloads the command line, the claims and the report measure:
an MLP on an offline data set with a named optimizer, and its profile.

Kept out of ``cli.py`` so that the report and the claims build from measurement
records without importing the command line (no import cycle)."""
from __future__ import annotations

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lamb", "lars")


def default_lr(opt: str) -> float:
    """The learning rate the CLI uses for optimizer ``opt`` when none is given."""
    return {"sgd": 0.1, "momentum": 0.05, "lars": 0.1}.get(opt, 1e-3)


def make_optimizer(name, params, lr=None, weight_decay=0.0):
    """Optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``params``."""
    from . import optim
    lr = lr if lr is not None else default_lr(name)
    if name == "sgd":
        return optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    if name == "lamb":
        return optim.LAMB(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return optim.LARS(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_model(sizes, activation="relu", dropout=0.0, checkpoint_segments=1):
    """An MLP; with ``checkpoint_segments > 1`` its training forward recomputes
    activations in that many segments (dp.checkpoint_sequential)."""
    from .nn import MLP
    if checkpoint_segments <= 1:
        return MLP(sizes, activation=activation, dropout=dropout)
    from .checkpoint import checkpoint_sequential

    class CheckpointedMLP(MLP):
        def forward(self, x):
            if self.training:
                return checkpoint_sequential(self, self.segments, x)
            return super().forward(x)

    m = CheckpointedMLP(sizes, activation=activation, dropout=dropout)
    object.__setattr__(m, "segments", int(checkpoint_segments))
    return m


def profile_mlp(dataset, hidden, activation="relu", batch_size=256, optimizer="adam", lr=None,
                seed=0, warmup=3, repeats=20, memory=True, trace=None):
    """Profile one training step of an MLP with ``hidden`` layers on ``dataset``'s
    first shuffled batch; returns ``(report, model, loss_fn, batch, sizes)``; ``trace``:
    a path for the step's Chrome trace."""
    import dlprimer as dp
    from .data import DataLoader, load_dataset
    from .nn import functional as F
    from .profiler import profile
    dp.manual_seed(seed)
    data = load_dataset(dataset, seed=seed)
    sizes = [data.num_features, *hidden, data.num_outputs]
    model = build_model(sizes, activation)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loader = DataLoader(data.train, min(batch_size, len(data.train)), shuffle=True, seed=seed)
    batch = next(iter(loader))
    loss = F.cross_entropy if data.task == "classification" else F.mse_loss
    rep = profile(model, loss, batch, optimizer=opt, warmup=warmup, repeats=repeats, memory=memory,
                  trace=trace)
    rep.meta["workload"] = {"dataset": dataset, "sizes": sizes, "activation": activation,
                            "batch": len(batch[0]), "optimizer": optimizer}
    return rep, model, loss, batch, sizes
