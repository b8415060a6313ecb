"""dlprimer: a deep-learning framework that measures the systems side of training.

``import dlprimer as dp``; see API.md for the contract.
"""
from __future__ import annotations

from . import _dtype
from ._dtype import bfloat16, bool_, float16, float32, float64, int8, int16, int32, int64, uint8
from .autograd import Function, detect_anomaly, enable_grad, is_grad_enabled, no_grad
from .backend import cuda_available, get_backend, set_backend, use_backend
from ._moved import alias_moved_modules
from .backend.checks import check_deferred, eager_checks, set_eager_checks
from .tensor import (Tensor, arange, empty, from_dlpack, from_numpy, full, manual_seed, ones,
                     ones_like, rand, randn, tensor, zeros, zeros_like)
from . import ops  # installs the Tensor operators
from .ops import (abs, broadcast_to, clip, concat, exp, log, matmul, maximum, mean, minimum,
                  relu, reshape, sigmoid, sqrt, stack, sum, tanh, transpose, where)
from .gradcheck import GradcheckError, gradcheck
# -- optim --
from . import optim
# -- end optim --
from . import cuda  # noqa: E402  (dp.cuda.CUDAGraph, dp.cuda.graph: CUDA graphs)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "empty", "full", "zeros_like", "ones_like", "randn",
    "rand", "arange", "from_numpy", "from_dlpack", "manual_seed",
    "set_backend", "get_backend", "use_backend", "cuda_available",
    "check_deferred", "eager_checks", "set_eager_checks", "cuda",
    "Function", "no_grad", "enable_grad", "is_grad_enabled", "detect_anomaly",
    "gradcheck", "GradcheckError",
    "matmul", "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "concat", "stack", "where",
    "maximum", "minimum", "clip", "reshape", "transpose", "broadcast_to", "sum", "mean",
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_",
]

# -- training checkpoints (train) --
from .train.checkpoints import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
__all__ += ["save_checkpoint", "load_checkpoint", "CheckpointError"]
# old module paths (dlprimer.ckpt, .utils, .unfused), before any module imports them
ckpt, utils, unfused = alias_moved_modules()

# -- measuring: profiler, gradient checkpointing, estimator, fusion switch (measure) --
from . import profiler  # noqa: E402
from .checkpoint import checkpoint, checkpoint_sequential  # noqa: E402
from .profiler.estimate import estimate  # noqa: E402
from .backend.unfused import fusion, fusion_enabled  # noqa: E402

__all__ += ["profiler", "checkpoint", "checkpoint_sequential", "estimate", "fusion", "fusion_enabled"]

# -- nn: layers, losses and model files (nn) --
from . import nn  # noqa: E402
from .io import load, save  # noqa: E402

__all__ += ["nn", "save", "load"]

# -- mixed precision (layers) --
from . import amp  # noqa: E402
from .amp import autocast  # noqa: E402

__all__ += ["amp", "autocast"]
# -- threads and measurement records (measure) --
from . import measure  # noqa: E402
from .measure import get_num_threads, set_num_threads  # noqa: E402

__all__ += ["measure", "set_num_threads", "get_num_threads"]
