"""Real face photos for the FORD tests, and the variants the tests need (all offline, licence-clean).

Photos (RGB uint8 HxWx3):
- ``astronaut()``: ``skimage.data.astronaut()``, Eileen Collins, NASA photo; public domain (scikit-image
  lists it as such). 512x512, one frontal face at about x 175-280, y 65-170.
- ``grace_hopper()``: matplotlib's sample ``grace_hopper.jpg`` (Grace Hopper, official US Navy
  photograph, a US-government work, public domain). 600x512 (HxW), one frontal face.

Non-face images: ``blank()`` (flat grey), ``coffee()`` (``skimage.data.coffee()``, a cup of coffee,
public domain per scikit-image).

Variant makers take and return uint8 numpy images: ``flip`` (mirror left-right), ``rescale`` (resize by
a factor), ``jpeg`` (re-encode at a quality), ``grayscale`` (HxW, one channel), ``rgba`` (HxWx4 with an
alpha channel), ``upscale_4k`` (the photo scaled to 2160 px high on a 3840x2160 canvas), ``shrink_into``
(the photo shrunk onto a larger canvas so its face is tiny), ``side_by_side`` (two photos in one image).

``to_image_batch`` turns photos into a ComfyUI IMAGE tensor (BHWC float in [0, 1]).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

# Face boxes measured on the photos (x0, y0, x1, y1 in px), loose enough for any detector.
ASTRONAUT_FACE_BOX = (160, 50, 295, 190)
GRACE_HOPPER_FACE_BOX = (150, 90, 380, 360)


@lru_cache(maxsize=None)
def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def astronaut() -> np.ndarray:
    """skimage.data.astronaut(): 512x512 RGB uint8, public domain (NASA)."""
    return _astronaut().copy()


@lru_cache(maxsize=None)
def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def grace_hopper() -> np.ndarray:
    """matplotlib's sample grace_hopper.jpg: 600x512 RGB uint8, US Navy photo, public domain."""
    return _grace_hopper().copy()


def coffee() -> np.ndarray:
    """skimage.data.coffee(): a cup of coffee, no face (400x600 RGB uint8)."""
    from skimage import data

    return np.ascontiguousarray(data.coffee())


def blank(height: int = 512, width: int = 512, value: int = 128) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


# ---- variants -----------------------------------------------------------------------------------


def flip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(image[:, ::-1])


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (Lanczos, PIL)."""
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def jpeg(image: np.ndarray, quality: int = 30) -> np.ndarray:
    """Re-encode as JPEG at ``quality`` (compression artefacts)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(image.ndim == 2 and "L" or "RGB"))


def grayscale(image: np.ndarray) -> np.ndarray:
    """HxW uint8 luminance (ITU-R 601 weights)."""
    return np.round(image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


def rgba(image: np.ndarray, alpha: int = 200) -> np.ndarray:
    """HxWx4 uint8: the photo plus a constant alpha channel."""
    a = np.full(image.shape[:2] + (1,), alpha, np.uint8)
    return np.concatenate([image[..., :3], a], axis=2)


def upscale_4k(image: np.ndarray) -> np.ndarray:
    """The photo resized to 2160 px high and centred on a 3840x2160 (4K UHD) canvas of its edge colour."""
    h, w = image.shape[:2]
    new_w = round(w * 2160 / h)
    big = resize_to(image, new_w, 2160)
    canvas = np.empty((2160, 3840, 3), np.uint8)
    canvas[...] = image[:, :1].mean(axis=(0, 1)).astype(np.uint8)
    x0 = (3840 - new_w) // 2
    canvas[:, x0 : x0 + new_w] = big
    return canvas


def upscale_4k_offset(image: np.ndarray) -> tuple[int, float]:
    """(x offset, scale) that ``upscale_4k`` applied: canvas x = x0 + scale * photo x."""
    h, w = image.shape[:2]
    scale = 2160 / h
    return (3840 - round(w * scale)) // 2, scale


def shrink_into(image: np.ndarray, factor: float, canvas_hw: tuple[int, int] = (512, 512), at: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The photo shrunk by ``factor`` and pasted at ``at`` (y, x) on a grey canvas: a tiny face."""
    small = rescale(image, factor)
    canvas = blank(*canvas_hw)
    y, x = at
    h, w = min(small.shape[0], canvas_hw[0] - y), min(small.shape[1], canvas_hw[1] - x)
    canvas[y : y + h, x : x + w] = small[:h, :w]
    return canvas


def side_by_side(left: np.ndarray, right: np.ndarray, height: int = 512) -> np.ndarray:
    """Two photos resized to the same height and placed next to each other."""
    parts = [resize_to(im, round(im.shape[1] * height / im.shape[0]), height) for im in (left, right)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


# ---- ComfyUI tensors -------------------------------------------------------------------------------


def to_image_batch(*images: np.ndarray):
    """ComfyUI IMAGE: (B, H, W, C) float32 in [0, 1]; all images must share H, W and channels."""
    import torch

    arrays = [im if im.ndim == 3 else im[..., None] for im in images]
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def box_contains(box, points, margin: float = 0.0) -> bool:
    x0, y0, x1, y1 = box
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return bool(((p[:, 0] >= x0 - margin) & (p[:, 0] <= x1 + margin) & (p[:, 1] >= y0 - margin) & (p[:, 1] <= y1 + margin)).all())
