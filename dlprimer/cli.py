"""The ``dlprimer`` command.

``dlprimer primer`` is the main job: train an MLP on the digits, profile a step,
re-measure the chapter's claims and write an HTML report. The other
subcommands are its parts: ``train``, ``profile``, ``estimate``, ``claims``,
``report``, and ``bench`` (the benchmark suite). Every subcommand takes
``--backend cpu|cuda|auto`` and ``--help``; a bad argument prints one line and
exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

BACKENDS = ("cpu", "cuda", "auto")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lamb", "lars")
SCHEDULES = ("none", "cosine", "step", "onecycle", "warmup-cosine", "plateau")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid")


class UsageError(Exception):
    """A bad argument found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``dlprimer train: error: ...`` and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument types -------------------------------------------------------------------------
def _number(s, conv):
    try:
        return conv(s)
    except ValueError:
        kind = "an integer" if conv is int else "a number"
        raise argparse.ArgumentTypeError(f"{s!r} is not {kind}") from None


def _positive_int(s):
    v = _number(s, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 1")
    return v


def _nonneg_int(s):
    v = _number(s, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 0")
    return v


def _positive_float(s):
    v = _number(s, float)
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive finite number")
    return v


def _nonneg_float(s):
    v = _number(s, float)
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a finite number >= 0")
    return v


def _probability(s):
    v = _nonneg_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be in [0, 1)")
    return v


def _sizes(s):
    parts = s.replace(" ", "").split(",")
    if "" in parts:
        raise argparse.ArgumentTypeError(f"{s!r}: empty entry in the comma-separated list "
                                         "(e.g. 128,128)")
    try:
        v = [int(x) for x in parts if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers "
                                         "(e.g. 128,128)") from None
    if not v or any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"{s!r}: layer sizes must be positive integers")
    return v


def _int_list(s):
    return _sizes(s)


def _threads(s):
    """``--threads``: a positive integer, or ``auto`` (the cores idle at start)."""
    if s.strip().lower() == "auto":
        return "auto"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is neither a positive integer nor 'auto'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 1 (or 'auto')")
    return v


# -- parser ---------------------------------------------------------------------------------
def _common(p, backend_default="auto"):
    p.add_argument("--backend", choices=BACKENDS, default=backend_default,
                   help="where to compute: cpu, cuda, or auto (CUDA when a GPU is usable) "
                        f"[default: {backend_default}]")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [default: 0]")
    p.add_argument("--threads", type=_threads, default=None, metavar="N|auto",
                   help="threads of every pool (BLAS, OpenMP, ...): N, or auto = the cores idle "
                        "at start, from the load average [default: auto; bench: 1]")


def _model_args(p, hidden_default="128,128", batch_default=64):
    from .cli_models import add_model_argument
    from .data import DATASETS
    add_model_argument(p)
    p.set_defaults(hidden_default=hidden_default)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data set (all offline; --model mlp) [default: digits]")
    p.add_argument("--hidden", type=_sizes, default=None, metavar="SIZES",
                   help=f"hidden layer sizes, comma-separated (--model mlp) [default: {hidden_default}]")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="hidden activation (--model mlp) [default: relu]")
    p.add_argument("--batch-size", type=_positive_int, default=batch_default,
                   help=f"batch size [default: {batch_default}]")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="[default: adam]")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate [default: 1e-3 for Adam-like (3e-3 with --model cnn or "
                        "gpt), 0.1 for SGD-like]")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dlprimer", description="Train, profile and measure the systems side of "
                "deep learning (the chapter's numbers, re-measured on this machine).")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for add in (_add_primer, _add_train, _add_profile, _add_estimate, _add_claims, _add_report,
                _add_bench, _add_doctor):
        add(sub)
    return p


def _add_primer(sub):
    s = sub.add_parser("primer", help="the main job: train on digits, profile, check the claims, "
                       "write the report", description="Train an MLP on the digits, profile one "
                       "step, re-measure the chapter's claims and write an HTML report.")
    _common(s)
    s.add_argument("--out", default="dlprimer-primer", help="output directory "
                   "[default: ./dlprimer-primer]")
    s.add_argument("--epochs", type=_positive_int, default=15, help="training epochs [default: 15]")
    s.add_argument("--size", choices=("tiny", "quick", "full"), default="quick",
                   help="claim workloads: tiny (seconds, least steady), quick, full (slower, "
                        "steadier) [default: quick]")
    s.add_argument("--no-claims", action="store_true", help="skip the claims (faster)")


def _add_train(sub):
    s = sub.add_parser("train", help="train a model (--model mlp|cnn|gpt) on a data set",
                       description="Train a model, logging every metric to LOG_DIR/metrics.jsonl "
                       "(and TensorBoard), checkpointing atomically.")
    _common(s)
    _model_args(s)
    s.add_argument("--schedule", choices=SCHEDULES, default="none", help="learning-rate schedule")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=_positive_int, default=10, help="[default: 10]")
    g.add_argument("--steps", type=_positive_int, default=None, help="train for this many steps")
    s.add_argument("--dropout", type=_probability, default=0.0, help="dropout probability")
    s.add_argument("--weight-decay", type=_nonneg_float, default=0.0)
    s.add_argument("--clip", type=_positive_float, default=None, help="max global gradient norm")
    s.add_argument("--checkpoint-segments", type=_positive_int, default=1, metavar="K",
                   help="gradient checkpointing: recompute activations in K segments (1: off)")
    s.add_argument("--accumulate", type=_positive_int, default=1, metavar="K",
                   help="gradient accumulation: K micro-batches of --batch-size per optimizer "
                   "step (the update of one batch K times the size) [default: 1]")
    s.add_argument("--log-dir", default=None, help="metrics.jsonl and TensorBoard events go here")
    s.add_argument("--checkpoint-dir", default=None, help="training checkpoints go here")
    s.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS steps [default: each epoch]")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint "
                   "(an error when there is none; see --force)")
    s.add_argument("--force", action="store_true", help="start a new run even where --resume finds "
                   "nothing usable, or beside another run's checkpoints in --checkpoint-dir")
    s.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation loss")
    s.add_argument("--no-progress", action="store_true", help="no progress output")
    s.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    s.add_argument("--cuda-graph", action="store_true",
                   help="capture the step once as a CUDA graph and replay it (CUDA backend; "
                        "sgd or lars, no dropout, no schedule)")
    from .distributed import cli as dist_cli
    dist_cli.add_arguments(s)


def _add_profile(sub):
    from . import cli_models
    s = sub.add_parser("profile", help="time, FLOPs and memory of one training step, per layer",
                       description="Profile forward, backward and optimizer step: per-layer times, "
                       "the backward/forward time and FLOP ratios, and the memory split.")
    _common(s)
    _model_args(s, hidden_default="512,512", batch_default=256)
    s.add_argument("--repeats", type=_positive_int, default=20, help="[default: 20]")
    s.add_argument("--warmup", type=_positive_int, default=3, help="[default: 3]")
    s.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON")
    s.add_argument("--trace", metavar="PATH", default=None,
                   help="write one step as a Chrome trace (open in ui.perfetto.dev or chrome://tracing)")
    s.add_argument("--html", metavar="DIR", default=None,
                   help="also write DIR/profile.json and the HTML report of this profile "
                        "(DIR/index.html: per layer and per layer type, roofline, memory)")
    cli_models.add_autocast_argument(s)


def _add_estimate(sub):
    s = sub.add_parser("estimate", help="analytic parameters, FLOPs and memory of a training step",
                       description="Estimate on paper: weights, gradients, optimizer state, "
                       "activations and FLOPs. Give --params for a model of that many "
                       "parameters, or --sizes for an MLP.")
    _common(s, backend_default="cpu")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--params", type=_positive_float, default=None, help="parameter count, e.g. 1e9")
    g.add_argument("--sizes", type=_sizes, default=None, help="MLP layer sizes, e.g. 784,256,10")
    s.add_argument("--batch", type=_positive_int, default=32, help="batch size [default: 32]")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="[default: adam]")
    s.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                   default="float32", help="training precision [default: float32]")
    s.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    s.add_argument("--json", action="store_true", help="print JSON")


def _add_claims(sub):
    from . import cli_models
    s = sub.add_parser("claims", help="re-measure the chapter's quantitative claims",
                       description="Each quantitative claim of the chapter, re-measured here and "
                       "printed as claimed / measured / why they differ.")
    _common(s)
    s.add_argument("--size", choices=("tiny", "quick", "full"), default="quick",
                   help="workloads: tiny (seconds, least steady), quick, full (slower, steadier) "
                        "[default: quick]")
    s.add_argument("--only", type=lambda v: [x for x in v.split(",") if x], default=None,
                   metavar="KEYS", help="comma-separated subset: backward_2x, adam_bytes, "
                   "checkpointing, gelu_cost, batch_size, backward_memory, scaling_table, adam_1b")
    cli_models.add_claims_model_argument(s)
    s.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")


def _add_report(sub):
    s = sub.add_parser("report", help="write the HTML report (plots as PNG)",
                       description="Write an HTML page with PNG plots: loss and accuracy curves, "
                       "activations and their derivatives, per-layer forward/backward time, the "
                       "memory split, the checkpointing trade-off. Reads what a primer or train "
                       "run left in --run; measures what is missing.")
    _common(s)
    s.add_argument("--run", default="dlprimer-primer",
                   help="a primer output directory or a train --log-dir [default: ./dlprimer-primer]")
    s.add_argument("--out", default=None, help="report directory [default: RUN/report]")
    s.add_argument("--no-measure", action="store_true", help="only plot what RUN holds")
    s.add_argument("--size", choices=("tiny", "quick"), default="quick",
                   help="workloads for what is measured [default: quick]")


def _add_bench(sub):
    s = sub.add_parser("bench", help="run the benchmark suite and print its table of ratios",
                       description="Run benchmarks/ with pytest-benchmark and print dlprimer's "
                       "time ratios against each peer and bound; raw results go to JSON.")
    _common(s)
    from .bench import build_parser as bench_arguments
    bench_arguments(s)


def _add_doctor(sub):
    s = sub.add_parser("doctor", help="versions, the GPU, thread pools, kernel compiles and a "
                       "self-test of every fused op",
                       description="Check what dlprimer runs on here (dlprimer/doctor.py); exit "
                       "status 0 unless a check failed (no GPU is not a failure).")
    _common(s)
    s.add_argument("--full", action="store_true",
                   help="also compile for every CI architecture and run the GPU benchmark summary")
    s.add_argument("--json", action="store_true", help="print the report as JSON")


def _version():
    try:
        from . import __version__
        return f"dlprimer {__version__}"
    except Exception:
        return "dlprimer"


# -- helpers ----------------------------------------------------------------------------------
def _apply_threads(a):
    """Set the thread policy before any work: ``--threads N|auto`` (default auto)."""
    import dlprimer as dp
    from .measure import auto_threads
    n = getattr(a, "threads", None)
    if n is None and a.command == "bench":
        return None  # the benchmark session keeps its own default (DLPRIMER_BENCH_THREADS)
    n = auto_threads() if n in (None, "auto") else n
    dp.set_num_threads(n)
    return n


def _fingerprint(backend):
    from .measure import fingerprint
    return fingerprint(backend)


def _set_backend(name):
    import dlprimer as dp
    try:
        return dp.set_backend(name)
    except RuntimeError as e:
        raise UsageError(f"--backend {name}: {e}") from None


def _out_dir(path, flag):
    """Create output directory ``path`` (for option ``flag``) or raise a UsageError
    saying why it cannot be used - before any work is done."""
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create the directory ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: directory is not writable")
    return path


def _out_file(path, flag):
    """Check that output file ``path`` can be written (its directory exists and is
    writable, and it is not a directory) before any work is done."""
    if path is None:
        return None
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable")
    _probe_write(path, flag)
    return path


def _probe_write(path, flag):
    """Open ``path`` for writing without changing it (created then removed when new):
    os.access answers yes for root even where no file can be made (/proc)."""
    existed = os.path.exists(path)
    try:
        with open(path, "a" if existed else "x"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot be written ({e.strerror})") from None
    if not existed:
        os.unlink(path)



from .measure.records import to_json as _clean  # noqa: E402  (old private name)
from .workloads import build_model, make_optimizer, profile_mlp  # noqa: E402,F401  (re-exported)

_profile_model = profile_mlp  # old private name


def make_scheduler(name, opt, total_steps):
    from .optim import lr_scheduler as ls
    if name == "none":
        return None
    if name == "cosine":
        return ls.CosineAnnealingLR(opt, T_max=total_steps)
    if name == "step":
        return ls.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    if name == "onecycle":
        return ls.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=total_steps)
    if name == "warmup-cosine":
        return ls.WarmupCosineLR(opt, warmup_steps=max(1, total_steps // 20), total_steps=total_steps)
    if name == "plateau":
        return ls.ReduceLROnPlateau(opt, patience=2)
    raise UsageError(f"unknown schedule {name!r}")


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


# -- commands -----------------------------------------------------------------------------------
def _check_model(a):
    """--model against the MLP's options (dlprimer.cli_models), before any work."""
    from .cli_models import check_model_options
    err = check_model_options(a, a.hidden_default)
    if err:
        raise UsageError(err)


def cmd_train(a, out=sys.stdout):
    from . import cli_models
    from .data import DataLoader
    from .train import fit
    from .distributed import cli as dist_cli
    _check_model(a)
    if a.resume and a.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir (where the checkpoints are)")
    if a.checkpoint_every is not None and a.checkpoint_dir is None:
        raise UsageError("--checkpoint-every needs --checkpoint-dir (where the checkpoints go)")
    if a.resume and not a.force and not os.path.isdir(a.checkpoint_dir):
        raise UsageError(f"--resume: {a.checkpoint_dir} does not exist, so there is nothing to "
                         "resume; start without --resume, or add --force")
    _out_dir(a.log_dir, "--log-dir")
    _out_dir(a.checkpoint_dir, "--checkpoint-dir")
    b = _set_backend(a.backend)
    try:
        comm = dist_cli.setup(a)  # None unless --distributed or launched by mpiexec -n >1
    except ValueError as e:
        raise UsageError(str(e)) from None
    w = cli_models.workload(a)
    model = w.model
    if a.model == "mlp":
        _check_segments(a.checkpoint_segments, model)
    lr = a.lr if a.lr is not None else cli_models.default_lr(a.model, a.optimizer)
    opt = make_optimizer(a.optimizer, model.parameters(), lr, a.weight_decay)
    train = DataLoader(w.train, a.batch_size, shuffle=True, seed=a.seed)
    val = DataLoader(w.val, max(a.batch_size, 256))
    total = a.steps if a.steps is not None else a.epochs * len(train)
    sched = make_scheduler(a.schedule, opt, total)
    config = {"command": "train", **w.config,
              "lr": opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"]), "schedule": a.schedule, "seed": a.seed,
              "dropout": a.dropout, "checkpoint_segments": a.checkpoint_segments,
              "accumulate": a.accumulate, "fingerprint": _fingerprint(b)}
    if comm is None or comm.rank == 0:
        data = "text corpus" if a.model == "gpt" else a.dataset or "digits"
        print(f"dlprimer train: {data} ({len(w.train)} train / {len(w.val)} val), "
              f"{w.describe}, {type(opt).__name__} lr {config['lr']:g}, "
              f"batch {a.batch_size}, backend {b.name}", file=out, flush=True)
    fit_args = dict(epochs=a.epochs, steps=a.steps, scheduler=sched, clip=a.clip, loss_fn=w.loss_fn,
                    log_dir=a.log_dir, checkpoint_dir=a.checkpoint_dir,
                    checkpoint_every=a.checkpoint_every, resume=a.resume,
                    early_stopping=a.early_stopping, progress=not a.no_progress,
                    stream=out if not a.no_progress else None, config=config, force=a.force,
                    accumulate=a.accumulate)
    if a.cuda_graph:  # -- cuda graph (issue 17) --
        if b.name != "cuda":
            raise UsageError(f"--cuda-graph needs the cuda backend (a GPU); the backend is "
                             f"{b.name!r}")
        if comm is not None or sched is not None or a.dropout or a.accumulate != 1:
            raise UsageError("--cuda-graph replays one captured step: it cannot be combined "
                             "with --distributed, --schedule, --dropout or --accumulate")
        if not opt.graph_safe:
            raise UsageError(f"--cuda-graph needs --optimizer sgd or lars; {type(opt).__name__}'s "
                             "step-count bias correction would be frozen in the graph")
        fit_args["cuda_graph"] = True
    with _one_line_warnings(), _checkpoint_errors_are_usage():
        if comm is not None:
            from .distributed import fit as dist_fit
            config["world_size"] = comm.world_size
            res = dist_fit(model, opt, train, val, comm=comm, **fit_args, **dist_cli.fit_kwargs(a))
            if comm.rank != 0:
                return res
        else:
            res = fit(model, opt, train, val, **fit_args)
    if res.already_complete:
        print(f"dlprimer train: run already complete: {res.resumed_from} holds step {res.step}; "
              "nothing to train (its metrics are in the log)", file=out)
        return res
    final = {k: v for k, v in res.final.items() if isinstance(v, (int, float, str, bool))}
    final["steps"] = res.step
    if a.json:
        print(json.dumps(final), file=out)
    else:
        acc = f", val_acc {final['val_acc']:.4f}" if "val_acc" in final else ""
        print(f"done: {res.step} steps, val_loss {final.get('val_loss', float('nan')):.4f}{acc}"
              + (f"; log {res.log_path}" if res.log_path else "")
              + (f"; checkpoint {res.checkpoint}" if res.checkpoint else ""), file=out)
    return res


def _check_segments(k, model):
    """--checkpoint-segments K needs at least K layers (modules) to split."""
    n = len(list(model.children()))
    if k > n:
        raise UsageError(f"--checkpoint-segments {k}: the model has only {n} layers (modules) "
                         f"to split into segments; use 1 to {n}")


@contextlib.contextmanager
def _one_line_warnings():
    """dlprimer's own warnings (training pathologies, skipped checkpoints) as one line
    each, ``dlprimer: warning: ...``, without the source line Python adds."""
    from .train import CheckpointWarning, TrainingWarning
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (CheckpointWarning, TrainingWarning)):
            print(f"dlprimer: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)
    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _checkpoint_errors_are_usage():
    """Nothing to resume, another run's checkpoints, a corrupt --resume file: exit 2."""
    from .train import CheckpointError
    try:
        yield
    except CheckpointError as e:
        raise UsageError(str(e)) from None



def cmd_profile(a, out=sys.stdout):
    from .cli_models import default_lr
    from .workloads import profile_workload
    _check_model(a)
    _out_file(a.json, "--json")
    _out_file(a.trace, "--trace")
    _out_dir(a.html, "--html")
    b = _set_backend(a.backend)
    lr = a.lr if a.lr is not None else default_lr(a.model, a.optimizer)
    with _autocast(a.autocast):
        rep, w, batch = profile_workload(a.model, a.batch_size, a.optimizer, lr, a.seed, a.warmup,
                                         a.repeats, dataset=a.dataset, hidden=a.hidden,
                                         activation=a.activation, trace=a.trace)
    data = "text corpus" if a.model == "gpt" else a.dataset or "digits"
    print(f"dlprimer profile: {data}, {w.describe}, batch {len(batch[1])}, "
          f"{a.optimizer}, warmup {a.warmup}, repeats {a.repeats}", file=out)
    print(rep.table(), file=out)
    if a.autocast:
        from .profiler import format_precision_memory, memory_by_precision
        opt = make_optimizer(a.optimizer, w.model.parameters(), lr)
        rep.memory_by_precision = memory_by_precision(w.model, w.loss_fn, batch, opt,
                                                      ("float32", a.autocast))
        print("\n" + format_precision_memory(rep.memory_by_precision), file=out)
    d = rep.to_dict()
    d["memory_by_precision"] = getattr(rep, "memory_by_precision", None)
    for path in (a.json, a.html and os.path.join(a.html, "profile.json")):
        if path:
            with open(path, "w") as f:
                json.dump(_clean(d), f, indent=1)
    if a.html:
        from .report import build_report
        print(f"report: {build_report(a.html, out_dir=a.html, measure=False, backend=b)}", file=out)
    if a.trace:
        print(f"trace: {a.trace} (open in https://ui.perfetto.dev or chrome://tracing)", file=out)
    return rep


def _autocast(dtype):
    """``dp.autocast(dtype)`` for --autocast, or nothing; an unsupported dtype is exit 2."""
    if dtype is None:
        return contextlib.nullcontext()
    from .amp import autocast
    try:
        return autocast(dtype)
    except ValueError as e:
        raise UsageError(f"--autocast: {e}") from None


def cmd_estimate(a, out=sys.stdout):
    from .profiler import bytes_per_param, estimate
    if a.sizes is not None:
        if len(a.sizes) < 2:
            raise UsageError("--sizes needs at least two sizes (inputs, ..., outputs)")
        e = estimate(a.sizes, a.batch, optimizer=a.optimizer, dtype=a.dtype, activation=a.activation)
        print(json.dumps(_clean(e.to_dict())) if a.json else e.table(), file=out)
        return e
    if a.params < 1:
        raise UsageError(f"--params {a.params:g}: a model needs at least one parameter")
    n = int(a.params)
    bpp = bytes_per_param(a.optimizer, a.dtype)
    item = {"float32": 4, "float64": 8}.get(a.dtype, 2)
    res = {"params": n, "dtype": a.dtype, "optimizer": a.optimizer, "bytes_per_param": bpp,
           "weights_bytes": n * item, "grad_bytes": n * item, "optimizer_bytes": n * (bpp - 2 * item),
           "model_state_bytes": n * bpp, "chapter_rule_bytes": 12 * n,
           "train_flops_per_sample": 6 * n, "train_flops_per_step": 6 * n * a.batch}
    if a.json:
        print(json.dumps(res), file=out)
    else:
        print(f"dlprimer estimate  {n:,} parameters  dtype={a.dtype}  optimizer={a.optimizer}  "
              f"batch={a.batch}\n"
              f"  weights               {_fmt_bytes(res['weights_bytes'])}\n"
              f"  gradients             {_fmt_bytes(res['grad_bytes'])}\n"
              f"  optimizer state       {_fmt_bytes(res['optimizer_bytes'])}"
              + (" (incl. float32 master weights)" if item == 2 else "") + "\n"
              f"  model state           {_fmt_bytes(res['model_state_bytes'])}  ({bpp} bytes/param)\n"
              f"  chapter's rule        {_fmt_bytes(res['chapter_rule_bytes'])}  (12 bytes/param: "
              f"one optimizer state; Adam keeps two)\n"
              f"  training FLOPs        {6 * n:.3g} per sample (2N forward + 4N backward), "
              f"{6 * n * a.batch:.3g} per step\n"
              f"  activations: not counted (they depend on the architecture; use --sizes)",
              file=out)
    return res


def cmd_claims(a, out=sys.stdout):
    from .claims import check_claims, claims_json, format_claims
    from .measure import finish, fingerprint
    if a.only is not None and not a.only:
        raise UsageError("--only: name at least one claim")
    _out_file(a.json, "--json")
    b = _set_backend(a.backend)
    fp = fingerprint(b)
    try:
        claims = check_claims(b, size=a.size, only=a.only,
                              models=None if a.model == "all" else (a.model,),
                              progress=lambda k: print(f"measuring {k} ...", file=sys.stderr,
                                                       flush=True))
    except ValueError as e:
        if "unknown claim" in str(e):
            raise UsageError(f"--only: {e}") from None
        raise
    fp = finish(fp)
    print(f"The chapter's claims, re-measured on backend {b.name} "
          f"({a.size} workloads, model {a.model}):\n", file=out)
    print(format_claims(claims, fingerprint=fp), file=out, end="")
    if a.json:
        with open(a.json, "w") as f:
            f.write(claims_json(claims, fingerprint=fp))
    return claims


def cmd_report(a, out=sys.stdout):
    from .report import build_report
    b = _set_backend(a.backend)
    if not os.path.isdir(a.run) and a.no_measure:
        raise UsageError(f"--run {a.run}: no such directory (and --no-measure leaves nothing to plot)")
    if os.path.exists(a.run) and not os.path.isdir(a.run):
        raise UsageError(f"--run {a.run}: is not a directory")
    _out_dir(a.out if a.out is not None else os.path.join(a.run, "report"), "--out")
    path = build_report(a.run, out_dir=a.out, measure=not a.no_measure, backend=b, seed=a.seed,
                        size=a.size)
    print(f"report: {path}", file=out)
    return path


def cmd_bench(a, out=sys.stdout):
    from . import bench
    os.environ["DLPRIMER_BACKEND"] = a.backend  # the pytest child computes there
    return bench.run(a, out=out)


def cmd_primer(a, out=sys.stdout):
    """Train on digits, profile, check the claims, write the report."""
    import dlprimer as dp
    from .claims import check_claims, claims_json, format_claims
    from .measure import finish, fingerprint
    from .report import build_report
    t0 = time.perf_counter()
    _out_dir(a.out, "--out")
    b = _set_backend(a.backend)
    print(f"dlprimer primer: backend {b.name}; writing to {os.path.abspath(a.out)}\n", file=out)

    print("1/4 training an MLP on the digits (8x8 images, 10 classes)", file=out, flush=True)
    targs = build_parser().parse_args(
        ["train", "--dataset", "digits", "--hidden", "128,128", "--epochs", str(a.epochs),
         "--batch-size", "64", "--optimizer", "adam", "--lr", "2e-3", "--schedule", "cosine",
         "--backend", b.name, "--seed", str(a.seed), "--log-dir", os.path.join(a.out, "logs"),
         "--checkpoint-dir", os.path.join(a.out, "checkpoints"), "--force"])  # a re-run: new run
    res = cmd_train(targs, out=out)

    print(f"   ({time.perf_counter() - t0:.1f} s)", file=out)
    t1 = time.perf_counter()
    print("\n2/4 profiling one training step (batch 256)", file=out, flush=True)
    rep, *_ = profile_mlp("digits", [128, 128], "relu", 256, "adam", 2e-3, a.seed, 3, 20)
    print(rep.table(), file=out)
    with open(os.path.join(a.out, "profile.json"), "w") as f:
        json.dump(_clean(rep.to_dict()), f, indent=1)

    print(f"   ({time.perf_counter() - t1:.1f} s)", file=out)
    t1 = time.perf_counter()
    claims = None
    if not a.no_claims:
        print("\n3/4 re-measuring the chapter's claims", file=out, flush=True)
        fp = fingerprint(b)
        claims = check_claims(b, size=a.size)
        fp = finish(fp)
        print(format_claims(claims, fingerprint=fp), file=out, end="")
        with open(os.path.join(a.out, "claims.json"), "w") as f:
            f.write(claims_json(claims, fingerprint=fp))
    else:
        print("\n3/4 claims skipped (--no-claims)", file=out)

    print(f"   ({time.perf_counter() - t1:.1f} s)", file=out)
    t1 = time.perf_counter()
    print("\n4/4 writing the report", file=out, flush=True)
    path = build_report(a.out, measure=True, backend=b, seed=a.seed,
                        size="tiny" if a.size == "tiny" else "quick")
    print(f"   ({time.perf_counter() - t1:.1f} s)", file=out)
    final = res.final
    print(f"\ndone in {time.perf_counter() - t0:.1f} s: digits val_acc "
          f"{final.get('val_acc', float('nan')):.3f} after {res.step} steps\n"
          f"report: {os.path.abspath(path)}", file=out)
    if b.name == "cpu":     # the first run's JIT compile cost, or that the cache served it
        from .backend import jit
        print(jit.summary(), file=out)
    dp.set_backend(b.name)
    return path


def cmd_doctor(a, out=None):
    from . import doctor
    return doctor.main(full=a.full, as_json=a.json, out=out)


COMMANDS = {"primer": cmd_primer, "train": cmd_train, "profile": cmd_profile,
            "estimate": cmd_estimate, "claims": cmd_claims, "report": cmd_report,
            "bench": cmd_bench, "doctor": cmd_doctor}


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    prog = f"dlprimer {a.command}"
    try:
        _apply_threads(a)
        rc = COMMANDS[a.command](a)
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a training run says at which step and what it saved
        print(f"{prog}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; DLPRIMER_DEBUG=1 shows the traceback
        if os.environ.get("DLPRIMER_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
