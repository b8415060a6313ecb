"""``dlprimer bench``: run the benchmark suite and print one table of ratios.

The suite (``benchmarks/``, pytest-benchmark) puts each workload in one group and
runs dlprimer and its peers in that group, in one process, on the same data: the
hand-written NumPy code (the floor for a Python framework on NumPy), PyTorch
(when installed), a plain memory copy of the same bytes (the bandwidth bound), and
on a GPU a device copy and PyTorch CUDA. Each entry's ``extra_info`` names its
``workload`` and ``peer`` (see ``benchmarks/conftest.py``).

This module runs pytest with ``--benchmark-json`` and turns that JSON into rows:

* a *ratio* row per (workload, peer): the median of per-round ratios of dlprimer's
  time to the peer's, the two timed in turn, with its 95% interval (below 1:
  dlprimer is faster; groups without round-robin samples fall back to best times);
  a bound's ratio says how far from the hardware limit dlprimer is;
* a *figure* row per figure a benchmark reports itself (ns/param, us/op, bytes,
  backward/forward ratios), with the target where the project has one.

Targets (issue 9 and the issues whose benchmarks live here) are in :data:`TARGETS`
and :data:`FIGURE_TARGETS`; each row says ``met`` or ``NOT met``, or ``unclear`` when
its interval straddles the target. The table's first line is the environment
fingerprint (:mod:`dlprimer.measure.fingerprint`).

    dlprimer bench                      # whole suite, JSON in bench-results.json
    dlprimer bench --group mlp --quick  # one group at small sizes
    python -m dlprimer.bench --format bench-results.json   # re-print a saved run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

GROUPS = {
    "mlp": ["test_mlp.py"],
    "fwdbwd": ["test_mlp.py::test_forward_backward_ratio"],
    "autograd": ["test_autograd.py"],
    "adam": ["test_adam.py"],
    "activations": ["test_activations.py"],
    "memory": ["test_memory.py"],
    "checkpoint": ["test_checkpoint.py"],
    "ratios": ["test_ratios.py"],
    "cuda": ["test_cuda.py"],
    "distributed": ["test_distributed.py"],
    "jitcompile": ["test_jit_compile.py"],
}
"""``--group`` names and the benchmark files (or test ids) each runs."""

TARGETS = {
    ("mlp ", "numpy"): 1.1,
    ("mlp ", "torch"): 1.5,
}
"""(workload prefix, peer) -> the largest dlprimer/peer time ratio that meets the target."""

FIGURE_TARGETS = {
    "adam ns/param": 2.5,
    "autograd us/op": 10.0,
    "checkpoint saved-activation ratio": 0.35,
    "checkpoint step-time ratio": 1.35,
    "jit first run: cold - cached wall s": 5.0,
}
"""Figure label -> largest value that meets the target."""


# -- rows from pytest-benchmark JSON entries ---------------------------------------------
def _best(entry):
    """What an entry's ratio is taken on: the figure named by ``extra_info["metric"]``
    when the benchmark compares something other than time (bytes), else its best
    seconds: the group's round-robin best when it measured one
    (``extra_info["rr_best_s"]``), else pytest-benchmark's minimum."""
    info = entry.get("extra_info") or {}
    if info.get("metric"):
        return info.get(info["metric"])
    if info.get("rr_best_s") is not None:
        return info["rr_best_s"]
    st = entry.get("stats") or {}
    return st.get("min")


def _figures(entry):
    """Figures a benchmark reports in extra_info: its own ``figures`` list
    ([label, value, unit]), plus the known keys of the suite's other files."""
    info = entry.get("extra_info") or {}
    out = [tuple(f) for f in info.get("figures", [])]
    if "arena_adam_ns_per_param" in info:  # test_adam.py
        out.append(("adam ns/param", info["arena_adam_ns_per_param"], "ns"))
        out.append(("adam optimizer.step ns/param", info.get("optimizer_step_ns_per_param"), "ns"))
        out.append(("adam naive-NumPy ns/param", info.get("naive_numpy_adam_ns_per_param"), "ns"))
        out.append(("adam copy-bound ns/param", info.get("copy_same_bytes_ns_per_param"), "ns"))
    if "saved_ratio" in info and "segments" in info:  # test_checkpoint.py
        out.append(("checkpoint saved-activation ratio", info["saved_ratio"], "x"))
        out.append(("checkpoint step-time ratio", info["time_ratio"], "x"))
    if "time_ratio" in info and "mlp" in info:  # test_ratios.py
        out.append((f"bwd/fwd time {info['mlp']} b{info.get('batch')}", info["time_ratio"], "x"))
        out.append((f"bwd/fwd FLOPs {info['mlp']} b{info.get('batch')}", info["flop_ratio"], "x"))
    if "fused_over_copy" in info:  # test_activations.py (fused entry)
        name = entry.get("group", "activation")
        out.append((f"{name}: fused/copy", info["fused_over_copy"], "x"))
        if "naive_over_fused" in info:
            out.append((f"{name}: naive/fused", info["naive_over_fused"], "x"))
    return [f for f in out if f[1] is not None]


def _peer_of(entry):
    info = entry.get("extra_info") or {}
    if "peer" in info:
        return info["peer"]
    params = entry.get("params") or {}
    peer = params.get("peer")  # test_activations.py names its peers copy/naive/fused
    return {"fused": "dlprimer", "naive": "numpy", "unfused": "dlprimer-unfused"}.get(peer, peer)


def _paired(dl_entry, peer_entry, key="rr_samples_s"):
    """The record of per-round ratios dlprimer/peer when both entries carry round-robin
    samples of the same rounds (``extra_info[key]``: wall seconds, or with
    ``rr_cpu_samples_s`` process CPU seconds), else None."""
    a = (dl_entry.get("extra_info") or {}).get(key)
    b = (peer_entry.get("extra_info") or {}).get(key)
    if not a or not b or len(a) != len(b) or min(b) <= 0:
        return None
    from .measure.stats import ratio
    return ratio(a, b).to_dict()


def _ratio_row(group, peer, dl_entry, peer_entry, unit):
    target = next((v for (pre, p), v in TARGETS.items()
                   if p == peer and str(group).startswith(pre)), None)
    rec = _paired(dl_entry, peer_entry) if unit == "s" else None
    if rec is not None:
        dl_s = dl_entry["extra_info"].get("rr_median_s")
        peer_s = peer_entry["extra_info"].get("rr_median_s")
        cpu = _paired(dl_entry, peer_entry, "rr_cpu_samples_s")
        return dict(kind="ratio", workload=group, peer=peer, dlprimer_s=dl_s, peer_s=peer_s,
                    value=rec["median"], ci95=rec["ci95"], n=rec["n"], method="paired median",
                    cpu_value=cpu["median"] if cpu else None, cpu_ci95=cpu["ci95"] if cpu else None,
                    target=target, unit=unit)
    dl, t = _best(dl_entry), _best(peer_entry)
    return dict(kind="ratio", workload=group, peer=peer, dlprimer_s=dl, peer_s=t, value=dl / t,
                ci95=None, n=None, method="best", target=target, unit=unit)


def rows_from_benchmarks(entries):
    """Table rows (dicts) from pytest-benchmark entries (``benchmarks`` of its JSON).
    A ratio row is the median of per-round ratios with its 95% interval when both
    peers were timed in turn (round robin), else the ratio of best times."""
    by_group: dict = {}
    for e in entries:
        by_group.setdefault(e.get("group") or e.get("name"), []).append(e)
    rows = []
    for group, es in by_group.items():
        peers = {}
        unit = "s"
        for e in es:
            p = _peer_of(e)
            if p is not None and _best(e) is not None:
                peers[p] = e
                if (e.get("extra_info") or {}).get("metric"):
                    unit = "B"
        dl = peers.get("dlprimer")
        if dl is not None:
            for peer, e in peers.items():
                if peer == "dlprimer" or not _best(e):
                    continue
                rows.append(_ratio_row(group, peer, dl, e, unit))
        for e in es:
            for label, value, unit_ in _figures(e):
                rows.append(dict(kind="figure", workload=label, peer=unit_, value=float(value),
                                 target=FIGURE_TARGETS.get(label)))
    return rows


def _status(row):
    """``met`` / ``NOT met`` against the target; with an interval, ``unclear`` when the
    interval straddles the target (this run cannot tell)."""
    t = row.get("target")
    if t is None:
        return ""
    ci = row.get("ci95")
    if ci:
        return "met" if ci[1] <= t else ("NOT met" if ci[0] > t else "unclear")
    return "met" if row["value"] <= t else "NOT met"


def _fmt_time(s, unit="s"):
    if s is None:
        return ""
    if unit == "B":
        return f"{s / 2 ** 20:.1f} MiB"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def format_table(rows, machine=None) -> str:
    """The ratio table as text (Markdown-compatible)."""
    lines = []
    if machine:
        lines.append(f"machine: {machine}")
    ratio_rows = [r for r in rows if r["kind"] == "ratio"]
    fig_rows = [r for r in rows if r["kind"] == "figure"]
    if ratio_rows:
        w = max([len("workload")] + [len(str(r["workload"])) for r in ratio_rows])
        lines.append(f"| {'workload':<{w}} | {'peer':<16} | {'dlprimer':>10} | {'peer':>10} | "
                     f"{'dlprimer/peer':>13} | {'95% interval':>13} | {'cpu-time ratio':>20} | "
                     f"{'target':>6} | {'':7} |")
        lines.append(f"|{'-' * (w + 2)}|{'-' * 18}|{'-' * 12}|{'-' * 12}|{'-' * 15}|{'-' * 15}|"
                     f"{'-' * 22}|{'-' * 8}|{'-' * 9}|")
        for r in ratio_rows:
            tgt = f"<={r['target']:g}" if r["target"] is not None else ""
            ci, cci = r.get("ci95"), r.get("cpu_ci95")
            span = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "(best)"
            cpu = f"{r['cpu_value']:.2f}x [{cci[0]:.2f}-{cci[1]:.2f}]" if cci else ""
            lines.append(f"| {r['workload']:<{w}} | {r['peer']:<16} | {_fmt_time(r['dlprimer_s'], r.get('unit', 's')):>10} | "
                         f"{_fmt_time(r['peer_s'], r.get('unit', 's')):>10} | {r['value']:>12.2f}x | {span:>13} | "
                         f"{cpu:>20} | {tgt:>6} | {_status(r):7} |")
        lines.append("(dlprimer/peer: median of per-round wall-time ratios, peers timed in turn; "
                     "cpu-time ratio: the same for process CPU time, which waiting for a busy core "
                     "does not inflate; times: medians; '(best)': ratio of best times where no "
                     "paired samples exist)")
    if fig_rows:
        lines.append("")
        w = max([len("figure")] + [len(str(r["workload"])) for r in fig_rows])
        lines.append(f"| {'figure':<{w}} | {'value':>12} | {'target':>7} | {'':7} |")
        lines.append(f"|{'-' * (w + 2)}|{'-' * 14}|{'-' * 9}|{'-' * 9}|")
        for r in fig_rows:
            unit = r["peer"]
            val = f"{r['value']:.3g} {unit}" if unit != "x" else f"{r['value']:.3f}x"
            tgt = f"<={r['target']:g}" if r["target"] is not None else ""
            lines.append(f"| {r['workload']:<{w}} | {val:>12} | {tgt:>7} | {_status(r):7} |")
    return "\n".join(lines)


def _machine(data):
    mi = data.get("machine_info") or {}
    extra = mi.get("dlprimer_bench") or {}
    if extra.get("fingerprint"):
        from .measure import describe
        return describe(extra["fingerprint"]) + ("; QUICK sizes" if extra.get("quick") else "")
    parts = [extra.get("cpu_model") or mi.get("cpu", {}).get("brand_raw") or mi.get("machine", "")]
    if extra.get("cpu_count"):
        parts.append(f"{extra['cpu_count']} CPUs")
    if extra.get("blas_threads"):
        parts.append(f"{extra['blas_threads']} BLAS thread(s)")
    if extra.get("torch"):
        parts.append(f"torch {extra['torch']} ({extra.get('torch_threads')} thread(s))")
    if mi.get("python_version"):
        parts.append(f"Python {mi['python_version']}")
    if extra.get("quick"):
        parts.append("QUICK sizes")
    return ", ".join(p for p in parts if p)


TORCH_SKIPPED = ("PyTorch column skipped: torch is not installed in this environment, so "
                 "no row compares with PyTorch (pip install torch; the CPU-only wheel: "
                 "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def format_json(path) -> str:
    """The table of a saved ``--benchmark-json`` file; says so when the run had no
    PyTorch (its rows are missing, not zero)."""
    with open(path) as f:
        data = json.load(f)
    table = format_table(rows_from_benchmarks(data.get("benchmarks", [])), machine=_machine(data))
    extra = (data.get("machine_info") or {}).get("dlprimer_bench") or {}
    return table if "torch" in extra else table + "\n" + TORCH_SKIPPED


# -- running the suite ----------------------------------------------------------------------
def find_benchmarks(roots=None) -> str:
    """The ``benchmarks/`` directory of the source checkout: next to the package, or
    in the current directory (or in one of ``roots``)."""
    if roots is None:
        roots = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd())
    for root in roots:
        if root and os.path.isfile(os.path.join(root, "benchmarks", "conftest.py")):
            return os.path.join(root, "benchmarks")
    raise FileNotFoundError("no benchmarks/ directory found next to the dlprimer package or "
                            "in the current directory (dlprimer bench runs from a source checkout)")


def _threads_arg(s):
    if s.strip().lower() == "auto":
        return "auto"
    from .measure import parse_threads
    try:
        return parse_threads(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(
        prog="dlprimer bench", description="Run the benchmark suite (pytest-benchmark) and print "
        "dlprimer's time ratios against each peer and bound; the raw results go to JSON.")
    p.add_argument("--group", action="append", choices=sorted(GROUPS),
                   help="run only this group (repeatable) [default: all]")
    p.add_argument("--quick", action="store_true", help="small sizes (DLPRIMER_BENCH_QUICK=1)")
    p.add_argument("--json", default="bench-results.json",
                   help="where pytest-benchmark writes the raw results [default: %(default)s]")
    if parser is None:  # the dlprimer command adds --threads N|auto to every subcommand
        p.add_argument("--threads", type=_threads_arg, default=None, metavar="N|auto",
                       help="threads of every pool for the session [default: 1, or "
                            "$DLPRIMER_BENCH_THREADS]")
    p.add_argument("--format", metavar="JSON", default=None,
                   help="only print the table of a saved results file")
    p.add_argument("pytest_args", nargs="*", help="further pytest arguments (after --)")
    return p


def run(args, out=None) -> int:
    """Run (or with ``--format`` only re-print) the suite; returns the exit status."""
    out = out or sys.stdout
    if args.format:
        if not os.path.isfile(args.format):
            print(f"dlprimer bench: --format {args.format}: no such file", file=sys.stderr)
            return 2
        print(format_json(args.format), file=out)
        return 0
    try:
        bench = find_benchmarks()
    except FileNotFoundError as e:
        print(f"dlprimer bench: {e}", file=sys.stderr)
        return 2
    targets = []
    for g in args.group or []:
        targets += [os.path.join(bench, t) for t in GROUPS[g]]
    missing = [t for t in targets if not os.path.exists(t.split("::")[0])]
    if missing:
        print(f"dlprimer bench: not in this checkout: {', '.join(missing)}", file=sys.stderr)
        return 2
    env = dict(os.environ, DLPRIMER_BENCH_NO_SUMMARY="1")  # the table is printed below
    if args.quick:
        env["DLPRIMER_BENCH_QUICK"] = "1"
    threads = getattr(args, "threads", None)
    if threads is not None:
        from .measure import auto_threads
        env["DLPRIMER_BENCH_THREADS"] = str(auto_threads() if threads == "auto" else threads)
    json_path = os.path.abspath(args.json)
    cmd = [sys.executable, "-m", "pytest", *(targets or [bench]), "-q", "--benchmark-only", f"--benchmark-json={json_path}", "--benchmark-sort=name",
           *args.pytest_args]
    print("running: " + " ".join(cmd), file=out, flush=True)
    rc = subprocess.call(cmd, env=env, cwd=os.path.dirname(bench))
    if not os.path.isfile(json_path):
        print("dlprimer bench: pytest wrote no results", file=sys.stderr)
        return rc or 1
    print("", file=out)
    print(format_json(json_path), file=out)
    print(f"\nraw results: {json_path}", file=out)
    return rc


def main(argv=None) -> int:
    """Entry point for ``dlprimer bench`` (the CLI passes its remaining arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.pytest_args = list(args.pytest_args) + extra
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
