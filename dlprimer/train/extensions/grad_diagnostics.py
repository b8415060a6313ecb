"""Gradient diagnostics: update/weight ratios, dead ReLUs, vanishing and exploding norms."""
from __future__ import annotations

import math

import numpy as np

from ..diagnostics import ReLUMonitor
from ..records import DyingReLUWarning, ExplodingGradientWarning, VanishingGradientWarning
from ..trainer import PRIORITY_ACT, Extension


class GradientDiagnostics(Extension):
    """The chapter's gradient pathologies, watched every step.

    Records the update/weight ratio ||dW|| / ||W|| per layer (on kept steps) and the
    fraction of dead ReLU units per ReLU; warns (once per run and kind) about
    vanishing gradients (the global norm below ``vanishing_threshold``, or a layer's
    below ``vanishing_ratio`` x the largest layer's, for ``vanishing_patience``
    steps), exploding ones (a norm ``exploding_factor`` x its running median) and
    dying ReLUs (a fraction above ``dead_relu_threshold``).
    """

    priority = PRIORITY_ACT

    def __init__(self, vanishing_threshold=1e-7, vanishing_ratio=1e-4, vanishing_patience=20,
                 exploding_factor=100.0, dead_relu_threshold=0.5):
        self.vanishing_threshold, self.vanishing_ratio = vanishing_threshold, vanishing_ratio
        self.vanishing_patience, self.exploding_factor = vanishing_patience, exploding_factor
        self.dead_relu_threshold = dead_relu_threshold
        self.vanish_count, self.layer_low, self.gnorm_hist = 0, {}, []
        self.relu, self.before = None, None

    def state_dict(self):
        return {"vanish_count": self.vanish_count, "layer_low": self.layer_low,
                "gnorm_hist": self.gnorm_hist[-50:]}

    def load_state_dict(self, run):
        self.vanish_count = int(run.get("vanish_count", 0))
        self.layer_low = dict(run.get("layer_low", {}))
        self.gnorm_hist = list(run.get("gnorm_hist", []))

    def on_step_start(self, trainer):
        self.relu = ReLUMonitor()
        trainer.observe(self.relu)

    def on_backward_end(self, trainer, rec):
        logged = (trainer.step + 1) % trainer.log_every == 0
        self.before = [p.data.copy() for p in trainer.params] if logged else None

    def on_step_end(self, trainer, rec):
        if self.before is not None:
            self._update_ratios(trainer, rec)
        dead = self.relu.fractions(trainer.backend)
        rec["dead_relu"] = float(np.mean(dead)) if dead else 0.0
        for i, f in enumerate(dead):
            rec[f"dead_relu/{i}"] = f
        self._watch_norms(trainer, rec["grad_norm"], trainer.grad_sq)
        for i, f in enumerate(dead):
            if f > self.dead_relu_threshold:
                trainer.warn(f"dead_relu/{i}", DyingReLUWarning,
                             f"dying ReLUs: {f:.0%} of the units of ReLU #{i} output zero for the "
                             f"whole batch at step {trainer.step}; a lower learning rate, Leaky "
                             "ReLU or ELU helps")

    def _update_ratios(self, trainer, rec):
        norms, backend, params = trainer.norms, trainer.backend, trainer.params
        dsq = norms.per_layer([p.data - w for p, w in zip(params, self.before)], backend)
        wsq = norms.per_layer(self.before, backend)
        rec["update_ratio"] = float(math.sqrt(dsq.sum() / max(wsq.sum(), 1e-30)))
        for lay, d, w in zip(norms.layers, dsq, wsq):
            rec[f"update_ratio/{lay}"] = float(math.sqrt(d / w)) if w > 0 else 0.0
        self.before = None

    def _watch_norms(self, trainer, gnorm, sq):
        self.vanish_count = self.vanish_count + 1 if gnorm < self.vanishing_threshold else 0
        if self.vanish_count >= self.vanishing_patience:
            trainer.warn("vanishing", VanishingGradientWarning,
                         f"vanishing gradients: the global gradient norm has stayed below "
                         f"{self.vanishing_threshold:g} for {self.vanish_count} steps "
                         f"(now {gnorm:.3g})")
        top = float(np.sqrt(sq.max())) if len(sq) else 0.0
        for lay, s in zip(trainer.norms.layers, sq):
            low = top > 0 and math.sqrt(s) < self.vanishing_ratio * top
            self.layer_low[lay] = self.layer_low.get(lay, 0) + 1 if low else 0
            if self.layer_low[lay] >= self.vanishing_patience:
                trainer.warn(f"vanishing/{lay}", VanishingGradientWarning,
                             f"vanishing gradients in layer '{lay}': its gradient norm has stayed "
                             f"below {self.vanishing_ratio:g} x the largest layer's for "
                             f"{self.layer_low[lay]} steps")
        if len(self.gnorm_hist) >= 10:
            med = float(np.median(self.gnorm_hist[-50:]))
            if med > 0 and gnorm > self.exploding_factor * med:
                trainer.warn("exploding", ExplodingGradientWarning,
                             f"exploding gradients: the gradient norm {gnorm:.3g} at step "
                             f"{trainer.step} is {gnorm / med:.0f}x its running median "
                             f"{med:.3g}; consider clip=")
        self.gnorm_hist.append(gnorm)
        del self.gnorm_hist[:-50]
