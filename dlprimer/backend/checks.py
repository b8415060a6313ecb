"""Checks that stay on the device: no host synchronisation inside a training step.

Reading a device value into Python (``float(x)``, ``.item()``, ``.get()``) waits for
every queued kernel: one such read per step puts the GPU's queue back to empty and
makes CUDA-graph capture impossible. So on a device backend the checks of a step
(a class target out of range, a NaN or inf gradient) are *recorded* as flags on the
device, PyTorch's ``found_inf`` pattern, and read only when someone asks: at logging
time (``dp.check_deferred()``, which ``fit`` calls when it logs), or when an
optimizer's ``skipped_steps`` is read.

The eager, syncing checks come back with the debug switch: the environment variable
``DLPRIMER_EAGER_CHECKS=1``, ``dp.set_eager_checks(True)`` or
``with dp.eager_checks(): ...``. Then a bad target raises at the loss and a
non-finite gradient at ``step()``, naming the parameter. On the CPU the checks are
always eager: a host read costs nothing there.
"""
from __future__ import annotations

import contextlib
import os

ENV = "DLPRIMER_EAGER_CHECKS"

_eager = [os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")]


def eager_checks_enabled() -> bool:
    """True when the debug switch asks for eager (syncing) checks on every backend."""
    return _eager[0]


def set_eager_checks(enabled: bool) -> bool:
    """Turn the eager, syncing checks on or off; returns the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_eager_checks: enabled must be True or False, got {enabled!r}")
    prev, _eager[0] = _eager[0], enabled
    return prev


@contextlib.contextmanager
def eager_checks(enabled: bool = True):
    """``with dp.eager_checks(): ...`` runs its block with eager (syncing) checks."""
    prev = set_eager_checks(enabled)
    try:
        yield
    finally:
        set_eager_checks(prev)


class DeferredChecks:
    """A backend's pending error flags, kept on its device.

    ``record(key, bad, value, make_error)`` adds one check: ``bad`` is a 0-d device
    array (true or nonzero when the check failed), ``value`` a 0-d device array
    naming what was wrong (a class index; ``None`` for nothing). Per key the device
    keeps, in two 0-d int64 arrays updated in place, how many checks failed and the
    value of the first failure: recording launches two tiny kernels and never reads,
    and a CUDA graph that captured it accumulates into the same arrays at every replay.
    ``raise_pending()`` reads every key's pair in one transfer, zeroes them, and raises
    ``make_error(count, first_value)`` for the first key that failed.
    """

    def __init__(self, backend):
        self.backend = backend
        self._flags: dict = {}

    def __len__(self):
        return len(self._flags)

    def record(self, key, bad, value, make_error):
        xp = self.backend.xp
        entry = self._flags.get(key)
        if entry is None:
            entry = self._flags[key] = [xp.zeros((), xp.int64), xp.zeros((), xp.int64), None]
        count, first, _ = entry
        entry[2] = make_error
        bad = xp.asarray(bad).astype(xp.int64).reshape(())
        if value is not None:
            xp.copyto(first, xp.asarray(value).astype(xp.int64).reshape(()), where=count == 0)
        count += bad

    def raise_pending(self):
        """Read all flags (one host transfer), zero them, raise the first failure."""
        if not self._flags:
            return
        xp = self.backend.xp
        items = list(self._flags.values())
        flat = xp.stack([a for count, first, _ in items for a in (count, first)])
        host = self.backend.to_numpy(flat).reshape(-1, 2)
        failed = None
        for (count, first), (c_arr, _, make_error) in zip(host.tolist(), items):
            if count > 0:
                c_arr.fill(0)
                if failed is None:
                    failed = make_error(int(count), int(first))
        if failed is not None:
            raise failed


def check_deferred():
    """Raise the first error a device backend recorded without a host sync since the
    last call (a class target out of range, a skipped non-finite optimizer step); one
    host read per backend. Call it where you log; ``fit`` does."""
    from . import _instances
    for b in list(_instances.values()):
        deferred = getattr(b, "deferred", None)
        if deferred is not None:
            deferred.raise_pending()
