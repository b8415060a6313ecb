"""``--model mlp|cnn|gpt`` of ``dlprimer train`` and ``dlprimer profile``: the
option, and the checks that turn it and the MLP's own options (``--dataset``,
``--hidden``, ``--activation``) into a :class:`~dlprimer.workloads.Workload`.

``mlp`` (the default) is the MLP on ``--dataset`` as before; ``cnn`` is
``nn.SmallCNN`` on the digits as 1x8x8 images; ``gpt`` is a small nanoGPT-shaped
language model on the bundled text corpus. The MLP's options name an MLP's
choices, so giving one with another model is an error, not silently ignored.
"""
from __future__ import annotations

from .workloads import MODELS, GPT_SIZE, build_workload

#: Learning rates the command line uses when ``--lr`` is not given, per model and
#: optimizer family (the MLP's are :func:`dlprimer.workloads.default_lr`'s).
MODEL_LR = {"cnn": 3e-3, "gpt": 3e-3}


def add_model_argument(p):
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp on --dataset; cnn: SmallCNN on the digits as 1x8x8 images; gpt: a "
                        f"{GPT_SIZE['n_layer']}-layer, {GPT_SIZE['n_embd']}-wide causal language "
                        "model on the bundled text corpus [default: mlp]")


def add_claims_model_argument(p):
    p.add_argument("--model", choices=(*MODELS, "all"), default="all",
                   help="architecture(s) of the claims that depend on one: backward_2x and "
                        "backward_memory run on each; checkpointing and gelu_cost add the "
                        "Transformer to the MLP with gpt or all [default: all]")


def add_autocast_argument(p):
    p.add_argument("--autocast", choices=("float16", "bfloat16"), default=None,
                   help="profile under dp.autocast(DTYPE), and measure the memory split in "
                        "float32 and DTYPE side by side")


def check_model_options(a, hidden_default):
    """Fill the MLP's option defaults (``--model mlp``) or refuse them (cnn, gpt);
    returns a one-line error or None."""
    if a.model == "mlp":
        a.dataset = a.dataset or "digits"
        a.hidden = a.hidden if a.hidden is not None else [int(x) for x in hidden_default.split(",")]
        a.activation = a.activation or "relu"
        return None
    given = [f"--{k}" for k in ("hidden", "activation") if getattr(a, k) is not None]
    if a.dataset is not None and not (a.model == "cnn" and a.dataset == "digits"):
        given.insert(0, "--dataset")
    if given:
        data = "the digit images" if a.model == "cnn" else "the bundled text corpus"
        return (f"{', '.join(given)}: only for --model mlp; --model {a.model} is a fixed "
                f"architecture on {data}")
    segs = getattr(a, "checkpoint_segments", 1)
    if segs > 1 and a.model == "cnn":
        return "--checkpoint-segments: checkpointing is for --model mlp or gpt, not cnn"
    if segs > GPT_SIZE["n_layer"] and a.model == "gpt":
        return (f"--checkpoint-segments {segs}: the GPT has only {GPT_SIZE['n_layer']} "
                f"Transformer blocks to split into segments")
    return None


def default_lr(model, optimizer):
    """``--lr``'s default: the MLP's per optimizer; 3e-3 for Adam-like optimizers on the
    CNN and the GPT (which learn too slowly at 1e-3 for a ten-epoch run)."""
    from .workloads import default_lr as mlp_lr
    if model in MODEL_LR and optimizer in ("adam", "adamw", "lamb"):
        return MODEL_LR[model]
    return mlp_lr(optimizer)


def workload(a):
    """The :class:`Workload` the parsed arguments ``a`` ask for."""
    return build_workload(a.model, dataset=a.dataset, hidden=a.hidden, activation=a.activation,
                          dropout=getattr(a, "dropout", 0.0),
                          checkpoint_segments=getattr(a, "checkpoint_segments", 1), seed=a.seed)
