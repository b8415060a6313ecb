"""benchmarks/test_cuda.py skips without a GPU; here its body is compiled and its
benchmarks checked to cover every target of issue 17, so it cannot rot unseen."""
import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "test_cuda.py"
TARGETS = {
    "test_fused_elementwise_vs_copy": ("0.90", "relu", "gelu", "silu"),
    "test_adam_arena_vs_bound_and_torch": ("0.85", "time_vs_torch_fused", "1.0"),
    "test_bias_gelu_vs_separate_cupy_ops": ("3.0",),
    "test_mlp_step_vs_torch_eager": ("1.1",),
    "test_cuda_graph_step_vs_eager": ("2.0", "make_graphed_step"),
    "test_peak_memory_vs_estimate": ("0.9", "1.1", "dp.estimate"),
}


def test_cuda_benchmarks_compile_and_cover_every_target():
    source = BENCH.read_text()
    tree = ast.parse(source)
    compile(tree, str(BENCH), "exec")
    lines = source.splitlines()
    funcs = {n.name: "\n".join(lines[min([n.lineno] + [d.lineno for d in n.decorator_list]) - 1:
                                     n.end_lineno])
             for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name, needles in TARGETS.items():
        assert name in funcs, f"{name} is missing from {BENCH.name}"
        for needle in needles:
            assert needle in funcs[name], (name, needle)
