"""FRC on a ComfyUI UNet through its two official transformer-block hooks (no monkey patching).

ComfyUI's BasicTransformerBlock.forward runs, per block:
    x = attn1(...) + x
    x = middle_patch(x)            # we stash x and return it unchanged
    n = attn2(norm2(x), text)
    n = attn2_output_patch(n)      # we return n + FRC(x_stashed + n, f_SD)
    x = n + x                      # = (x + attn2) + FRC(x + attn2): paper Eq. 3 exactly
The hook lists are append-only, so this composes with attn2 replace patches (IPAdapter, InstantID,
PuLID), LoRA weight patches and ControlNet residuals.

This module needs no ComfyUI import: it reads the `extra_options` dict ComfyUI passes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..model import FaceXModel


class FRCRuntime:
    """State shared by the two hooks of one FaceXApplyFRC: f_SD and the k/v cache.

    f_SD and its per-block k/v projections do not change during sampling, so they are computed
    once per device/dtype (the first step) and reused by every later block call and step.
    """

    def __init__(self, model: FaceXModel, encode: Callable[[FaceXModel], torch.Tensor], strength: float,
                 sigma_start: float, sigma_end: float):
        self.model = model
        self._encode = encode  # () -> f_SD for the conditional batch (B_rep, T, D), on the model's device
        self.strength = float(strength)
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self.kv_projections = 0  # how often k/v of f_SD were projected (tests assert once per block)
        self.calls = 0  # FRC layer applications (tests assert every block fires)
        self.fired: set = set()
        self._kv: dict = {}
        self._batch_kv: dict = {}
        self._active: tuple = (None, False)

    # ---- cached inputs ------------------------------------------------------------------
    def _tokens(self, device, dtype):
        key = ("tokens", device, dtype)
        if key not in self._kv:
            with torch.no_grad():
                cond = self._encode(self.model)
                null = self.model.null_encoding()
            self._kv[key] = (cond.to(device, dtype), null.to(device, dtype))
        return self._kv[key]

    def _block_kv(self, block_key, device, dtype):
        key = (block_key, device, dtype)
        if key not in self._kv:
            cond, null = self._tokens(device, dtype)
            layer = self.model.frc.layer(block_key)
            with torch.no_grad():
                self._kv[key] = (layer.project_tokens(cond), layer.project_tokens(null))
            self.kv_projections += 1
        return self._kv[key]

    def batch_kv(self, block_key, cond_or_uncond: tuple, batch: int, device, dtype):
        """k, v laid out like the UNet batch: one chunk per cond_or_uncond entry (0 cond, 1 uncond)."""
        key = (block_key, cond_or_uncond, batch, device, dtype)
        cached = self._batch_kv.get(key)
        if cached is not None:
            return cached
        (kc, vc), (kn, vn) = self._block_kv(block_key, device, dtype)
        chunk = batch // len(cond_or_uncond)
        if kc.shape[0] not in (1, chunk):
            raise ValueError(
                f"FaceX: the representation holds {kc.shape[0]} faces but the latent batch is {chunk}; "
                f"give one face (it is used for every latent) or exactly one face per latent"
            )
        ks, vs = [], []
        for c in cond_or_uncond:
            k, v = (kn, vn) if c == 1 else (kc, vc)
            ks.append(k.expand(chunk, *k.shape[1:]))
            vs.append(v.expand(chunk, *v.shape[1:]))
        out = (torch.cat(ks), torch.cat(vs))
        self._batch_kv[key] = out
        return out

    def active(self, extra_options: dict) -> bool:
        """Strength and the sigma range (start/end percent) decide whether FRC acts this step."""
        if self.strength == 0.0:
            return False
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        last, result = self._active
        if last is sigmas:  # same step: every block of one model call shares this tensor
            return result
        sigma = float(sigmas.reshape(-1)[0])
        result = self.sigma_end <= sigma <= self.sigma_start
        self._active = (sigmas, result)
        return result

    def release(self) -> None:
        self._kv.clear()
        self._batch_kv.clear()


class FRCPatch:
    """The hook pair ComfyUI calls. Deep copies share the runtime (ComfyUI deep-copies
    model_options on every clone; copying the weights each time would cost hundreds of MB)."""

    def __init__(self, runtime: FRCRuntime, models: Optional[Callable[[], list]] = None):
        self.runtime = runtime
        self._models = models or (lambda: [])
        self._stash: dict = {}
        self.middle = _Hook(self, "middle")
        self.output = _Hook(self, "output")

    def on_middle(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.runtime.active(extra_options):
            self._stash[_block_key(extra_options)] = x
        return x

    def on_output(self, n: torch.Tensor, extra_options: dict) -> torch.Tensor:
        rt = self.runtime
        key = _block_key(extra_options)
        x = self._stash.pop(key, None)
        if x is None or not rt.active(extra_options):
            return n
        k, v = rt.batch_kv(key, tuple(extra_options.get("cond_or_uncond", (0,))), n.shape[0], n.device, n.dtype)
        delta = rt.model.frc.layer(key)(x + n, k, v)
        rt.calls += 1
        rt.fired.add(key)
        if rt.strength != 1.0:
            delta = delta * rt.strength
        return n + delta


class _Hook:
    """One callable per hook list entry, with the .to()/.models() ComfyUI's model manager uses."""

    def __init__(self, patch: FRCPatch, which: str):
        self.patch, self.which = patch, which

    def __call__(self, tensor, extra_options):
        if self.which == "middle":
            return self.patch.on_middle(tensor, extra_options)
        return self.patch.on_output(tensor, extra_options)

    def to(self, device_or_dtype):
        # The FaceX weights are a ModelPatcher of their own (see models()); the model manager
        # moves them. Cached projections for another device are dropped lazily by the cache key.
        return self

    def models(self):
        return self.patch._models() if self.which == "output" else []

    def __deepcopy__(self, memo):
        return self


def _block_key(extra_options: dict) -> tuple[str, int, int]:
    block = extra_options["block"]
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))
