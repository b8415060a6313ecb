"""A pre-LayerNorm Transformer block and a small causal language model shaped like nanoGPT."""
from __future__ import annotations

from ..tensor import arange
from . import functional as F
from .activation import GELU, Dropout
from .attention import MultiheadAttention
from .container import Sequential
from .embedding import Embedding
from .linear import Linear
from .module import Module
from .normalization import LayerNorm


class TransformerBlock(Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)) (pre-LN, as GPT-2 and nanoGPT): causal
    self-attention over (N, T, E) inputs and a GELU MLP of width 4E.
    Parameter count 12 E^2 + 13 E (attention 4 E^2 + 4 E, MLP 8 E^2 + 5 E, two norms 4 E)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.ln_1 = LayerNorm(n_embd)
        self.attn = MultiheadAttention(n_embd, n_head, dropout=dropout, batch_first=True)
        self.ln_2 = LayerNorm(n_embd)
        self.mlp = Sequential(Linear(n_embd, 4 * n_embd), GELU(), Linear(4 * n_embd, n_embd),
                              Dropout(dropout))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, is_causal=self.causal)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(Module):
    """A character- or token-level causal language model in nanoGPT's shape:
    token embedding ``wte`` + position embedding ``wpe``, ``n_layer`` pre-LN
    :class:`TransformerBlock` s, a final ``ln_f`` and the ``lm_head`` projection to
    ``vocab_size`` logits. ``forward(idx)`` takes (N, T) int64 tokens, T <= block_size,
    and returns (N, T, vocab_size) logits; ``loss(idx, targets)`` the mean cross-entropy
    of predicting each next token. (nanoGPT ties lm_head to wte; here they are separate.)"""

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte = Embedding(vocab_size, n_embd)
        self.wpe = Embedding(block_size, n_embd)
        self.drop = Dropout(dropout)
        self.blocks = Sequential(*[TransformerBlock(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = LayerNorm(n_embd)
        self.lm_head = Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx):
        if idx.ndim != 2:
            raise ValueError(f"GPT: tokens must be (N, T), got shape {idx.shape}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"GPT: sequence length {t} exceeds block_size {self.block_size}")
        pos = arange(t, backend=idx.backend)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        return self.lm_head(self.ln_f(self.blocks(x)))

    def loss(self, idx, targets):
        """Mean next-token cross-entropy (nats per token)."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))
