"""Command-line pieces for data-parallel training, and ``python -m dlprimer.distributed``.

``dlprimer train`` adds these with :func:`add_arguments`, calls :func:`setup`
(which starts the process group when ``--distributed`` is given or when it finds
itself started by ``mpiexec``), and trains with :func:`dlprimer.distributed.fit`
and :func:`fit_kwargs`. ``python -m dlprimer.distributed`` is a complete small
data-parallel run on a bundled data set:

    mpiexec -n 2 python -m dlprimer.distributed --dataset digits --epochs 5 --scale-lr
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("data-parallel training (run under mpiexec -n N)")
    g.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the ranks of mpiexec (detected automatically "
                        "when launched by mpiexec with more than one rank)")
    g.add_argument("--dist-backend", choices=("auto", "mpi", "nccl"), default="auto",
                   help="communicator: MPI (host buffers), NCCL (GPU), or auto (default)")
    g.add_argument("--scale-lr", action="store_true",
                   help="linear scaling rule: lr x number of ranks (global batch / per-rank batch)")
    g.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="linear learning-rate warm-up over the first N steps")
    g.add_argument("--dist-timeout", type=float, default=None, metavar="S",
                   help="abort every rank when one collective waits longer than S seconds")
    return g


def wants_distributed(args) -> bool:
    from . import launched_world_size
    return bool(getattr(args, "distributed", False)) or launched_world_size() > 1


def setup(args):
    """The communicator for ``args`` (None for a plain single-process run)."""
    if getattr(args, "warmup_steps", 0) < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not wants_distributed(args):
        return None
    from . import init
    return init(args.dist_backend, timeout=args.dist_timeout)


def fit_kwargs(args) -> dict:
    return {"scale_lr": bool(args.scale_lr), "warmup_steps": int(args.warmup_steps)}


def _checked(conv, low, strict=True):
    """argparse type: ``conv(text)`` that must be > low (>= low when not strict)."""
    def parse(text):
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({conv.__name__})") from None
        if not (v > low if strict else v >= low) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>' if strict else '>='} {low}")
        return v
    return parse


_positive_int, _nonneg_int, _positive_float = _checked(int, 0), _checked(int, 0, False), _checked(float, 0)


def _parser() -> argparse.ArgumentParser:
    from ..data import DATASETS
    p = argparse.ArgumentParser(
        prog="python -m dlprimer.distributed",
        description="Data-parallel training of a one-hidden-layer MLP on a bundled data set: "
                    "every rank reads its shard, gradients are averaged with one all-reduce "
                    "per step. Launch with mpiexec -n N; alone it trains on one rank.",
        epilog="example: mpiexec -n 2 python -m dlprimer.distributed --dataset digits "
               "--epochs 5 --scale-lr --warmup-steps 20")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="bundled data set (offline) [default: digits]")
    p.add_argument("--hidden", type=_positive_int, default=64,
                   help="hidden layer width [default: 64]")
    p.add_argument("--epochs", type=_positive_int, default=3, help="[default: 3]")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="per-rank batch; the global batch is N x this [default: 32]")
    p.add_argument("--lr", type=_positive_float, default=0.05,
                   help="SGD learning rate (momentum 0.9) before --scale-lr [default: 0.05]")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [default: 0]")
    p.add_argument("--log-dir", help="metrics.jsonl goes here (written by rank 0)")
    p.add_argument("--checkpoint-dir", help="training checkpoints go here (written by rank 0)")
    p.add_argument("--force", action="store_true",
                   help="start a new run beside another run's checkpoints in --checkpoint-dir")
    add_arguments(p)
    return p


def main(argv=None) -> int:
    from .. import nn, optim
    from ..data import DataLoader, load_dataset
    from . import fit, init, launched_world_size
    p = _parser()
    args = p.parse_args(argv)
    try:
        comm = setup(args)
    except ValueError as e:
        p.error(str(e))
    if comm is None:
        comm = init("single") if launched_world_size() <= 1 else init("auto")
    split = load_dataset(args.dataset, seed=args.seed)
    import dlprimer as dp
    dp.manual_seed(args.seed)
    out = split.num_classes or 1
    model = nn.MLP((split.num_features, args.hidden, out))
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    train = DataLoader(split.train, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    val = DataLoader(split.val, batch_size=256)
    res = fit(model, opt, train, val, epochs=args.epochs, log_dir=args.log_dir,
              checkpoint_dir=args.checkpoint_dir, progress=False, force=args.force,
              **fit_kwargs(args))
    if comm.rank == 0:
        last = res.epochs[-1] if res.epochs else {}
        print(json.dumps({"world_size": comm.world_size, "steps": res.step,
                          "lr": opt.param_groups[0]["lr"],
                          **{k: last[k] for k in ("train_loss", "val_loss", "val_acc")
                             if k in last},
                          "comm": comm.stats.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
