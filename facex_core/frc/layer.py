"""The FRC layer (paper Eq. 3) and the bank of them that matches one UNet.

    v = v + CrossAttn_fix(v, text)                 # the frozen attn2, untouched
    v = v + ZeroProj(CrossAttn_ft(LN(v), f_SD))    # this layer

The k/v projections of f_SD do not depend on the hidden states, so they are split out
(`project_tokens`) and cached by the callers for a whole sampling run; the per-call work is one
query projection, one small attention over ~50 tokens and two output projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import BlockSpec


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    # Weights may be stored in another dtype than the UNet runs in (fp32 bank, fp16 UNet).
    w = layer.weight if layer.weight.dtype == x.dtype else layer.weight.to(x.dtype)
    b = layer.bias
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    return F.linear(x, w, b)


class FRCLayer(nn.Module):
    def __init__(self, dim: int, heads: int, token_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"FRC layer width {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.token_dim = dim, heads, token_dim
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(token_dim, dim, bias=False)
        self.to_v = nn.Linear(token_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        # The paper's zero convolution: a zero-initialised projection, so a fresh layer adds
        # exactly 0.0 and the patched UNet reproduces the original bit for bit.
        self.zero_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.zero_out.weight)
        nn.init.zeros_(self.zero_out.bias)

    def project_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v of f_SD (B, T, D) -> each (B, heads, T, dim_head)."""
        b, t, _ = tokens.shape
        k = _linear(tokens, self.to_k).view(b, t, self.heads, -1).transpose(1, 2)
        v = _linear(tokens, self.to_v).view(b, t, self.heads, -1).transpose(1, 2)
        return k, v

    def forward(self, hidden: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The residual this layer adds: hidden (B, N, dim), k/v from project_tokens."""
        b, n, _ = hidden.shape
        h = F.layer_norm(hidden, (self.dim,), self.norm.weight.to(hidden.dtype), self.norm.bias.to(hidden.dtype), self.norm.eps)
        q = _linear(h, self.to_q).view(b, n, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        out = out.transpose(1, 2).reshape(b, n, self.dim)
        return _linear(_linear(out, self.to_out), self.zero_out)


class FRCBank(nn.Module):
    """One FRCLayer per transformer block of the UNet it patches, keyed by BlockSpec.name."""

    def __init__(self, layout: list[BlockSpec], token_dim: int):
        super().__init__()
        self.layout = list(layout)
        self.token_dim = token_dim
        self.layers = nn.ModuleDict({b.name: FRCLayer(b.dim, b.heads, token_dim) for b in self.layout})
        self.by_key = {b.key: b.name for b in self.layout}

    def layer(self, key: tuple[str, int, int]) -> FRCLayer:
        return self.layers[self.by_key[key]]

    def is_zero(self) -> bool:
        """True when every output projection is exactly zero (a fresh, untrained bank)."""
        return all(not l.zero_out.weight.any() and not l.zero_out.bias.any() for l in self.layers.values())
