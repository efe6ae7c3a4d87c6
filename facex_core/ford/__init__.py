"""FORD: the face decomposition backends (paper Sec. 3.2).

Importing this package imports every backend module so each registers itself in
``base.REGISTRY``. Heavy packages (mediapipe, dlib, cv2, onnxruntime, onnx) are imported inside the
backends, so a missing one surfaces as BackendUnavailable when that backend is used; only a missing
*optional package* at import time is tolerated here (logged), never a bug in a module.
"""

from __future__ import annotations

import gc
import importlib
import logging

from .base import REGISTRY, BackendInfo, BackendUnavailable, Detection, Detector, Extractor, apply_extractor, backends, register

log = logging.getLogger("facex")

# Embedded (offline) backends first, then production ones; clip_regions last (it needs parse masks).
BACKEND_MODULES = (
    "mediapipe_detect",
    "dlib_detect",
    "mediapipe_extractors",
    "dlib_identity",
    "insightface_onnx",
    "bisenet",
    "deep3d",
    "l2cs",
    "clip_regions",
)
OPTIONAL_PACKAGES = ("mediapipe", "dlib", "cv2", "onnxruntime", "onnx", "face_recognition_models", "google")

UNAVAILABLE: dict[str, str] = {}  # module -> why it could not be imported

for _name in BACKEND_MODULES:
    try:
        importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as _e:
        _missing = (_e.name or "").split(".")[0]
        if _missing == _name or _missing in OPTIONAL_PACKAGES:
            UNAVAILABLE[_name] = str(_e)
            log.warning("FaceX: FORD backend module %s not available: %s", _name, _e)
        else:
            raise


def release_all(collect: bool = True) -> int:
    """Drop every cached model / session of every backend module; returns how many were dropped.

    ``collect`` then runs the garbage collector and empties torch's CUDA cache. Pass False where the
    caller collects anyway and must not have objects finalised under it (inside ComfyUI's unloading
    loop, a collected model removes itself from the list being walked).
    """
    freed = 0
    for name in ("onnx_session",) + BACKEND_MODULES:
        module = importlib.import_module(f".{name}", __name__) if name not in UNAVAILABLE else None
        fn = getattr(module, "release_all", None)
        if callable(fn):
            freed += int(fn() or 0)
    if collect:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # torch missing or CUDA in a bad state: nothing more to free here
            pass
    return freed


__all__ = [
    "REGISTRY",
    "BackendInfo",
    "BackendUnavailable",
    "Detection",
    "Detector",
    "Extractor",
    "apply_extractor",
    "backends",
    "register",
    "release_all",
    "UNAVAILABLE",
]
