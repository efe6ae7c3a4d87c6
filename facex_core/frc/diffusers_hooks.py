"""FRC on a diffusers UNet2DConditionModel through PyTorch module hooks (the training side).

diffusers' BasicTransformerBlock.forward runs, per block:
    x = attn1(...) + x
    n = attn2(norm2(x), text)      # forward pre-hook on norm2: stash x
                                   # forward hook on attn2: return n + FRC(x_stashed + n, f_SD)
    x = n + x                      # = (x + attn2) + FRC(x + attn2): paper Eq. 3, as in ComfyUI
The layers are the same FRCBank the ComfyUI hooks use (comfy_hooks.py); blocks are keyed with
`layout.diffusers_block_key`, so the keys equal ComfyUI's ("input", 1, 0) ... and one set of
weights serves both (tested by parity: same weights, same inputs, same noise prediction).

f_SD is set per UNet call with `frc_conditioning(holder, tokens)`: (B, T, D) tokens, one row per
latent (or one row for all). Outside that context the hooks pass attn2's output through untouched,
so the same UNet object gives the un-patched prediction (FAIR regularisation's second pass).
The k/v projections are recomputed per call: in training f_SD changes every step and carries
gradients; each block runs once per UNet call, so nothing would be reused.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .layer import FRCBank
from .layout import diffusers_block_key


class DiffusersFRCError(ValueError):
    """A UNet or f_SD batch the diffusers hooks cannot use; the message says what and why."""


class DiffusersFRC:
    """Holds the hook handles and the current f_SD for one (FRC bank, diffusers UNet) pair."""

    def __init__(self, bank: FRCBank, unet, strength: float = 1.0):
        self.bank = bank
        self.unet = unet
        self.strength = float(strength)
        self.tokens: Optional[torch.Tensor] = None
        self.calls = 0  # FRC layer applications (tests assert every block fires)
        self.fired: set = set()
        self._stash: dict = {}
        self._handles: list = []
        self.blocks = self._find_blocks(unet)

    def _find_blocks(self, unet) -> dict[tuple[str, int, int], torch.nn.Module]:
        per_block = unet.config.layers_per_block
        if not isinstance(per_block, int):
            raise DiffusersFRCError("FRC: UNets with per-level layers_per_block are not supported by the block map")
        found = {}
        for name, module in unet.named_modules():
            key = diffusers_block_key(name, per_block)
            if key is None or getattr(module, "attn2", None) is None:
                continue
            found[key] = module
        mine = set(self.bank.by_key)
        theirs = set(found)
        if mine != theirs:
            raise DiffusersFRCError(
                f"FRC bank does not fit this UNet: blocks without a layer {sorted(theirs - mine)[:4]}, "
                f"layers without a block {sorted(mine - theirs)[:4]}; build the FaceX model from this UNet's "
                f"layout (layout_from_diffusers)"
            )
        for key, module in found.items():
            spec = next(b for b in self.bank.layout if b.key == key)
            width = module.norm2.normalized_shape[0]
            if width != spec.dim:
                raise DiffusersFRCError(f"FRC layer {spec.name} is {spec.dim} wide, the UNet block {key} is {width}")
        return found

    # ---- attach / detach --------------------------------------------------------------------
    def attach(self) -> "DiffusersFRC":
        if self._handles:
            return self
        for key, block in self.blocks.items():
            self._handles.append(block.norm2.register_forward_pre_hook(self._stash_hook(key)))
            self._handles.append(block.attn2.register_forward_hook(self._output_hook(key)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stash.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # ---- gradient checkpointing -------------------------------------------------------------
    def enable_gradient_checkpointing(self) -> None:
        """The UNet's own block checkpointing, made FRC-aware: the backward pass recomputes each
        block, and the recomputation must see the f_SD of its forward pass, not whatever is set
        when backward runs (often nothing: the conditioning context has closed by then)."""
        import torch.utils.checkpoint

        def checkpoint(module, *args):
            tokens = self.tokens

            def run(*inner):
                previous = self.tokens
                self.tokens = tokens
                try:
                    return module(*inner)
                finally:
                    self.tokens = previous

            return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

        self.unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint)

    # ---- the two hooks ----------------------------------------------------------------------
    def _stash_hook(self, key):
        def hook(module, args):
            if self.tokens is not None:
                self._stash[key] = args[0]

        return hook

    def _output_hook(self, key):
        def hook(module, args, output):
            x = self._stash.pop(key, None)
            if x is None or self.tokens is None or self.strength == 0.0:
                return output
            tokens = self.tokens
            b = output.shape[0]
            if tokens.shape[0] not in (1, b):
                raise DiffusersFRCError(f"FRC: f_SD holds {tokens.shape[0]} rows but the UNet batch is {b}; give one row or one per latent")
            layer = self.bank.layer(key)
            k, v = layer.project_tokens(tokens.to(output.dtype))
            if k.shape[0] != b:
                k, v = k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:])
            delta = layer(x + output, k, v)
            self.calls += 1
            self.fired.add(key)
            if self.strength != 1.0:
                delta = delta * self.strength
            return output + delta

        return hook


def attach_frc(bank: FRCBank, unet, strength: float = 1.0) -> DiffusersFRC:
    """Install FRC on every transformer block of a diffusers UNet; `.detach()` removes it."""
    return DiffusersFRC(bank, unet, strength).attach()


@contextlib.contextmanager
def frc_conditioning(holder: DiffusersFRC, tokens: Optional[torch.Tensor]):
    """f_SD (B or 1, T, D) for the UNet calls inside the block; None = un-patched UNet."""
    previous = holder.tokens
    holder.tokens = tokens
    try:
        yield holder
    finally:
        holder.tokens = previous
        holder._stash.clear()


def mix_null_tokens(tokens: torch.Tensor, null: torch.Tensor, drop: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample condition dropout: rows where `drop` (B,) is True get the null f_SD (1, T, D)."""
    if drop is None:
        return tokens
    drop = drop.to(tokens.device).bool().view(-1, 1, 1)
    return torch.where(drop, null.to(tokens.dtype).expand_as(tokens), tokens)
