"""Modules that moved (issue 14), kept importable under their old paths.

=====================  ===========================  ==========================
old path               new path                     what
=====================  ===========================  ==========================
``dlprimer.ckpt``      ``dlprimer.train.checkpoints``  training checkpoints
``dlprimer.utils``     ``dlprimer.nn.utils``          ``clip_grad_norm_``
``dlprimer.unfused``   ``dlprimer.backend.unfused``   the fusion switch
=====================  ===========================  ==========================

No file stays at the old path: the old name is the *same module object* in
``sys.modules`` (so ``monkeypatch.setattr("dlprimer.ckpt._write_all", ...)`` patches
the real one), registered while ``dlprimer`` is imported, before any module of the
package imports an old path.
"""
from __future__ import annotations

import importlib
import sys

MOVED_MODULES = {
    "dlprimer.ckpt": "dlprimer.train.checkpoints",
    "dlprimer.utils": "dlprimer.nn.utils",
    "dlprimer.unfused": "dlprimer.backend.unfused",
}


def alias_moved_modules() -> tuple:
    """Register every old path in ``sys.modules``; returns the modules, in table order."""
    out = []
    for old, new in MOVED_MODULES.items():
        module = importlib.import_module(new)
        sys.modules[old] = module
        out.append(module)
    return tuple(out)
