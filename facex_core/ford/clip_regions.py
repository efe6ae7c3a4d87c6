"""Region CLIP features: CLIP patch tokens pooled under each region mask (the paper's region appearance).

``encode_fn`` runs a CLIP vision model on the aligned crops and gives its penultimate hidden states
(B, 1 + N, D): one CLS token then N = g*g patch tokens in row-major order over the (square) input.
In ComfyUI that is ``clip_vision.encode_image(crops_bhwc).penultimate_hidden_states`` (the node layer
builds the function; the paper uses CLIP ViT-L/14: 224 px, g = 16, D = 1024).

- ``clip_tokens`` = the N patch tokens (CLS dropped), (B, N, D);
- ``region_features`` (B, R, D): each region mask (B, R, S, S) is area-averaged onto the g x g patch
  grid and used as weights: feature = sum_i w_i t_i / sum_i w_i. A region with no weight at all
  (total below EMPTY_WEIGHT, in patch units) gets a zero vector: "region absent" is then the same
  input the model sees for a null representation, rather than an average of unrelated patches.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..representation import FaceRepresentation
from .base import BackendInfo, register

LICENCE = "uses the CLIP vision model given to it (the paper: OpenAI CLIP ViT-L/14, MIT licence)"
EMPTY_WEIGHT = 1e-4  # total mask weight (in patches) below which a region counts as absent


def hidden_states(encoded) -> torch.Tensor:
    """Accept a tensor, an object with ``penultimate_hidden_states`` (ComfyUI's CLIP_VISION output) or a dict."""
    if isinstance(encoded, torch.Tensor):
        return encoded
    value = encoded.get("penultimate_hidden_states") if isinstance(encoded, dict) else getattr(encoded, "penultimate_hidden_states", None)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"the CLIP vision encoder returned {type(encoded).__name__}, not hidden states (B, 1+N, D) nor an object with penultimate_hidden_states")


def patch_tokens(states: torch.Tensor) -> torch.Tensor:
    """(B, 1+N, D) -> (B, N, D) without the CLS token; N must be a square number (a g x g grid)."""
    if states.dim() != 3:
        raise ValueError(f"CLIP hidden states must be (batch, 1 + patches, dim), got shape {tuple(states.shape)}")
    n = states.shape[1] - 1
    g = math.isqrt(max(n, 0))
    if n <= 0 or g * g != n:
        raise ValueError(
            f"CLIP hidden states have {states.shape[1]} tokens; expected 1 CLS token plus a square grid of patch tokens "
            f"(257 = 1 + 16x16 for ViT-L/14 at 224 px)"
        )
    return states[:, 1:]


def pool_regions(tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask-weighted average of patch tokens (B,N,D) per region mask (B,R,S,S) -> (B,R,D); empty regions -> 0."""
    b, n, d = tokens.shape
    g = math.isqrt(n)
    if masks.dim() != 4 or masks.shape[0] != b:
        raise ValueError(f"region masks must be (batch={b}, regions, S, S), got shape {tuple(masks.shape)}")
    weights = F.adaptive_avg_pool2d(masks.to(device=tokens.device, dtype=torch.float32), (g, g)).flatten(2)  # (B,R,N)
    total = weights.sum(dim=2, keepdim=True)
    pooled = torch.bmm(weights, tokens.float()) / total.clamp_min(EMPTY_WEIGHT)
    return torch.where(total >= EMPTY_WEIGHT, pooled, torch.zeros_like(pooled))


def extract_region_features(encode_fn: Callable, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
    """``clip_tokens`` (B,N,D) and ``region_features`` (B,R,D) for aligned crops (B,3,S,S) in [0,1].

    Needs ``rep.region_masks`` (run a face parser first).
    """
    rep.require("region_masks", purpose="region CLIP features")
    if crops.shape[0] != rep.batch_size:
        raise ValueError(f"region CLIP features: {crops.shape[0]} crops but the face representation holds {rep.batch_size} faces")
    with torch.no_grad():
        states = hidden_states(encode_fn(crops))
    if states.shape[0] != crops.shape[0]:
        raise ValueError(f"the CLIP vision encoder returned {states.shape[0]} results for {crops.shape[0]} crops")
    tokens = patch_tokens(states).detach().float().cpu()
    features = pool_regions(tokens, rep.region_masks.float().cpu())
    return {"clip_tokens": tokens.contiguous(), "region_features": features.contiguous()}


class ClipRegionExtractor:
    """FaceX ``Extractor`` (family 'region_features') around a CLIP vision encode function."""

    family = "region_features"

    def __init__(self, encode_fn: Callable, name: str = "clip_region_pool"):
        self.encode_fn = encode_fn
        self.name = name

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        return extract_region_features(self.encode_fn, crops, rep)


def make_region_extractor(encode_fn: Callable, model_name: str = "clip_vision") -> ClipRegionExtractor:
    return ClipRegionExtractor(encode_fn, name=f"clip_region_pool:{model_name}")


register(
    BackendInfo(
        family="region_features",
        name="clip_region_pool",
        factory=make_region_extractor,
        embedded=False,
        licence=LICENCE,
        description="mask-average pooling of CLIP vision patch tokens per face region (needs a CLIP_VISION model and region masks)",
        files=(),
    )
)
