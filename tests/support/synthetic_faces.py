"""Synthetic faces for fast, deterministic FORS tests (no FORD run, no weights).

A synthetic face is a cartoon drawn from ellipses in the aligned-crop frame: skin oval, brows,
eyes, nose, lips, ears, a hair cap, neck, cloth band, background. Its ``region_masks`` are the
one-hot label map softened by a 3x3 box filter (soft edges, exact 1.0 inside each region, masks
summing to 1 like a parser's softmax). Its crop paints every region in a colour of its own,
shifted per face so pixels of two faces differ everywhere. Every other field is random but
seeded, so each face (and each batch item) is distinguishable: a test can tell which face a
field came from with ``torch.equal``.

Backends are recorded as ``synthetic-<part>``; pass ``backends=`` to fake other extractors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from facex_core.regions import REGION_COLOURS, REGION_INDEX, REGIONS
from facex_core.representation import FIELDS, FaceRepresentation

# Sizes of the backend-dependent dims (small, to keep tests fast).
DIMS = {
    "identity": (64,),
    "identity_map": (8, 4, 4),
    "landmarks": (68, 2),
    "expression": (16,),
    "texture": (20,),
    "lighting": (27,),
    "region_features": (len(REGIONS), 24),
    "clip_tokens": (9, 24),
}

DEFAULT_BACKENDS = {spec.part: f"synthetic-{spec.part}" for spec in FIELDS.values()}

# Painting order: later regions cover earlier ones.
_PAINT_ORDER = ("background", "cloth", "neck", "hair", "ears", "skin", "eyebrows", "eyes", "nose", "lips")


@dataclass
class SyntheticFace:
    crops: torch.Tensor  # (B, 3, S, S) float in [0, 1]
    rep: FaceRepresentation
    labels: torch.Tensor  # (B, S, S) int64 region index before softening


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def label_map(size: int, gen: torch.Generator, bald: bool = False, no_face: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S) region labels and the five landmarks (crop px) of one cartoon face."""
    s = float(size)
    jitter = (torch.rand(3, generator=gen) - 0.5)  # centre x, centre y, scale
    cx = s * (0.5 + 0.06 * jitter[0].item())
    cy = s * (0.47 + 0.06 * jitter[1].item())
    k = s * (1.0 + 0.12 * jitter[2].item())
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5, torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    shapes = {
        "background": torch.ones(size, size, dtype=torch.bool),
        "cloth": yy > 0.86 * s,
        "neck": ((xx - cx).abs() < 0.12 * k) & (yy > cy + 0.2 * k),
        "hair": torch.zeros(size, size, dtype=torch.bool) if bald else _ellipse(yy, xx, cy - 0.1 * k, cx, 0.36 * k, 0.35 * k),
        "ears": _ellipse(yy, xx, cy, cx - 0.27 * k, 0.09 * k, 0.05 * k) | _ellipse(yy, xx, cy, cx + 0.27 * k, 0.09 * k, 0.05 * k),
        "skin": _ellipse(yy, xx, cy, cx, 0.33 * k, 0.25 * k),
        "eyebrows": _ellipse(yy, xx, cy - 0.13 * k, cx - 0.1 * k, 0.022 * k, 0.07 * k)
        | _ellipse(yy, xx, cy - 0.13 * k, cx + 0.1 * k, 0.022 * k, 0.07 * k),
        "eyes": _ellipse(yy, xx, cy - 0.06 * k, cx - 0.1 * k, 0.03 * k, 0.06 * k)
        | _ellipse(yy, xx, cy - 0.06 * k, cx + 0.1 * k, 0.03 * k, 0.06 * k),
        "nose": _ellipse(yy, xx, cy + 0.04 * k, cx, 0.07 * k, 0.035 * k),
        "lips": _ellipse(yy, xx, cy + 0.17 * k, cx, 0.035 * k, 0.09 * k),
    }
    if no_face:  # a crop in which the parser found nothing but background
        shapes = {"background": shapes["background"]}
    labels = torch.zeros(size, size, dtype=torch.int64)
    for name in _PAINT_ORDER:
        if name in shapes:
            labels[shapes[name]] = REGION_INDEX[name]
    lm5 = torch.tensor(
        [
            [cx + 0.1 * k, cy - 0.06 * k],  # subject's left eye = image right
            [cx - 0.1 * k, cy - 0.06 * k],
            [cx, cy + 0.08 * k],
            [cx + 0.08 * k, cy + 0.17 * k],
            [cx - 0.08 * k, cy + 0.17 * k],
        ]
    )
    return labels, lm5


def soft_masks(labels: torch.Tensor) -> torch.Tensor:
    """(B, S, S) labels -> (B, R, S, S) masks: one-hot softened by a 3x3 box (interiors stay 1.0)."""
    onehot = F.one_hot(labels, len(REGIONS)).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, 3, stride=1, padding=1, count_include_pad=False)


def paint(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, S, S) labels -> (B, 3, S, S) crops: each region a clearly coloured, slightly noisy fill."""
    base = torch.tensor(REGION_COLOURS, dtype=torch.float32) / 255.0  # (R, 3)
    # A per-face colour shift keeps two faces apart; +0.15 on one channel keeps every fill non-grey.
    shift = (torch.rand(1, 3, generator=gen) - 0.5) * 0.4
    colours = (base * 0.7 + shift + torch.tensor([0.15, 0.0, 0.05])).clamp(0.05, 0.95)
    img = colours[labels].permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
    noise = (torch.rand(img.shape, generator=gen) - 0.5) * 0.04
    return (img + noise).clamp(0, 1)


def synthetic_face(
    seed: int,
    batch: int = 1,
    size: int = 64,
    *,
    bald: bool = False,
    no_face: bool = False,
    dims: Optional[dict] = None,
    backends: Optional[dict] = None,
    omit: tuple[str, ...] = (),
) -> SyntheticFace:
    """One synthetic face per batch item (items differ too), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    d = {**DIMS, **(dims or {})}
    labels, lm5 = zip(*(label_map(size, gen, bald=bald, no_face=no_face) for _ in range(batch)))
    labels = torch.stack(labels)
    lm5 = torch.stack(lm5)

    def randn(*shape):
        return torch.randn(batch, *shape, generator=gen)

    identity = F.normalize(randn(*d["identity"]), dim=-1)
    angle = (torch.rand(batch, generator=gen) - 0.5) * 0.2
    scale = 0.5 + torch.rand(batch, generator=gen) * 0.2
    affine = torch.stack(
        [
            torch.stack([scale * angle.cos(), -scale * angle.sin(), torch.rand(batch, generator=gen) * 50], -1),
            torch.stack([scale * angle.sin(), scale * angle.cos(), torch.rand(batch, generator=gen) * 50], -1),
        ],
        1,
    )
    fields = {
        "affine": affine,
        "image_hw": torch.tensor([[480 + seed % 100, 640]] * batch, dtype=torch.int64),
        "landmarks5": lm5,
        "landmarks": torch.rand(batch, *d["landmarks"], generator=gen) * size,
        "identity": identity,
        "identity_map": randn(*d["identity_map"]),
        "region_masks": soft_masks(labels),
        "region_features": randn(*d["region_features"]),
        "clip_tokens": randn(*d["clip_tokens"]),
        "pose": (torch.rand(batch, 3, generator=gen) - 0.5),
        "expression": randn(*d["expression"]),
        "texture": randn(*d["texture"]),
        "lighting": randn(*d["lighting"]),
        "gaze": (torch.rand(batch, 2, generator=gen) - 0.5),
    }
    for name in omit:
        fields[name] = None
    parts = {FIELDS[n].part for n, t in fields.items() if t is not None}
    recorded = {p: b for p, b in {**DEFAULT_BACKENDS, **(backends or {})}.items() if p in parts}
    rep = FaceRepresentation(crop_size=size, backends=recorded, **fields)
    return SyntheticFace(crops=paint(labels, gen), rep=rep, labels=labels)


def face_pair(batch: int = 1, size: int = 64, **kwargs):
    """A source (seed 1), a target (seed 2) and a third face (seed 3)."""
    return (
        synthetic_face(1, batch, size, **kwargs),
        synthetic_face(2, batch, size, **kwargs),
        synthetic_face(3, batch, size, **kwargs),
    )
