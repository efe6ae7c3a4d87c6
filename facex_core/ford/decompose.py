"""FORD all in one: photos -> aligned head crops -> FaceRepresentation (paper Sec. 3.2).

``decompose(images)`` detects and aligns the faces (align.py), runs the dense landmarks
(MediaPipe FaceMesh) and then each extractor through ``base.apply_extractor``, which records the
backend of every part. With no extractors given it runs a *backend set*:

- ``"embedded"``: the offline backends whose models ship in packages (EMBEDDED_EXTRACTORS);
- ``"landmarks"``: detection and dense landmarks only;
- ``"detect"``: detection and alignment only.

Extractors that read the dense landmarks (the embedded parse / motion / gaze backends) find them in
the representation because landmarks always run first. A failure names the image of the batch
(and the face, when an image gave several) and the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch

from ..align import AlignError, FACE_CHOICES, detect_and_align, image_label
from ..representation import FaceRepresentation
from .base import FAMILIES, REGISTRY, BackendUnavailable, Detector, Extractor, apply_extractor

# family -> backend name of the embedded (offline) set, in the order they run.
EMBEDDED_EXTRACTORS: dict[str, str] = {
    "parse": "mediapipe_mesh",
    "identity": "dlib_resnet",
    "motion": "mesh_pnp",
    "gaze": "iris",
}
BACKEND_SETS: dict[str, dict[str, str]] = {
    "embedded": EMBEDDED_EXTRACTORS,
    "landmarks": {},
    "detect": {},
}
LANDMARKS_BACKEND = "mediapipe_mesh"
DEFAULT_DETECTOR = "mediapipe"
# Families in run order: landmarks first (others read them), region features last (they pool parse masks).
RUN_ORDER = ("landmarks", "parse", "identity", "motion", "gaze", "region_features")


class DecomposeError(ValueError):
    """FORD could not decompose a batch; the message names the image and the backend."""


def _backend(family: str, name: str, **options):
    infos = REGISTRY.get(family, {})
    if name not in infos:
        raise DecomposeError(f"no FORD {family} backend named {name!r}; available: {', '.join(infos) or 'none'}")
    return infos[name].factory(**options)


def make_detector(name: str = DEFAULT_DETECTOR, **options) -> Detector:
    """A registered detector by name ("mediapipe", "dlib", "insightface_scrfd" + its file options)."""
    return _backend("detect", name, **options)


def default_extractors(backends: str = "embedded") -> list[Extractor]:
    """The extractors of a backend set (BACKEND_SETS), built from the REGISTRY in run order
    (dense landmarks are not included: decompose runs them itself)."""
    if backends not in BACKEND_SETS:
        raise DecomposeError(f"unknown FORD backend set {backends!r}; choose one of {', '.join(BACKEND_SETS)}")
    chosen = BACKEND_SETS[backends]
    return [_backend(family, chosen[family]) for family in RUN_ORDER if family in chosen]


def _resolve_extractors(extractors, backends: str) -> list[Extractor]:
    if extractors is None:
        return default_extractors(backends)
    if isinstance(extractors, Mapping):  # family -> name | Extractor | None (skip)
        out = []
        for family, value in extractors.items():
            if family not in FAMILIES or family == "detect":
                raise DecomposeError(f"unknown extractor family {family!r}; families: {', '.join(f for f in FAMILIES if f != 'detect')}")
            if value is None:
                continue
            out.append(_backend(family, value) if isinstance(value, str) else value)
        extractors = out
    for e in extractors:
        if not isinstance(e, Extractor):
            raise DecomposeError(f"{type(e).__name__} is not a FORD extractor (needs name, family and __call__(crops, rep))")
    order = {f: i for i, f in enumerate(RUN_ORDER)}
    return sorted(extractors, key=lambda e: order.get(e.family, len(order)))  # stable: same family keeps its order


@dataclass
class Decomposition:
    rep: FaceRepresentation
    crops: torch.Tensor  # (F, 3, S, S) float in [0, 1]
    image_index: list[int] = field(default_factory=list)  # image of the batch each face came from
    detections: list = field(default_factory=list)

    @property
    def crops_bhwc(self) -> torch.Tensor:
        return self.crops.permute(0, 2, 3, 1).contiguous()


def _face_label(k: int, image_index: Sequence[int], batch: int) -> str:
    i = image_index[k]
    if list(image_index) == list(range(batch)):
        return image_label(i, batch)
    return f"face {k} (0-based) of the decomposition, from {image_label(i, batch)}"


def run_extractor(extractor: Extractor, crops: torch.Tensor, rep: FaceRepresentation, image_index: Sequence[int], batch: int) -> FaceRepresentation:
    """apply_extractor, and on failure find the face that fails and name its image."""
    try:
        return apply_extractor(extractor, crops, rep)
    except BackendUnavailable:
        raise
    except Exception as e:
        culprit = None
        if crops.shape[0] > 1:
            for k in range(crops.shape[0]):
                try:
                    apply_extractor(extractor, crops[k : k + 1], rep.index(k))
                except Exception as single:  # the first face that fails on its own
                    culprit, e = k, single
                    break
        where = _face_label(culprit, image_index, batch) if culprit is not None else (
            _face_label(0, image_index, batch) if crops.shape[0] == 1 else f"a batch of {crops.shape[0]} faces"
        )
        raise DecomposeError(f"FORD {extractor.family} backend {extractor.name!r} failed on {where}: {e}") from e


def decompose_faces(
    images,
    detector: Union[str, Detector] = DEFAULT_DETECTOR,
    extractors: Union[None, Sequence[Extractor], Mapping[str, object]] = None,
    crop_size: int = 512,
    face_choice: str = "largest",
    index: int = 0,
    min_face: float = 0,
    backends: str = "embedded",
    landmarks: Union[bool, Extractor] = True,
    max_detect_side: int = 1280,
) -> Decomposition:
    """Like ``decompose`` but returns the crops BCHW and which image each face came from."""
    if face_choice not in FACE_CHOICES:
        raise DecomposeError(f"unknown face choice {face_choice!r}; choose one of {', '.join(FACE_CHOICES)}")
    det = make_detector(detector) if isinstance(detector, str) else detector
    chosen = _resolve_extractors(extractors, backends)
    if backends == "detect" and landmarks is True:  # detection and alignment only
        landmarks = False
    aligned = detect_and_align(images, det, crop_size=crop_size, face_choice=face_choice, index=index, min_face_size=min_face,
                               max_detect_side=max_detect_side)
    batch = aligned.batch_size
    rep = FaceRepresentation(
        crop_size=crop_size,
        affine=aligned.affine,
        image_hw=aligned.image_hw,
        landmarks5=aligned.landmarks5,
        backends={"detect": getattr(det, "name", type(det).__name__)},
    )
    steps: list[Extractor] = []
    if landmarks and not any(e.family == "landmarks" for e in chosen):
        steps.append(_backend("landmarks", LANDMARKS_BACKEND) if landmarks is True else landmarks)
    steps += chosen
    for extractor in steps:
        rep = run_extractor(extractor, aligned.crops, rep, aligned.image_index, batch)
    return Decomposition(rep=rep, crops=aligned.crops, image_index=aligned.image_index, detections=aligned.detections)


def decompose(
    images,
    detector: Union[str, Detector] = DEFAULT_DETECTOR,
    extractors: Union[None, Sequence[Extractor], Mapping[str, object]] = None,
    crop_size: int = 512,
    face_choice: str = "largest",
    index: int = 0,
    min_face: float = 0,
    backends: str = "embedded",
    **options,
) -> tuple[FaceRepresentation, torch.Tensor]:
    """Decompose the faces of ``images`` (B, H, W, C) float in [0, 1] (ComfyUI IMAGE; uint8 numpy,
    grayscale and RGBA also accepted).

    detector     a registered detector name ("mediapipe", "dlib") or a Detector object;
    extractors   Extractor objects, a {family: name | Extractor | None} dict, or None for the
                 ``backends`` set ("embedded" by default);
    crop_size    aligned crop size (256 or 512 in the nodes);
    face_choice  "largest", "index" (with ``index``) or "left_to_right" (align.FACE_CHOICES);
    min_face     faces whose detection box is narrower than this many source px are ignored.
    Returns (representation, aligned crops (F, S, S, 3) float BHWC) with F faces.
    Raises DecomposeError / align.AlignError naming the image of the batch that failed and why.
    """
    result = decompose_faces(images, detector, extractors, crop_size, face_choice, index, min_face, backends, **options)
    return result.rep, result.crops_bhwc


__all__ = [
    "AlignError",
    "BACKEND_SETS",
    "DecomposeError",
    "Decomposition",
    "EMBEDDED_EXTRACTORS",
    "decompose",
    "decompose_faces",
    "default_extractors",
    "make_detector",
    "run_extractor",
]
