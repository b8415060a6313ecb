"""The analytic estimator: parameters, FLOPs and bytes of a training step, on paper.

Bytes per parameter (the convention used throughout):

* full precision (``dtype`` float32 or float64, itemsize s): weights s + gradients s
  + optimizer state k·s, where k is the number of state arrays per parameter
  (SGD 0, SGD with momentum 1, Adam/AdamW/LAMB 2 moments, LARS 1). In float32 that is
  SGD 8, momentum 12, Adam 16 bytes per parameter.
* mixed precision (``dtype`` float16 or bfloat16, ``master_weights=True``, the usual
  recipe): half weights 2 + half gradients 2 + a float32 master copy 4 + float32
  state 4·k: SGD 8, momentum 12, Adam 16 (the ZeRO paper's 2 + 2 + 12).
* pure half precision (``master_weights=False``): 2 + 2 + 2·k, Adam 8.

The chapter's rule of thumb, "roughly 12 bytes per parameter with Adam (4 for
weights, 4 for gradient, 4 for optimizer state)", counts one state array; Adam keeps
two (the first moment m and the second moment v), so in float32 it is 16 bytes:
the chapter's 1-billion-parameter model needs 16 GB, not 12 GB, before activations.

FLOPs follow the Functions' own counts: a Linear layer is 2·B·in·out forward (its
matmul) + B·out (bias); backward 2·B·in·out for dW, 2·B·in·out more for dX unless
the layer's input needs no gradient (the first layer), + B·out for the bias.

Activation bytes count the distinct buffers the graph keeps alive after forward,
following what dlprimer's Functions save: a Linear keeps its input (for dW; the
batch itself for the first layer, counted as inputs), ReLU/Sigmoid/Tanh keep their
output (the same buffer the next Linear keeps), GELU/SiLU/ELU/LeakyReLU keep their
input, Dropout keeps nothing (its mask is regenerated from the RNG key) but makes a
new buffer, and the loss keeps one (B, C) array (softmax probabilities).
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from .report import fmt_bytes, fmt_flops

STATE_ARRAYS = {"none": 0, "sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2,
                "lamb": 2, "lars": 1}
CHAPTER_ADAM_BYTES_PER_PARAM = 12

SAVES_OUTPUT = {"relu", "sigmoid", "tanh"}
SAVES_INPUT = {"gelu", "silu", "elu", "leakyrelu", "leaky_relu"}
ACT_FLOPS = {"relu": (1, 1), "leakyrelu": (1, 1), "leaky_relu": (1, 1), "sigmoid": (4, 3),
             "tanh": (4, 3), "gelu": (8, 12), "silu": (5, 6), "elu": (3, 2)}
"""(forward, backward) FLOPs per element assumed for activations (small beside matmuls)."""

HALF = ("float16", "bfloat16")


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("numpy.", "").replace("<class '", "").replace("'>", "")
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"estimate: dtype must be float16, bfloat16, float32 or float64, got {dtype!r}")
    return name


def _itemsize(name) -> int:
    return 2 if name in HALF else int(np.dtype(name).itemsize)


def state_arrays(optimizer) -> int:
    """How many parameter-sized state arrays an optimizer keeps.

    ``optimizer``: a name ("sgd", "momentum", "adam", "adamw", "lamb", "lars",
    "none"), an optimizer class or instance. An optimizer that states its own figure
    (an instance's ``state_bytes_per_param``: bytes per parameter in its own dtype,
    as dlprimer.optim reports it) is taken at its word.
    """
    if optimizer is None:
        return 0
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in STATE_ARRAYS:
            raise ValueError(f"estimate: unknown optimizer {optimizer!r}; known: {', '.join(STATE_ARRAYS)}")
        return STATE_ARRAYS[key]
    if not isinstance(optimizer, type):
        declared = getattr(optimizer, "state_bytes_per_param", None)
        if declared is not None:
            v = declared() if callable(declared) else declared
            arenas = getattr(optimizer, "arenas", None) or []
            item = int(arenas[0].dtype.itemsize) if arenas else 4
            return int(round(float(v) / item))
    name = (optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__).lower()
    if name == "sgd":
        groups = getattr(optimizer, "param_groups", None) or [{}]
        return 1 if any(g.get("momentum", 0) for g in groups) else 0
    if name in STATE_ARRAYS:
        return STATE_ARRAYS[name]
    raise ValueError(f"estimate: cannot tell how much state optimizer {name!r} keeps; pass a name "
                     f"({', '.join(STATE_ARRAYS)})")


def bytes_per_param(optimizer="adam", dtype="float32", master_weights=True) -> int:
    """Bytes of weights + gradients + optimizer state (+ master copy) per parameter."""
    k = state_arrays(optimizer)
    name = _dtype_name(dtype)
    s = _itemsize(name)
    if name in HALF and master_weights:
        return s + s + 4 + 4 * k
    return s + s + s * k


def bytes_per_param_table() -> dict:
    """{optimizer: {precision: bytes}} for the common cases, for the report."""
    out = {}
    for opt in ("sgd", "momentum", "adam"):
        out[opt] = {"float32": bytes_per_param(opt, "float32"),
                    "mixed fp16/bf16 + fp32 master": bytes_per_param(opt, "float16"),
                    "pure bf16": bytes_per_param(opt, "bfloat16", master_weights=False),
                    "float64": bytes_per_param(opt, "float64")}
    return out


@dataclass
class Estimate:
    """Analytic cost of one training step (see the module docstring for conventions)."""

    batch: int
    dtype: str
    optimizer: str
    params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    input_bytes: int
    activation_bytes: int
    fwd_flops: int
    bwd_flops: int
    bytes_per_param: int
    layers: list = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Weights + gradients + optimizer state + inputs + saved activations."""
        return (self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.input_bytes
                + self.activation_bytes)

    @property
    def flop_ratio(self):
        return self.bwd_flops / self.fwd_flops if self.fwd_flops else None

    @property
    def chapter_bytes(self) -> int:
        """What the chapter's 12 bytes/param (Adam) rule would predict for the model state."""
        return CHAPTER_ADAM_BYTES_PER_PARAM * self.params

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_bytes=self.total_bytes, flop_ratio=self.flop_ratio,
                 bytes_per_param_table=bytes_per_param_table(),
                 chapter_adam_bytes_per_param=CHAPTER_ADAM_BYTES_PER_PARAM,
                 adam_float32_bytes_per_param=bytes_per_param("adam", "float32"))
        return d

    def table(self) -> str:
        lines = [f"dlprimer estimate  batch={self.batch}  dtype={self.dtype}  optimizer={self.optimizer}",
                 f"  parameters            {self.params:,}",
                 f"  forward FLOPs         {fmt_flops(self.fwd_flops)}",
                 f"  backward FLOPs        {fmt_flops(self.bwd_flops)}  "
                 f"(bwd/fwd = {self.flop_ratio:.2f})" if self.fwd_flops else "",
                 f"  weights               {fmt_bytes(self.param_bytes)}",
                 f"  gradients             {fmt_bytes(self.grad_bytes)}",
                 f"  optimizer state       {fmt_bytes(self.optimizer_bytes)}",
                 f"  inputs                {fmt_bytes(self.input_bytes)}",
                 f"  saved activations     {fmt_bytes(self.activation_bytes)}",
                 f"  total                 {fmt_bytes(self.total_bytes)}",
                 f"  bytes/param (model state) {self.bytes_per_param}",
                 f"  note: the chapter's rule, {CHAPTER_ADAM_BYTES_PER_PARAM} bytes/param with Adam, "
                 f"counts one optimizer state; Adam keeps two moments, so float32 Adam is "
                 f"{bytes_per_param('adam', 'float32')} bytes/param"
                 f" ({fmt_bytes(self.chapter_bytes)} vs {fmt_bytes(16 * self.params)} here)."]
        return "\n".join(x for x in lines if x)

    def __str__(self):
        return self.table()


# -- reading a model into a list of layer specs ------------------------------------------
def _layers_from_sizes(sizes, activation, bias):
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                 for s in sizes):
        raise ValueError(f"estimate: layer sizes must be at least two positive ints, got {sizes!r}")
    specs = []
    for i in range(len(sizes) - 1):
        specs.append(("linear", int(sizes[i]), int(sizes[i + 1]), bias))
        if i < len(sizes) - 2 and activation:
            specs.append(("act", activation.lower()))
    return specs, int(sizes[0])


def _leaf_modules(model):
    if callable(getattr(model, "modules", None)):
        mods = list(model.modules())
        return [m for m in mods if not list(getattr(m, "children", lambda: [])())]
    raise TypeError(f"estimate: expects a Module or a list of layer sizes, got {type(model).__name__}")


def _layers_from_model(model):
    specs, first_in = [], None
    for m in _leaf_modules(model):
        cls = type(m).__name__.lower()
        if hasattr(m, "in_features") and hasattr(m, "out_features"):
            b = getattr(m, "bias", None) is not None
            specs.append(("linear", int(m.in_features), int(m.out_features), b))
            first_in = first_in or int(m.in_features)
        elif cls in SAVES_OUTPUT or cls in SAVES_INPUT:
            specs.append(("act", cls))
        elif cls == "dropout":
            p = float(getattr(m, "p", 0.0))
            if p > 0 and getattr(m, "training", True):
                specs.append(("dropout",))
        elif cls == "identity":
            continue
        else:
            n = sum(int(np.prod(p.shape)) for p in m.parameters()) if callable(getattr(m, "parameters", None)) else 0
            raise ValueError(f"estimate: no analytic model for layer {type(m).__name__} "
                             f"({n} parameters); it knows Linear, activations, Dropout and Identity")
    if first_in is None:
        raise ValueError("estimate: the model has no Linear layer")
    return specs, first_in


def _batch_size(batch) -> int:
    shape = getattr(batch, "shape", batch)
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        b = int(shape)
    elif isinstance(shape, (tuple, list)) and shape and all(isinstance(s, numbers.Integral) for s in shape):
        b = 1
        for s in shape[:-1]:
            b *= int(s)
    else:
        raise ValueError(f"estimate: batch must be a batch size, an input shape or a Tensor, got {batch!r}")
    if b < 1:
        raise ValueError(f"estimate: batch size must be positive, got {b}")
    return b


def estimate(model_or_sizes, batch, optimizer="adam", dtype="float32", activation="relu",
             bias=True, master_weights=True, loss_saves=1) -> Estimate:
    """Analytic parameters, FLOPs and bytes of one training step.

    ``model_or_sizes``: a Module (Linear layers, activations, Dropout; a chain of
    Conv2d / pooling / Flatten layers before them, such as ``nn.SmallCNN``, with
    ``batch`` an input shape (N, C, H, W); or an ``nn.GPT`` with ``batch`` the token
    shape (B, T), see :mod:`dlprimer.profiler.estimate_layers`) or MLP layer
    sizes such as ``[784, 256, 10]`` (with ``activation`` between the layers, and
    ``bias``). ``batch``: batch size, input shape or input Tensor. ``optimizer``: a
    name, class or instance (see :func:`state_arrays`). ``dtype``: the training
    precision (half dtypes mean mixed precision with float32 master weights unless
    ``master_weights=False``). ``loss_saves``: (B, C) arrays the loss keeps (1:
    softmax probabilities; 0 to leave the loss out).
    """
    if not isinstance(model_or_sizes, (list, tuple)) and callable(getattr(model_or_sizes, "modules", None)):
        from . import estimate_layers
        layer_kind = estimate_layers.kind(model_or_sizes)
        if layer_kind is not None:
            return _estimate_layers(model_or_sizes, layer_kind, batch, optimizer, dtype, master_weights)
    name = _dtype_name(dtype)
    s = _itemsize(name)
    if isinstance(model_or_sizes, (list, tuple)):
        specs, d_in = _layers_from_sizes(model_or_sizes, activation, bias)
        params = sum(i * o + (o if b else 0) for _, i, o, b in (x for x in specs if x[0] == "linear"))
    else:
        specs, d_in = _layers_from_model(model_or_sizes)
        params = sum(int(np.prod(p.shape)) for p in model_or_sizes.parameters())
    B = _batch_size(batch)
    k = state_arrays(optimizer)
    opt_name = optimizer if isinstance(optimizer, str) else (
        optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__)

    fwd = bwd = 0
    saved = 0
    width = d_in
    cur_saved, cur_is_input = True, True   # the batch: already counted as inputs
    input_needs_grad = False
    rows = []
    for sp in specs:
        kind = sp[0]
        f = b = act_bytes = 0
        if kind == "linear":
            _, i, o, has_b = sp
            if i != width:
                raise ValueError(f"estimate: a Linear expecting {i} features follows one giving {width}")
            f = 2 * B * i * o + (B * o if has_b else 0)
            b = 2 * B * i * o * (2 if input_needs_grad else 1) + (B * o if has_b else 0)
            if not cur_saved:
                act_bytes += B * width * s
            cur_saved, cur_is_input, width = False, False, o
            input_needs_grad = True
            label = f"Linear({i}, {o})"
        elif kind == "act":
            fa, ba = ACT_FLOPS.get(sp[1], (1, 1))
            f, b = fa * B * width, ba * B * width
            if sp[1] in SAVES_INPUT and not cur_saved:
                act_bytes += B * width * s
            cur_saved = sp[1] in SAVES_OUTPUT
            if cur_saved:
                act_bytes += B * width * s
            label = sp[1]
        else:
            f, b = B * width, B * width
            cur_saved = False
            label = "dropout"
        fwd, bwd, saved = fwd + f, bwd + b, saved + act_bytes
        rows.append({"layer": label, "fwd_flops": f, "bwd_flops": b, "activation_bytes": act_bytes})
    loss_bytes = loss_saves * B * width * s
    saved += loss_bytes
    rows.append({"layer": "loss", "fwd_flops": 0, "bwd_flops": 0, "activation_bytes": loss_bytes})

    master = params * 4 if (name in HALF and master_weights) else 0
    state_item = 4 if (name in HALF and master_weights) else s
    return Estimate(batch=B, dtype=name, optimizer=str(opt_name), params=params,
                    param_bytes=params * s, grad_bytes=params * s,
                    optimizer_bytes=master + params * k * state_item,
                    input_bytes=B * d_in * s, activation_bytes=saved, fwd_flops=fwd, bwd_flops=bwd,
                    bytes_per_param=bytes_per_param(optimizer, name, master_weights), layers=rows)


def _estimate_layers(model, layer_kind, batch, optimizer, dtype, master_weights) -> Estimate:
    """:func:`estimate` for the image models and the GPT (costs in :mod:`.estimate_layers`)."""
    from . import estimate_layers
    shape = tuple(getattr(batch, "shape", batch)) if not isinstance(batch, numbers.Integral) else None
    if not shape or not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
        raise ValueError(f"estimate: a {layer_kind} model needs the input's shape (or the input), "
                         f"got {batch!r}")
    if layer_kind == "gpt" and str(getattr(dtype, "name", dtype)).startswith(("int", "uint")):
        dtype = "float32"      # the token ids' dtype says nothing about the training precision
    name = _dtype_name(dtype)
    s = _itemsize(name)
    half = name in HALF
    fn = estimate_layers.gpt_rows if layer_kind == "gpt" else estimate_layers.image_rows
    rows = fn(model, shape, s, half)
    params = sum(int(np.prod(p.shape)) for p in model.parameters())
    k = state_arrays(optimizer)
    opt_name = optimizer if isinstance(optimizer, str) else (
        optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__)
    state_item = 4 if (half and master_weights) else s
    wbytes = 4 if (half and master_weights) else s     # autocast: the float32 parameters are the master copy
    n_in = int(np.prod(shape))
    return Estimate(batch=int(shape[0]), dtype=name, optimizer=str(opt_name), params=params,
                    param_bytes=params * wbytes, grad_bytes=params * wbytes,
                    optimizer_bytes=params * k * state_item,
                    input_bytes=n_in * (8 if layer_kind == "gpt" else s),
                    activation_bytes=sum(r["activation_bytes"] for r in rows),
                    fwd_flops=sum(r["fwd_flops"] for r in rows), bwd_flops=sum(r["bwd_flops"] for r in rows),
                    bytes_per_param=(4 + 4 + 4 * k) if half else bytes_per_param(optimizer, name),
                    layers=rows)
