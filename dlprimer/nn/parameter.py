"""Parameter: a leaf Tensor that a Module registers and an optimizer updates."""
from __future__ import annotations

from ..tensor import Tensor, tensor


class Parameter(Tensor):
    """A trainable leaf tensor (``requires_grad=True`` by default).

    An optimizer may move ``.data`` and ``.grad`` into its flat arena; they then
    become views, and the Parameter object (which modules hold) stays the same.
    """

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            src = data.detach()
        else:
            src = tensor(data)
        super().__init__(src.data, False, src.backend)
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"
