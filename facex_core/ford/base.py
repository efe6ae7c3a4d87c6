"""The FORD protocols: what every detector and every extractor backend looks like.

Two shapes only:
- a ``Detector`` finds faces in a full image (numpy uint8 HxWx3) and returns boxes with five
  landmarks; alignment then cuts canonical crops from them;
- an ``Extractor`` reads aligned crops (torch float BxCxSxS in [0, 1]) plus the representation
  built so far, and returns the representation fields it fills.

Backends register themselves in ``REGISTRY`` (family -> name -> BackendInfo) so the nodes list
them as data, and heavy dependencies (mediapipe, dlib, onnxruntime) are imported inside the
backend's factory only: one missing package disables one backend, never the pack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from ..representation import FaceRepresentation

# Extractor families and the representation fields each may fill.
FAMILIES: dict[str, tuple[str, ...]] = {
    "detect": ("affine", "image_hw", "landmarks5"),
    "landmarks": ("landmarks",),
    "identity": ("identity", "identity_map"),
    "parse": ("region_masks",),
    "motion": ("pose", "expression", "texture", "lighting"),
    "gaze": ("gaze",),
    "region_features": ("region_features", "clip_tokens"),
}


class BackendUnavailable(RuntimeError):
    """A backend's package or model file is missing; the message says what to install or where to put it."""


@dataclass
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image px
    score: float
    landmarks5: np.ndarray  # (5, 2) left eye, right eye, nose tip, left mouth corner, right mouth corner (image px, subject's left = image right)


@runtime_checkable
class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in one RGB uint8 HxWx3 image, any order."""


@runtime_checkable
class Extractor(Protocol):
    name: str
    family: str

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        """Fields for each crop (B,3,S,S float in [0,1]); keys are a subset of FAMILIES[family]."""


@dataclass
class BackendInfo:
    family: str
    name: str
    factory: Callable[..., object]  # factory(**options) -> Detector or Extractor
    embedded: bool  # works offline with packages only (no user model files)
    licence: str
    description: str
    files: tuple[str, ...] = field(default_factory=tuple)  # model files a production backend expects


REGISTRY: dict[str, dict[str, BackendInfo]] = {family: {} for family in FAMILIES}


def register(info: BackendInfo) -> BackendInfo:
    if info.family not in REGISTRY:
        raise ValueError(f"unknown FORD family {info.family!r}")
    REGISTRY[info.family][info.name] = info
    return info


def backends(family: str, embedded: Optional[bool] = None) -> list[BackendInfo]:
    return [b for b in REGISTRY[family].values() if embedded is None or b.embedded == embedded]


def apply_extractor(extractor: Extractor, crops: torch.Tensor, rep: FaceRepresentation) -> FaceRepresentation:
    """Run one extractor and record which backend filled which fields."""
    allowed = FAMILIES[extractor.family]
    out = extractor(crops, rep)
    stray = set(out) - set(allowed)
    if stray:
        raise RuntimeError(f"backend {extractor.name} returned fields {sorted(stray)} outside its family {extractor.family}")
    parts = {}
    from ..representation import FIELDS

    for name in out:
        parts[FIELDS[name].part] = extractor.name
    return rep.replace(**out, backends={**rep.backends, **parts})
