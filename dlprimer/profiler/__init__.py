"""Measuring a training step: time, FLOPs and memory, per layer and in total.

``profile`` (timing, FLOPs, forward and backward ops with bytes and the roofline,
memory split and timeline, ``trace=`` a Chrome trace), ``checkpoint_tradeoff``
(activation memory against step time per checkpoint segment count),
``compare_fusion`` (fused against unfused ops, same run), ``estimate`` (the
analytic figures). See each function's docstring.
"""
from .amp_memory import format_precision_memory, memory_by_precision
from .counters import BackwardTimer, FlopCounter, LayerScope, SavedTracker
from .estimate import Estimate, bytes_per_param, bytes_per_param_table, estimate, state_arrays
from .fusion import FusionComparison, compare_fusion
from .layer_types import LAYER_TYPES, layer_type
from .memory import measure_step_memory
from .ops import ForwardTimer, op_rows
from .peaks import machine_peaks, measure_peaks
from .roofline import place
from .timeline import StepRecorder
from .trace import chrome_trace, write_trace
from .traffic import node_bytes, update_bytes
from .profile import profile
from .report import Report
from .tradeoff import Tradeoff, checkpoint_tradeoff

__all__ = ["profile", "Report", "checkpoint_tradeoff", "Tradeoff", "compare_fusion",
           "FusionComparison", "estimate", "Estimate", "bytes_per_param", "bytes_per_param_table",
           "state_arrays", "memory_by_precision", "format_precision_memory", "layer_type",
           "LAYER_TYPES", "FlopCounter", "BackwardTimer", "SavedTracker", "LayerScope", "measure_step_memory",
           "ForwardTimer", "op_rows", "machine_peaks", "measure_peaks", "place", "StepRecorder",
           "chrome_trace", "write_trace", "node_bytes", "update_bytes"]
