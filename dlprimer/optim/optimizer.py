"""Optimizer base: param groups, each living in one flat arena.

The chapter's rule of thumb (12 bytes per parameter for Adam: weights, gradient,
optimizer state) is a statement about memory *layout* too: if the weights,
gradients and states of a group each sit in one contiguous array, a whole
update is one fused pass over memory (one kernel launch on a GPU), a gradient
norm is one reduction, and an all-reduce is one message.

So constructing an optimizer moves every parameter of a group into its
:class:`Arena`: the values are copied into a 1-D backend array, and
``p.data`` becomes a reshaped view of it. The Parameter object that a model
holds stays the same. Gradients land in the arena too: each parameter gets a
view of the group's gradient array as its ``_grad_buffer``, and the autograd
engine copies the first gradient after ``p.grad = None`` into that view and
adds later ones in place. ``zero_grad()`` therefore only sets ``p.grad = None``
(no memset), and a parameter that received no gradient is recognised and left
alone, as in PyTorch.

Each ``step()`` re-checks the cheap invariants (``p.data`` and ``p.grad`` still
the arena's views); when a user replaced either, the new values are copied into
the arena and the views reinstalled, so nothing is silently lost.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import autograd as _autograd
from ..backend.unfused import fusion_enabled
from ..tensor import Tensor

_PLAIN = frozenset((float, int, bool, str, type(None)))  # immutable hyperparameter types
_MISSING = object()


def _hyper_snapshot(group):
    """A group's hyperparameters as a tuple of (name, value) pairs, to validate them again
    only when one changed (a scheduler's ``group["lr"] = x``); None, and so checked at
    every step, when one is not a plain immutable Python value (an array could change in
    place unseen). Immutable values let :func:`_same_hyper` compare by identity."""
    vals = []
    for k, v in group.items():
        if k == "params":
            continue
        t = type(v)
        if t is tuple:
            if not all(type(e) in _PLAIN for e in v):
                return None
        elif t not in _PLAIN:
            return None
        vals.append((k, v))
    return tuple(vals)


def _same_hyper(group, snap):
    """Whether ``group`` still holds exactly the values of ``snap`` (the same objects:
    for immutable values the same object is the same value; a new object, even an equal
    one, counts as a change and is validated again)."""
    if snap is None or len(group) != len(snap) + 1:
        return False
    get = group.get
    for k, v in snap:
        if get(k, _MISSING) is not v:
            return False
    return True


def _equal_values(old, group):
    """Whether ``group``'s values equal ``old`` (a tuple of its values at an earlier step):
    the same objects, or equal plain immutable values (a scheduler's new float equal to
    the last). Anything else (an array, a new params list) is a change, never compared
    with ``==``, whose answer for an array is not a bool."""
    if len(old) != len(group):
        return False
    for a, b in zip(old, group.values()):
        if a is b:
            continue
        t = type(b)
        if t is not type(a):
            return False
        if t is tuple:
            if not all(type(e) in _PLAIN for e in a + b):
                return False
        elif t not in _PLAIN:
            return False
        if a != b:
            return False
    return True


class NonFiniteGradientError(RuntimeError):
    """A gradient holds NaN or inf; ``step()`` refused to write it into the weights."""

    def __init__(self, message, name=None):
        super().__init__(message)
        self.name = name


def _check_number(name, value, lo=0.0, hi=None, hi_open=False, where=""):
    """ValueError unless ``lo <= value`` (and ``value < hi`` / ``<= hi``); NaN fails."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid {name}: {value!r} is not a number{where}") from None
    ok = x >= lo and (hi is None or (x < hi if hi_open else x <= hi))
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"invalid {name}: {value!r} (must be {rng}){where}")
    return x


class Arena:
    """The parameters, gradients and optimizer state of one param group, each a
    contiguous 1-D array of the group's backend and dtype.

    ``offsets[i]:offsets[i+1]`` is parameter ``i``'s slice. ``counts[i]`` is how many
    updates parameter ``i`` has had (Adam's ``t``; for SGD, whether its momentum
    buffer is initialised). State arrays are created on first use.
    """

    def __init__(self, params, names, backend):
        self.params = list(params)
        self.names = list(names)
        self.backend = backend
        self.dtype = self.params[0].dtype
        sizes = [int(p.size) for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self._offsets = self.offsets.tolist()  # Python ints: slice() runs at every step
        self.numel = int(self.offsets[-1])
        xp = backend.xp
        self.data = xp.empty(self.numel, dtype=self.dtype)
        self.grad = xp.zeros(self.numel, dtype=self.dtype)
        self.views, self.grad_views = [], []
        for i, p in enumerate(self.params):
            s, e = int(self.offsets[i]), int(self.offsets[i + 1])
            view = self.data[s:e].reshape(p.shape)
            view[...] = p.data
            p.data = view
            gview = self.grad[s:e].reshape(p.shape)
            if p.grad is not None:
                gview[...] = p.grad.data
                p.grad = Tensor(gview, False, backend)
            p._grad_buffer = gview
            p._grad_arena = self.grad
            self.views.append(view)
            self.grad_views.append(gview)
        self.state: dict = {}
        self.counts = np.zeros(len(self.params), dtype=np.int64)
        self.hyper = None  # the hyperparameters last validated (_hyper_snapshot)
        self._messages: dict = {}  # optimizer name -> its lazy write message (note_update)
        self.plan = None   # the last step's bound updates (Optimizer._bound_plan)
        self.usual = None  # what the usual step repeats (Optimizer._usual_step)

    def __len__(self):
        return len(self.params)

    def __getstate__(self):
        """Pickled or deep-copied without the bound plan (compiled entry points belong to
        this process, and a copy's arrays are new): the next step binds it again."""
        state = dict(self.__dict__)
        state["plan"] = state["usual"] = None
        return state

    def slice(self, i0, i1=None):
        """Arena index range (start, stop) of parameters ``i0`` up to ``i1`` (exclusive)."""
        o = self._offsets
        return o[i0], o[i0 + 1 if i1 is None else i1]

    def state_array(self, name):
        """The group's 1-D state array ``name`` (zeros when first asked for)."""
        a = self.state.get(name)
        if a is None:
            a = self.state[name] = self.backend.xp.zeros(self.numel, dtype=self.dtype)
        return a

    def state_view(self, name, i):
        s, e = self.slice(i)
        return self.state[name][s:e].reshape(self.params[i].shape)

    def sync(self):
        """Reinstall the arena's views where a user replaced ``p.data`` or ``p.grad``;
        return a list, per parameter, of whether it holds a gradient."""
        present = []
        add = present.append
        for i, (p, view, gview) in enumerate(zip(self.params, self.views, self.grad_views)):
            if p.data is not view:
                self._adopt(i, p.data, view, "data")
                p.data = view
            if p._grad_buffer is not gview:
                p._grad_buffer = gview
                p._grad_arena = self.grad
            g = p.grad
            if g is None:
                add(False)
                continue
            if g.data is not gview:
                self._adopt(i, g.data, gview, "grad")
                p.grad = Tensor(gview, False, self.backend)
            add(True)
        return present

    def holds_views(self):
        """Whether every parameter still holds the arena's views as ``.data`` and as a
        gradient (what :meth:`sync` would then leave as it is, finding every gradient
        present): the usual step, checked in one loop."""
        for p, view, gview in zip(self.params, self.views, self.grad_views):
            g = p.grad
            if (p.data is not view or g is None or g.data is not gview
                    or p._grad_buffer is not gview):
                return False
        return True

    def note_update(self, runs, by):
        """Record the in-place write of an update of ``runs`` (each parameter's version
        goes up by one). The write is noted once per run on one array that lives as long as
        the arena (the whole arena's data, or a lone parameter's view), not once per
        parameter; ``by`` names the optimizer, and an error names the parameter whose
        saved array the write reached (:meth:`written`)."""
        params = self.params
        for i0, i1 in runs:
            whole = i1 - i0 == len(params)
            for p in (params if whole else params[i0:i1]):
                p._version += 1
            if whole:
                _autograd.note_inplace_write(self.data, self._step_message(by))
                continue
            for i in range(i0, i1):
                _autograd.note_inplace_write(params[i].data, ("{}.step() on parameter {}",
                                                              by, self.names[i]))

    def _step_message(self, by):
        msg = self._messages.get(by)
        if msg is None:
            msg = self._messages[by] = functools.partial(self.written, by)
        return msg

    def written(self, by, saved):
        """What wrote into ``saved`` when ``by``'s step wrote the whole arena: the message
        naming the parameters whose slots overlap it."""
        xp = self.backend.xp
        hit = [n for v, n in zip(self.views, self.names) if xp.may_share_memory(v, saved)]
        return f"{by}.step() on parameter {', '.join(hit) or 'in the arena'}"

    def _adopt(self, i, arr, view, what):
        name = self.names[i]
        if not self.backend.is_array(arr):
            raise ValueError(
                f"parameter {name}: its .{what} is no longer a {self.backend.name!r} array; "
                "an optimizer's parameters stay on the backend they were created with "
                "(make a new optimizer after moving the model)")
        if arr.shape != view.shape:
            raise ValueError(
                f"parameter {name}: .{what} was replaced by an array of shape {tuple(arr.shape)}, "
                f"but the optimizer holds shape {tuple(view.shape)}")
        view[...] = arr
        if what == "data":
            self.params[i]._bump_version(f"the optimizer copying the replaced .data of {name}")

    def runs(self, present, key=None):
        """Maximal runs (i0, i1) of consecutive parameters that hold a gradient and
        share ``key[i]`` (e.g. the step count): each run is one fused update."""
        n = len(present)
        if key is not None:
            key = key.tolist() if hasattr(key, "tolist") else list(key)
        if n and all(present) and (key is None or key.count(key[0]) == n):
            return [(0, n)]  # the usual step: every parameter, one fused call
        out = []
        i0 = None
        for i, has in enumerate(present):
            if i0 is not None and (not has or (key is not None and key[i] != key[i0])):
                out.append((i0, i))
                i0 = None
            if has and i0 is None:
                i0 = i
        if i0 is not None:
            out.append((i0, len(present)))
        return out


class Optimizer:

    """Base class: ``param_groups`` (a list of dicts), one :class:`Arena` per group,
    ``zero_grad``, ``step``, ``state_dict``/``load_state_dict``.

    ``params`` is an iterable of Tensors, of ``(name, Tensor)`` pairs (as
    ``model.named_parameters()`` yields), or of dicts with a ``"params"`` entry
    and per-group hyperparameters overriding the defaults. A group's
    hyperparameters are read at every step, so ``group["lr"] = x`` (what
    schedulers do) takes effect at the next step.

    A NaN or inf gradient is never written into the weights: ``step()`` raises
    :class:`NonFiniteGradientError` naming the parameter, or, constructed with
    ``skip_nonfinite=True``, skips the whole step and counts it in
    ``skipped_steps``. On a device backend (CUDA) the check and the skip stay on
    the device (PyTorch's ``found_inf``): ``step()`` reads nothing back and returns
    None; the error is raised by ``dp.check_deferred()`` (``fit`` calls it when it
    logs) and ``skipped_steps`` is read when asked for. A step skipped there still
    advances Adam's step count ``t``. ``DLPRIMER_EAGER_CHECKS=1`` (or
    ``dp.eager_checks()``) brings back the eager check. On the CPU the check rides on the
    step's first update (one kernel call that reads the run's gradients before writing, on
    the JIT backend); every other run is checked before it. ``check_finite=False`` drops the
    check, as PyTorch's optimizers have none: the step no longer reads every gradient once
    more before the update (a 10M-parameter Adam step about 0.85x the time), and a NaN or
    inf gradient then goes into the weights.

    Subclasses define ``_validate(group, where)``, ``_state_names(group)`` and
    ``_update(arena, group, i0, i1)``.
    """

    #: True when the update kernels get the same arguments at every step once the state
    #: exists (no bias correction by step count), so a CUDA graph can replay the step.
    graph_safe = False

    def __init__(self, params, defaults: dict, skip_nonfinite: bool = False,
                 check_finite: bool = True):
        self.defaults = dict(defaults)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.check_finite = bool(check_finite)
        if self.skip_nonfinite and not self.check_finite:
            raise ValueError(f"{type(self).__name__}: skip_nonfinite=True needs the non-finite "
                             "check; it cannot be combined with check_finite=False")
        self._skipped = 0
        self._skipped_device = None  # steps skipped on the device, not yet read back
        self.param_groups: list[dict] = []
        self._arenas: list[Arena] = []
        self._backend = None
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or of dicts, "
                            "not a single Tensor (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"

    # -- groups -----------------------------------------------------------------------
    def add_param_group(self, group: dict):
        """Add a group (a dict with ``"params"``); its parameters move into a new arena."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        gi = len(self.param_groups)
        where = f" (param_groups[{gi}])"
        if "params" not in group:
            raise ValueError(f"param group {gi} has no 'params' entry")
        raw = group["params"]
        raw = [raw] if isinstance(raw, Tensor) else list(raw)
        if not raw:
            raise ValueError(f"param group {gi} has an empty 'params' list")
        params, names = [], []
        seen = {id(p): n for a in self._arenas for p, n in zip(a.params, a.names)}
        for i, item in enumerate(raw):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                label, p = item
            else:
                p = item
                label = getattr(p, "name", None) if isinstance(getattr(p, "name", None), str) else None
            name = (f"'{label}'" if label else f"param_groups[{gi}]['params'][{i}]")
            if not isinstance(p, Tensor):
                raise TypeError(f"parameter {name} is a {type(p).__name__}, not a Tensor")
            name += f" (shape {tuple(p.shape)})"
            if not p.is_leaf:
                raise ValueError(f"parameter {name} is not a leaf tensor; an optimizer "
                                 "updates leaves (use .detach() to make one)")
            if p.dtype.kind != "f":
                raise ValueError(f"parameter {name} has dtype {p.dtype}; "
                                 "only floating-point parameters can be optimized")
            if id(p) in seen:
                raise ValueError(f"parameter {name} appears more than once "
                                 f"(first as {seen[id(p)]}); list each parameter once")
            if self._backend is None:
                self._backend = p.backend
            elif p.backend is not self._backend:
                raise ValueError(
                    f"parameter {name} is on backend {p.backend.name!r} but the optimizer's "
                    f"other parameters are on {self._backend.name!r}; one optimizer updates "
                    "one backend")
            if params and p.dtype != params[0].dtype:
                raise ValueError(
                    f"parameter {name} has dtype {p.dtype} but its group is {params[0].dtype}; "
                    "a group's arena has one dtype, so put them in separate param groups")
            seen[id(p)] = name
            params.append(p)
            names.append(name)
        full = dict(self.defaults)
        full.update({k: v for k, v in group.items() if k != "params"})
        self._validate(full, where)
        full["params"] = params
        self.param_groups.append(full)
        self._arenas.append(Arena(params, names, self._backend))

    def _validate(self, group: dict, where: str):
        _check_number("learning rate lr", group["lr"], where=where)

    def _state_names(self, group: dict) -> tuple:
        return ()

    def _update(self, arena: Arena, group: dict, i0: int, i1: int):
        raise NotImplementedError

    def _run_key(self, arena: Arena, group: dict):
        """Per-parameter values that must agree within one fused call."""
        return arena.counts

    # -- the training-loop API ------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True):
        """Forget the gradients: ``p.grad = None`` (the next backward copies into the
        arena), or with ``set_to_none=False`` zero the arena in place, keeping views."""
        for arena in self._arenas:
            if set_to_none:
                for p in arena.params:
                    p.grad = None
            else:
                arena.grad.fill(0)
                for p, gv in zip(arena.params, arena.grad_views):
                    p.grad = Tensor(gv, False, arena.backend)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient (reads the device count: a host sync)."""
        if self._skipped_device is not None:
            self._skipped += int(self._backend.to_numpy(self._skipped_device))
            self._skipped_device.fill(0)
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, n):
        self._skipped = int(n)
        if self._skipped_device is not None:
            self._skipped_device.fill(0)

    def step(self):
        """One update of every parameter that holds a gradient; returns True if it ran
        (False when a non-finite gradient made ``skip_nonfinite`` skip it), or None on
        a device backend, where that is decided on the device."""
        return self._step(self.check_finite)

    def _step(self, check: bool):
        """``step()``, with the non-finite check only when ``check``: a caller that has just
        checked these very gradients (``GradScaler.step`` after its own unscale) passes
        False instead of reading them all once more."""
        usual = self._arenas[0].usual if len(self._arenas) == 1 else None
        if usual is not None and self._usual_step(usual, check):
            return True
        plans = []
        for gi, (group, arena) in enumerate(zip(self.param_groups, self._arenas)):
            arena.usual = None
            if not _same_hyper(group, arena.hyper):
                self._validate(group, f" (param_groups[{gi}])")
                arena.hyper = _hyper_snapshot(group)
            present = arena.sync()
            plans.append((group, arena, arena.runs(present, self._run_key(arena, group))))
        if not check:
            self._apply(plans)
            return None if self._backend.defers_checks else True
        if self._backend.defers_checks:
            return self._step_on_device(plans)
        if self._apply(plans, check=True):
            return True
        for group, arena, runs in plans:   # nothing was written: find the parameter
            bad = self._first_nonfinite(arena, runs)
            if bad is not None:
                if self.skip_nonfinite:
                    self.skipped_steps += 1
                    return False
                raise NonFiniteGradientError(
                    f"the gradient of parameter {arena.names[bad]} contains NaN or inf; "
                    "the step was not applied (pass skip_nonfinite=True to skip such steps, "
                    "or clip/scale the loss)", name=arena.names[bad])
        raise RuntimeError(f"{type(self).__name__}.step(): the update found a NaN or inf "
                           "gradient that a second look did not find; the step was not applied")

    def _usual_step(self, usual, check):
        """The usual step in a few operations: one param group whose hyperparameters
        (equal values), gradients (every parameter's, in the arena) and plan key are those
        of the last step, which ran bound updates over the whole arena: those updates are
        called again. False when anything differs (the full step then runs), or when the
        checked update found a NaN or inf (nothing written: the full step looks again and
        names the parameter). What it skips, against the full step (64-32-10 MLP, SGD, in
        a training step): validation, view adoption, run splitting and plan lookup."""
        bound_check, values, runs, key, bound = usual
        arena, group = self._arenas[0], self.param_groups[0]
        if (bound_check != check or not _equal_values(values, group) or not fusion_enabled()
                or not arena.holds_views() or self._plan_key(arena, group, runs) != key):
            return False
        for fn in bound:
            if fn() is False:
                return False
        arena.note_update(runs, type(self).__name__)
        return True

    def _arm_usual(self, group, arena, runs, check, bound):
        """After a step of the only group that ran ``bound`` updates over the whole arena
        (``check``: the first one checks), what :meth:`_usual_step` repeats; nothing when
        the step changed what the bound updates depend on (SGD's first momentum step), and
        never on a device backend (its step decides the skip on the device)."""
        if arena.backend.device_queue:
            return
        key = self._plan_key(arena, group, runs)
        if arena.plan is not None and arena.plan[1] == (runs, check, key, fusion_enabled()):
            arena.usual = (check, tuple(group.values()), runs, key, bound)

    def _apply(self, plans, check=False):
        """Run the updates of ``plans``. With ``check``, only when no gradient that takes
        part holds NaN or inf: False, and nothing written, when one does. The check rides
        on the first update: every other run is checked first (``backend.all_finite``),
        then the first run's update checks its own gradients before writing
        (:meth:`_update_checked`, one kernel call where the backend has one), then the
        others run. On the first step (state arrays not made yet) every run is checked
        first, so that a refused step creates no state either."""
        cls = type(self).__name__
        if check:
            fresh = any(n not in arena.state for group, arena, _ in plans
                        for n in self._state_names(group))
            if not self._check_all_but_first(plans, skip_first=not fresh):
                return False
            check = not fresh
        for group, arena, runs in plans:
            for name in self._state_names(group):
                arena.state_array(name)
            first = check and bool(runs)
            bound = self._bound_plan(arena, group, runs, first)
            if bound is None:
                for i0, i1 in runs:
                    if first:
                        if not self._update_checked(arena, group, i0, i1):
                            return False
                        first = check = False
                    else:
                        self._update(arena, group, i0, i1)
            else:
                for fn in bound:
                    if fn() is False:   # only the checked first update can say so
                        return False
                if len(plans) == 1 and runs == [(0, len(arena))]:
                    self._arm_usual(group, arena, runs, first, bound)
                check = check and not runs
            arena.note_update(runs, cls)
        return True

    @staticmethod
    def _check_all_but_first(plans, skip_first):
        """Whether every run's gradients are finite (one ``backend.all_finite`` each), the
        first run of the step left out when ``skip_first`` (its update checks it)."""
        for _, arena, runs in plans:
            for i0, i1 in runs:
                if skip_first:
                    skip_first = False
                    continue
                s, e = arena.slice(i0, i1)
                if not arena.backend.all_finite(arena.grad[s:e]):
                    return False
        return True

    def _update_checked(self, arena: Arena, group: dict, i0: int, i1: int) -> bool:
        """``_update(arena, group, i0, i1)`` only when the run's gradients hold no NaN or
        inf; whether it ran. Here a check, then the update; SGD and Adam pass the check to
        the backend (``backend.checked_update``: one kernel call on the JIT CPU backend)."""
        s, e = arena.slice(i0, i1)
        if not arena.backend.all_finite(arena.grad[s:e]):
            return False
        self._update(arena, group, i0, i1)
        return True

    def _bound_plan(self, arena: Arena, group: dict, runs, check=False):
        """The group's updates as callables bound to their arguments once (no slicing,
        no conversions, no kernel dispatch at each step), or None: each step then calls
        ``_update``. With ``check`` the first one is :meth:`_update_checked`'s (it returns
        False, having written nothing, on a NaN or inf; the others return True). Reused
        while what they were bound to holds: the same validated hyperparameters (the same
        objects), the same runs, the same ``check``, fusion on, and the same
        :meth:`_plan_key`; any change (a new lr, a parameter without a gradient this
        step, a momentum buffer that is now initialised) binds them again."""
        hyper = arena.hyper
        if hyper is None:
            return None
        key = (runs, check, self._plan_key(arena, group, runs), fusion_enabled())
        plan = arena.plan
        if plan is not None and plan[0] is hyper and plan[1] == key:
            return plan[2]
        bound = [self._bound_update(arena, group, i0, i1, check=check and k == 0)
                 for k, (i0, i1) in enumerate(runs)]
        if any(b is None for b in bound):
            bound = None
        arena.plan = (hyper, key, bound)
        return bound

    def _plan_key(self, arena: Arena, group: dict, runs):
        """What else the bound updates of ``runs`` depend on (SGD: whether each run's
        momentum buffer is initialised)."""
        return None

    def _bound_update(self, arena: Arena, group: dict, i0: int, i1: int, check=False):
        """``_update(arena, group, i0, i1)`` (``_update_checked`` with ``check``) as a
        callable of no arguments returning whether it ran, that later steps may call
        instead while :meth:`_bound_plan`'s key holds, or None (the default: every step
        calls ``_update``)."""
        return None

    def _step_on_device(self, plans):
        """The step with its non-finite check and skip decision on the device: one flag
        over every gradient that takes part, the updates masked by it, the skip counted
        (``skip_nonfinite``) or recorded as a deferred error. Nothing is read back."""
        be = self._backend
        grads = [arena.grad[slice(*arena.slice(i0, i1))]
                 for _, arena, runs in plans for i0, i1 in runs]
        found_inf = be.nonfinite_flag(grads)
        touched = []
        for group, arena, runs in plans:
            if runs:
                touched.append(arena.data)
                touched.extend(arena.state_array(n) for n in self._state_names(group))
        with be.skip_updates_if(found_inf, touched):
            self._apply(plans)
        if self.skip_nonfinite:  # in place: a captured CUDA graph counts at every replay
            if self._skipped_device is None:
                self._skipped_device = be.xp.zeros((), be.xp.int64)
            self._skipped_device += found_inf
        else:
            be.deferred.record(("nonfinite_gradient", id(self)), found_inf, None,
                               self._deferred_error)
        return None

    def _deferred_error(self, count, _value):
        steps = "a step" if count == 1 else f"{count} steps"
        return NonFiniteGradientError(
            f"{type(self).__name__}: a gradient held NaN or inf in {steps} since the last "
            "check; those steps were skipped on the device (the weights are untouched). "
            "Set DLPRIMER_EAGER_CHECKS=1 (or use dp.eager_checks()) to raise at step() "
            "naming the parameter, or pass skip_nonfinite=True to skip such steps.")

    @staticmethod
    def _first_nonfinite(arena: Arena, runs):
        """Index of the first parameter with a NaN/inf gradient, or None: one
        ``backend.all_finite`` over each run of the gradient arena (a numba pass with the
        JIT on, a BLAS dot otherwise); only a run that fails is searched per parameter."""
        be = arena.backend
        for i0, i1 in runs:
            s, e = arena.slice(i0, i1)
            if be.all_finite(arena.grad[s:e]):
                continue
            for i in range(i0, i1):
                if not be.all_finite(arena.grad_views[i].reshape(-1)):
                    return i
        return None

    # -- introspection ----------------------------------------------------------------------
    @property
    def state_bytes_per_param(self):
        """Bytes of optimizer state per parameter (SGD 0, momentum 4, Adam 8 in float32);
        an average when groups differ."""
        total = n = 0
        for group, arena in zip(self.param_groups, self._arenas):
            total += len(self._state_names(group)) * arena.dtype.itemsize * arena.numel
            n += arena.numel
        avg = total / n if n else 0
        return int(avg) if float(avg).is_integer() else avg

    @property
    def arenas(self) -> list:
        """The per-group :class:`Arena` objects (flat data, grad and state arrays)."""
        return list(self._arenas)

    @property
    def state(self) -> dict:
        """Per-parameter state as PyTorch shows it: ``{param: {"step": n, name: view}}``
        (views into the arena; parameters not yet updated are absent)."""
        out = {}
        for group, arena in zip(self.param_groups, self._arenas):
            for i, p in enumerate(arena.params):
                if arena.counts[i] == 0:
                    continue
                st = {"step": int(arena.counts[i])}
                for name in self._state_names(group):
                    if name in arena.state:
                        st[name] = Tensor(arena.state_view(name, i), False, arena.backend)
                out[p] = st
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {"step": n, name: numpy array}}, "param_groups": [...]}``
        with parameters numbered across groups in order, as PyTorch does; arrays are
        NumPy copies, so the dict can be saved anywhere and loaded on any backend."""
        state, groups, idx = {}, [], 0
        for group, arena in zip(self.param_groups, self._arenas):
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(idx, idx + len(arena)))
            groups.append(g)
            for i in range(len(arena)):
                if arena.counts[i] > 0:
                    st = {"step": int(arena.counts[i])}
                    for name in arena.state:
                        st[name] = arena.backend.to_numpy(arena.state_view(name, i)).copy()
                    state[idx + i] = st
            idx += len(arena)
        return {"state": state, "param_groups": groups, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict):
        """Restore hyperparameters, step counts and state arrays from :meth:`state_dict`."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
            raise ValueError("load_state_dict: expected a dict from Optimizer.state_dict() "
                             "with 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: the saved state has {len(groups)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for gi, (saved, arena) in enumerate(zip(groups, self._arenas)):
            if len(saved["params"]) != len(arena):
                raise ValueError(
                    f"load_state_dict: saved param group {gi} has {len(saved['params'])} "
                    f"parameters, this optimizer's has {len(arena)}")
        saved_state = state_dict.get("state", {})
        for gi, (saved, group, arena) in enumerate(zip(groups, self.param_groups, self._arenas)):
            for i, key in enumerate(saved["params"]):
                st = saved_state.get(key, saved_state.get(str(key)))
                if st is None:
                    continue
                for name, arr in st.items():
                    if name == "step":
                        continue
                    arr = np.asarray(arr)
                    if arr.size != arena.params[i].size:
                        raise ValueError(
                            f"load_state_dict: state {name!r} of parameter {arena.names[i]} "
                            f"has shape {arr.shape}, expected {tuple(arena.params[i].shape)}")
        new_groups = []
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            new = dict(self.defaults)
            new.update({k: v for k, v in saved.items() if k != "params"})
            self._validate(new, f" (saved param_groups[{gi}])")
            new["params"] = group["params"]
            new_groups.append(new)
        for saved, group, new, arena in zip(groups, self.param_groups, new_groups, self._arenas):
            group.clear()
            group.update(new)
            arena.counts[:] = 0
            arena.usual = None
            for a in arena.state.values():
                a.fill(0)
            for i, key in enumerate(saved["params"]):
                st = saved_state.get(key, saved_state.get(str(key)))
                if st is None:
                    continue
                arena.counts[i] = int(st.get("step", 0))
                s, e = arena.slice(i)
                for name, arr in st.items():
                    if name != "step":
                        flat = np.asarray(arr, dtype=arena.dtype).reshape(-1)
                        arena.state_array(name)[s:e] = arena.backend.asarray(flat)
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
