"""The standard workloads the command line, the claims and the report measure:
an MLP on an offline data set, the SmallCNN on the digit images, or a small GPT on
the bundled text corpus (``--model mlp|cnn|gpt``), with a named optimizer, and
their profiles.

Kept out of ``cli.py`` so that the report and the claims build from measurement
records without importing the command line (no import cycle)."""
from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lamb", "lars")
MODELS = ("mlp", "cnn", "gpt")
#: The GPT of ``--model gpt``: nanoGPT's shape at a size a CPU trains in seconds.
GPT_SIZE = {"block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}


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


def build_gpt(vocab_size, checkpoint_segments=1, dropout=0.0, **size):
    """An ``nn.GPT`` (``GPT_SIZE`` unless ``size`` says otherwise); with
    ``checkpoint_segments > 1`` its training forward recomputes the Transformer blocks'
    activations in that many segments (dp.checkpoint_sequential over ``blocks``)."""
    from .nn import GPT
    cfg = {**GPT_SIZE, **size}
    if checkpoint_segments <= 1:
        return GPT(vocab_size, dropout=dropout, **cfg)
    from .checkpoint import checkpoint_sequential
    from .tensor import arange

    class CheckpointedGPT(GPT):
        def forward(self, idx):
            if not self.training or idx.ndim != 2 or idx.shape[1] > self.block_size:
                return super().forward(idx)  # evaluation, or the GPT's own shape error
            pos = arange(idx.shape[1], backend=idx.backend)
            x = self.drop(self.wte(idx) + self.wpe(pos))
            x = checkpoint_sequential(self.blocks, self.segments, x)
            return self.lm_head(self.ln_f(x))

    m = CheckpointedGPT(vocab_size, dropout=dropout, **cfg)
    object.__setattr__(m, "segments", int(checkpoint_segments))
    return m


def token_loss(vocab_size):
    """Mean next-token cross-entropy of (N, T, V) logits against (N, T) targets."""
    from .nn import functional as F

    def loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
    loss.__name__ = "token_cross_entropy"
    return loss


@dataclass
class Workload:
    """A model with its data and loss: what ``train``/``profile --model`` run.
    ``train``/``val`` are TensorDatasets, ``loss_fn(output, target)`` a scalar,
    ``describe`` one line for a banner, ``config`` what a log records."""
    kind: str
    model: object
    loss_fn: object
    train: object
    val: object
    describe: str
    config: dict = field(default_factory=dict)


def build_workload(kind="mlp", dataset="digits", hidden=(128, 128), activation="relu",
                   dropout=0.0, checkpoint_segments=1, seed=0) -> Workload:
    """The model ``kind`` (one of :data:`MODELS`) and its data: ``mlp`` on ``dataset``
    with ``hidden`` layers; ``cnn``: ``nn.SmallCNN`` on the digits as 1x8x8 images;
    ``gpt``: ``build_gpt`` on the bundled corpus's windows (``CharCorpus.windows``).
    Seeds the RNG with ``seed`` first, so the weights are reproducible."""
    import dlprimer as dp
    from .nn import functional as F
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    dp.manual_seed(seed)
    if kind == "gpt":
        from .data import load_text
        corpus = load_text()
        model = build_gpt(corpus.vocab_size, checkpoint_segments, dropout)
        bs = model.block_size
        cfg = {"model": "gpt", "dataset": "text", "vocab_size": corpus.vocab_size, **GPT_SIZE,
               "unigram_loss": corpus.unigram_loss()}
        return Workload(kind, model, token_loss(corpus.vocab_size), corpus.windows("train", bs),
                        corpus.windows("val", bs, stride=bs), f"GPT {GPT_SIZE['n_layer']} layers x "
                        f"{GPT_SIZE['n_embd']} wide, block {bs}, vocabulary {corpus.vocab_size}, "
                        f"{model.num_parameters():,} parameters (unigram baseline val loss "
                        f"{cfg['unigram_loss']:.3f})", cfg)
    if kind == "cnn":
        from .data import load_digit_images
        from .nn import SmallCNN
        split = load_digit_images(seed=seed)
        model = SmallCNN()
        return Workload(kind, model, F.cross_entropy, split.train, split.val,
                        f"SmallCNN on 1x8x8 digit images, {model.num_parameters():,} parameters",
                        {"model": "cnn", "dataset": "digits_images"})
    from .data import load_dataset
    data = load_dataset(dataset, seed=seed)
    sizes = [data.num_features, *hidden, data.num_outputs]
    model = build_model(sizes, activation, dropout, checkpoint_segments)
    loss = F.cross_entropy if data.task == "classification" else F.mse_loss
    return Workload(kind, model, loss, data.train, data.val, f"MLP {sizes} {activation}",
                    {"model": "mlp", "dataset": dataset, "sizes": sizes, "activation": activation})


def profile_workload(kind, batch_size=256, optimizer="adam", lr=None, seed=0, warmup=3,
                     repeats=20, memory=True, trace=None, **model_args):
    """Profile one training step of :func:`build_workload`'s ``kind`` on its first
    shuffled batch; returns ``(report, workload, batch)``; ``trace``: a path for the
    step's Chrome trace."""
    from .data import DataLoader
    from .profiler import profile
    w = build_workload(kind, seed=seed, **model_args)
    opt = make_optimizer(optimizer, w.model.parameters(), lr)
    batch = next(iter(DataLoader(w.train, min(batch_size, len(w.train)), shuffle=True, seed=seed)))
    rep = profile(w.model, w.loss_fn, batch, optimizer=opt, warmup=warmup, repeats=repeats,
                  memory=memory, trace=trace)
    rep.meta["workload"] = {**w.config, "batch": len(batch[0]), "optimizer": optimizer}
    return rep, w, batch
