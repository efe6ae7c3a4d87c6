"""Face alignment: the canonical head crop, 5-point similarity fit, warping and paste-back.

Conventions
- Pixel centres sit at integer coordinates (OpenCV's warpAffine convention): an S-px crop spans
  [-0.5, S - 0.5]. A 2x3 ``affine`` maps source-image px -> crop px; ``FaceRepresentation.affine``
  stores exactly this matrix.
- Five points are in FaceX order (ford/base.py Detection): subject's left eye (image right),
  subject's right eye, nose tip, subject's left mouth corner, subject's right mouth corner.

The template frames a *head*, not a face: FaceX edits hair, ears and the top of the neck, so the
crop follows the FFHQ framing (eyes at 47 % of the height, eye distance about a quarter of the crop)
rather than ArcFace's tight 112-px face crop. Backends that need their own framing (ArcFace 112,
Deep3DFaceRecon 224, L2CS 448) re-cut these crops with ``ford.resnet.warp_to_template``.

Everything here is torch/numpy. Warps use ``affine_grid``/``grid_sample`` on the part of the image
the crop covers only, so a 4K photo never becomes one large float tensor per face, and downscaling
(a large face into a 256-px crop, or a 512-px crop into a small face) low-pass filters first
(``interpolate(antialias=True)``) instead of aliasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ---- errors ------------------------------------------------------------------------------------


class AlignError(ValueError):
    """A face could not be found or chosen, or an input to alignment / paste-back is malformed."""


class NoFaceError(AlignError):
    """No (large enough) face in an image; the message names the batch index."""


def image_label(i: int, batch: Optional[int] = None) -> str:
    """'image 3 of 4 in the batch (0-based index 2)': how every per-image error names its image."""
    of = f" of {batch}" if batch is not None else ""
    return f"image {i + 1}{of} in the batch (0-based index {i})"


# ---- the template ------------------------------------------------------------------------------

# Five points in the unit crop (0..1 of its width/height), FaceX order. FFHQ framing: the mean FFHQ
# landmark positions, symmetrised about the vertical centre line.
HEAD_TEMPLATE_UNIT = np.array(
    [
        [0.6230, 0.4688],  # subject's left eye (image right)
        [0.3770, 0.4688],  # subject's right eye (image left)
        [0.5000, 0.6133],  # nose tip
        [0.6093, 0.7260],  # subject's left mouth corner (image right)
        [0.3907, 0.7260],  # subject's right mouth corner (image left)
    ],
    np.float64,
)
CROP_SIZES = (512, 256)


def head_template(crop_size: int) -> np.ndarray:
    """The five template points (5, 2) in px of a ``crop_size`` crop (pixel-centre convention)."""
    if not isinstance(crop_size, (int, np.integer)) or crop_size < 16:
        raise AlignError(f"crop_size must be an integer >= 16, got {crop_size!r}")
    return HEAD_TEMPLATE_UNIT * crop_size - 0.5


# ---- 2x3 matrices ------------------------------------------------------------------------------


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping the
    points ``src`` (N, 2) onto ``dst`` (N, 2): Umeyama (1991). Returns a 2x3 float64 matrix."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise AlignError(f"similarity fit needs two matching point sets of >= 2 points, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise AlignError("similarity fit got NaN or infinite landmark coordinates")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s < 1e-12:
        raise AlignError("similarity fit: all source landmarks coincide (degenerate face)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ np.diag(fix) @ vt
    scale = float((sig * fix).sum() / var_s)
    lin = rot * scale
    return np.concatenate([lin, (mu_d - lin @ mu_s)[:, None]], axis=1)


def to3x3(m) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.concatenate([m.reshape(2, 3), [[0.0, 0.0, 1.0]]], axis=0)


def invert_affine(m) -> np.ndarray:
    return np.linalg.inv(to3x3(m))[:2]


def compose(*ms) -> np.ndarray:
    """compose(a, b) = a after b (apply b first)."""
    out = np.eye(3)
    for m in ms:
        out = out @ to3x3(m)
    return out[:2]


def apply_affine(m, points) -> np.ndarray:
    p = np.asarray(points, np.float64)
    m = np.asarray(m, np.float64).reshape(2, 3)
    return p @ m[:, :2].T + m[:, 2]


def affine_scale(m) -> float:
    """Uniform scale of a (near-)similarity: crop px per source px for an alignment matrix."""
    m = np.asarray(m, np.float64).reshape(2, 3)
    return float(math.sqrt(abs(np.linalg.det(m[:, :2]))))


def alignment_matrix(landmarks5, crop_size: int) -> np.ndarray:
    """2x3 source px -> crop px putting the five points on the head template."""
    return estimate_similarity(landmarks5, head_template(crop_size))


# ---- images in -------------------------------------------------------------------------------------


def as_image_batch(images) -> torch.Tensor:
    """A batch as (B, H, W, C) float in [0, 1], C = 1, 3 or 4; accepts ComfyUI IMAGE (BHWC float),
    one HWC image, numpy uint8/float, or grayscale (B, H, W) / (H, W) arrays."""
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        t = images
    if not isinstance(t, torch.Tensor):
        raise AlignError(f"images must be a torch tensor or numpy array, got {type(images).__name__}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif not t.is_floating_point():
        raise AlignError(f"images must be float in [0, 1] or uint8, got dtype {t.dtype}")
    if t.dim() == 2:  # one grayscale image
        t = t[None, ..., None]
    elif t.dim() == 3:
        t = t[None] if t.shape[-1] in (1, 3, 4) else t[..., None]
    if t.dim() != 4 or t.shape[-1] not in (1, 3, 4):
        raise AlignError(f"images must be (batch, height, width, channels) with 1, 3 or 4 channels, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise AlignError("the image batch is empty")
    if t.shape[1] < 8 or t.shape[2] < 8:
        raise AlignError(f"images of {t.shape[2]}x{t.shape[1]} px are too small to hold a face")
    return t


def to_rgb(image_hwc: torch.Tensor) -> torch.Tensor:
    """(H, W, C) -> (H, W, 3): grayscale replicated, alpha dropped (ComfyUI's LoadImage gives alpha as a MASK)."""
    c = image_hwc.shape[-1]
    if c == 3:
        return image_hwc
    if c == 1:
        return image_hwc.expand(*image_hwc.shape[:-1], 3)
    return image_hwc[..., :3]


def detection_image(image_hwc: torch.Tensor, max_side: int) -> tuple[np.ndarray, float]:
    """RGB uint8 copy for a detector, downscaled so its long side is <= max_side (memory and time
    stay bounded on 4K input); returns (image, scale) with detection px = scale * source px."""
    h, w = image_hwc.shape[:2]
    scale = 1.0
    x = to_rgb(image_hwc)
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x.permute(2, 0, 1)[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)
        scale = size[1] / w  # the exact x scale after rounding (y differs by < 1 px)
    u8 = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(u8.cpu().numpy()), scale


# ---- warping -----------------------------------------------------------------------------------


def _theta(m_src_to_out: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """affine_grid theta (output normalised -> input normalised, align_corners=False) for a 2x3
    matrix mapping input px -> output px."""
    ih, iw = in_hw
    oh, ow = out_hw
    inv = np.linalg.inv(to3x3(m_src_to_out))  # output px -> input px
    out_from_norm = np.array([[ow / 2, 0, (ow - 1) / 2], [0, oh / 2, (oh - 1) / 2], [0, 0, 1]])
    norm_from_in = np.array([[2 / iw, 0, 1 / iw - 1], [0, 2 / ih, 1 / ih - 1], [0, 0, 1]])
    return torch.from_numpy((norm_from_in @ inv @ out_from_norm)[:2]).float()


def affine_grid(theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Same values as ``F.affine_grid(theta[None], (1, C, oh, ow), align_corners=False)[0]`` (oh, ow, 2),
    built by broadcasting one row and one column: several times faster on CPU than the generic batched
    matmul, which dominated the cost of cutting a crop."""
    oh, ow = out_hw
    xs = (torch.arange(ow, dtype=theta.dtype, device=theta.device) * 2 + 1) / ow - 1
    ys = (torch.arange(oh, dtype=theta.dtype, device=theta.device) * 2 + 1) / oh - 1
    gx = theta[0, 0] * xs[None, :] + (theta[0, 1] * ys + theta[0, 2])[:, None]
    gy = theta[1, 0] * xs[None, :] + (theta[1, 1] * ys + theta[1, 2])[:, None]
    return torch.stack([gx, gy], dim=-1)


def _footprint(m_src_to_out: np.ndarray, out_hw: tuple[int, int], in_hw: tuple[int, int], margin: int = 2):
    """Integer box (y0, y1, x0, x1) of input px that output px (0..oh, 0..ow) map from, clamped to the input."""
    oh, ow = out_hw
    corners = np.array([[-0.5, -0.5], [ow - 0.5, -0.5], [-0.5, oh - 0.5], [ow - 0.5, oh - 0.5]])
    pts = apply_affine(invert_affine(m_src_to_out), corners)
    x0 = max(0, int(math.floor(pts[:, 0].min())) - margin)
    y0 = max(0, int(math.floor(pts[:, 1].min())) - margin)
    x1 = min(in_hw[1], int(math.ceil(pts[:, 0].max())) + margin + 1)
    y1 = min(in_hw[0], int(math.ceil(pts[:, 1].max())) + margin + 1)
    return y0, y1, x0, x1


def warp_region(source_chw: torch.Tensor, m_src_to_out, out_hw: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Warp (C, H, W) by a 2x3 (source px -> output px) into (C, oh, ow), bilinear, zeros outside the
    source. Only the source region the output covers is read (and converted to float; uint8 input
    is scaled to [0, 1]); when the warp shrinks by more than 1.5x that region is first low-pass
    resized to the output's scale."""
    m = np.asarray(m_src_to_out, np.float64).reshape(2, 3)
    c, h, w = source_chw.shape
    y0, y1, x0, x1 = _footprint(m, out_hw, (h, w))
    if y1 <= y0 or x1 <= x0:  # the output lies entirely outside the source
        return torch.zeros(c, *out_hw, dtype=torch.float32, device=source_chw.device)
    roi = source_chw[:, y0:y1, x0:x1]
    roi = roi.float() / 255.0 if roi.dtype == torch.uint8 else roi.float()
    m = compose(m, [[1, 0, x0], [0, 1, y0]])  # roi px -> output px
    scale = affine_scale(m)
    if antialias and scale < 1 / 1.5:
        rh, rw = roi.shape[1:]
        nh, nw = max(1, round(rh * scale)), max(1, round(rw * scale))
        roi = F.interpolate(roi[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        sx, sy = nw / rw, nh / rh
        # resized px q <- roi px p: q = (p + 0.5) * s - 0.5
        from_resized = invert_affine([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
        m = compose(m, from_resized)
    grid = affine_grid(_theta(m, roi.shape[1:], out_hw).to(roi.device), out_hw)
    return F.grid_sample(roi[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def warp_crop(image_hwc: torch.Tensor, affine, crop_size: int) -> torch.Tensor:
    """One aligned crop (3, S, S) float in [0, 1] from one (H, W, C) image."""
    src = to_rgb(image_hwc).permute(2, 0, 1)
    return warp_region(src, affine, (crop_size, crop_size)).clamp(0, 1)


# ---- face choice -------------------------------------------------------------------------------

FACE_CHOICES: dict[str, str] = {
    "largest": "the largest face of each image (one face per image)",
    "index": "face number `index` of each image, counting from 0 left to right (one face per image)",
    "left_to_right": "every face of each image, sorted left to right (the output holds all of them)",
}


def _box_area(d) -> float:
    x0, y0, x1, y1 = np.asarray(d.box, np.float64)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _centre_x(d) -> float:
    return float(np.asarray(d.landmarks5, np.float64)[:, 0].mean())


def face_width(d) -> float:
    """Size of a detection used by ``min_face_size``: the width of its box in source px."""
    x0, _, x1, _ = np.asarray(d.box, np.float64)
    return float(x1 - x0)


def choose_faces(detections: Sequence, choice: str, index: int, image_i: int, batch: int, min_face_size: float = 0):
    """The detections to keep for one image, per ``choice`` (FACE_CHOICES); errors name the image."""
    if choice not in FACE_CHOICES:
        raise AlignError(f"unknown face choice {choice!r}; choose one of {', '.join(FACE_CHOICES)}")
    label = image_label(image_i, batch)
    if not detections:
        raise NoFaceError(f"no face found in {label}; use a photo with a visible face, or try another detector backend")
    big = [d for d in detections if face_width(d) >= min_face_size]
    if not big:
        widest = max(face_width(d) for d in detections)
        raise NoFaceError(
            f"{label}: {len(detections)} face(s) found but all are smaller than min_face_size={min_face_size:g} px "
            f"(the largest is {widest:.0f} px wide); lower min_face_size or use a larger photo of the face"
        )
    ordered = sorted(big, key=_centre_x)
    if choice == "largest":
        return [max(big, key=lambda d: (_box_area(d), float(d.score)))]
    if choice == "index":
        if not 0 <= index < len(ordered):
            raise AlignError(
                f"{label} has {len(ordered)} face(s){' of at least ' + format(min_face_size, 'g') + ' px' if min_face_size else ''}, "
                f"face index {index} was requested (faces are numbered from 0, left to right); pick an index below {len(ordered)} "
                f"or use face choice 'largest'"
            )
        return [ordered[index]]
    return ordered


# ---- detection + alignment ---------------------------------------------------------------------


@dataclass
class AlignedFaces:
    """Aligned crops of the chosen faces of a batch; ``image_index[k]`` is the image face k came from."""

    crops: torch.Tensor  # (F, 3, S, S) float in [0, 1]
    affine: torch.Tensor  # (F, 2, 3) float32, source px -> crop px
    image_hw: torch.Tensor  # (F, 2) int64
    landmarks5: torch.Tensor  # (F, 5, 2) float32, crop px
    image_index: list[int] = field(default_factory=list)
    detections: list = field(default_factory=list)  # ford.base.Detection per face, source px
    crop_size: int = 512
    batch_size: int = 0


def detect_faces(detector, image_hwc: torch.Tensor, max_detect_side: int = 1280) -> list:
    """Detections in source px for one (H, W, C) image, detected on a copy at most max_detect_side px."""
    from .ford.base import Detection

    small, scale = detection_image(image_hwc, max_detect_side)
    found = detector.detect(small)
    if scale == 1.0:
        return list(found)
    # detection px q = (p + 0.5) * scale - 0.5  ->  p = (q + 0.5) / scale - 0.5
    return [
        Detection(
            box=((np.asarray(d.box, np.float64) + 0.5) / scale - 0.5).astype(np.float32),
            score=float(d.score),
            landmarks5=((np.asarray(d.landmarks5, np.float64) + 0.5) / scale - 0.5).astype(np.float32),
        )
        for d in found
    ]


def detect_and_align(
    images,
    detector,
    crop_size: int = 512,
    face_choice: str = "largest",
    index: int = 0,
    min_face_size: float = 0,
    max_detect_side: int = 1280,
) -> AlignedFaces:
    """Detect, choose and align faces in every image of a batch (see FACE_CHOICES).

    Errors name the image ("no face found in image 2 of 3 in the batch (0-based index 1) ...").
    """
    batch = as_image_batch(images)
    b, h, w, _ = batch.shape
    template = head_template(crop_size)
    crops, mats, lms, owner, dets = [], [], [], [], []
    for i in range(b):
        try:
            found = detect_faces(detector, batch[i], max_detect_side)
        except AlignError:
            raise
        except Exception as e:  # a backend failing on one image names that image
            raise AlignError(f"face detector {getattr(detector, 'name', type(detector).__name__)!r} failed on {image_label(i, b)}: {e}") from e
        for d in choose_faces(found, face_choice, index, i, b, min_face_size):
            lm = np.asarray(d.landmarks5, np.float64)
            if lm.shape != (5, 2) or not np.isfinite(lm).all():
                raise AlignError(f"the detector returned malformed landmarks for {image_label(i, b)}: shape {lm.shape}")
            m = estimate_similarity(lm, template)
            crops.append(warp_crop(batch[i], m, crop_size))
            mats.append(m)
            lms.append(apply_affine(m, lm))
            owner.append(i)
            dets.append(d)
    return AlignedFaces(
        crops=torch.stack(crops),
        affine=torch.from_numpy(np.stack(mats)).float(),
        image_hw=torch.tensor([[h, w]] * len(owner), dtype=torch.int64),
        landmarks5=torch.from_numpy(np.stack(lms)).float(),
        image_index=owner,
        detections=dets,
        crop_size=crop_size,
        batch_size=b,
    )


# ---- paste-back --------------------------------------------------------------------------------


def as_crops_bchw(crops: torch.Tensor) -> torch.Tensor:
    """Generated crops as (B, 3, S, S) float: accepts BHWC (ComfyUI IMAGE) or BCHW (core), told apart
    by which axis holds 1/3/4 channels (crops are square and at least 16 px, so it is unambiguous)."""
    if not isinstance(crops, torch.Tensor) or crops.dim() != 4:
        raise AlignError(f"crops must be a 4-d tensor (batch, H, W, C) or (batch, C, H, W), got {getattr(crops, 'shape', type(crops).__name__)}")
    if crops.shape[-1] in (1, 3, 4) and crops.shape[1] not in (1, 3, 4):
        crops = crops.permute(0, 3, 1, 2)
    if crops.shape[1] not in (1, 3, 4) or crops.shape[2] != crops.shape[3]:
        raise AlignError(f"crops must be square images with 1, 3 or 4 channels, got shape {tuple(crops.shape)}")
    crops = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float()
    if crops.shape[1] == 1:
        crops = crops.expand(-1, 3, -1, -1)
    return crops[:, :3]


def border_feather(size: int, feather_px: float, device=None) -> torch.Tensor:
    """(S, S) weight: 1 inside, smoothly 0 at the crop's edge over ``feather_px`` crop px."""
    r = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    d = torch.minimum(r, size - r)  # distance of a pixel centre to the nearest edge
    if feather_px <= 0:
        edge = torch.ones(size, device=device)
    else:
        t = (d / float(feather_px)).clamp(0, 1)
        edge = t * t * (3 - 2 * t)  # smoothstep: no visible kink where the blend starts
    return torch.minimum(edge[:, None], edge[None, :])


def soften(mask: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Blur (B, S, S) masks with two box filters of ``radius_px`` (about a Gaussian of sigma ~ r/1.2)."""
    r = int(round(radius_px))
    if r <= 0:
        return mask
    x = mask[:, None].float()
    for _ in range(2):
        x = F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return x[:, 0]


def landmark_face_mask(landmarks5: torch.Tensor, size: int) -> torch.Tensor:
    """(B, S, S) ellipse over the inner face from the five crop-px landmarks: the area whose colour
    statistics colour matching compares when no parsed face mask is given."""
    lm = landmarks5.float()
    centre = lm.mean(1)  # (B, 2)
    eyes = lm[:, 0] - lm[:, 1]
    iod = eyes.norm(dim=1).clamp_min(1.0)
    angle = torch.atan2(eyes[:, 1], eyes[:, 0])
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = dx * c + dy * s, -dx * s + dy * c
    rx, ry = (0.95 * iod)[:, None, None], (1.25 * iod)[:, None, None]
    return (((u / rx) ** 2 + (v / ry) ** 2) <= 1.0).float()


def match_colour(generated: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std transfer (B, 3, S, S): ``generated``'s statistics inside ``weight``
    (B, S, S) are moved to ``reference``'s inside the same area; the whole crop is adjusted."""
    w = weight[:, None].float()
    total = w.sum((2, 3), keepdim=True).clamp_min(1e-6)

    def stats(x):
        mean = (x * w).sum((2, 3), keepdim=True) / total
        var = (((x - mean) ** 2) * w).sum((2, 3), keepdim=True) / total
        return mean, var.clamp_min(1e-8).sqrt()

    mg, sg = stats(generated)
    mr, sr = stats(reference)
    ratio = (sr / sg).clamp(0.25, 4.0)  # a flat generated area must not explode
    out = (generated - mg) * ratio + mr
    has_area = (weight.flatten(1).sum(1) > 16)[:, None, None, None]  # too few pixels: leave as is
    return torch.where(has_area, out, generated).clamp(0, 1)


def pairing(n_images: int, n_faces: int, n_crops: int, image_index: Optional[Sequence[int]] = None) -> list[tuple[int, int, int]]:
    """(output image, face, crop) for each paste.

    - crops == faces: one crop per face. With ``image_index`` each face goes into its image; else
      faces == images pairs them, or a single image receives every face (several faces of one photo).
    - faces == 1, crops > 1: variants of one face; each crop is pasted into its own copy of the
      image (one image, or one image per crop).
    """
    if n_crops == n_faces:
        if image_index is not None:
            if len(image_index) != n_faces or any(not 0 <= k < n_images for k in image_index):
                raise AlignError(f"image_index {list(image_index)} does not fit {n_faces} faces and {n_images} images")
            return [(int(k), f, f) for f, k in enumerate(image_index)]
        if n_images == n_faces:
            return [(f, f, f) for f in range(n_faces)]
        if n_images == 1:
            return [(0, f, f) for f in range(n_faces)]
        raise AlignError(
            f"cannot tell which of the {n_images} images each of the {n_faces} faces belongs to; paste back one image at a "
            f"time, or decompose with face choice 'largest' or 'index' (one face per image)"
        )
    if n_faces == 1:
        if n_images in (1, n_crops):
            return [(c, 0, c) for c in range(n_crops)]  # each crop into its own copy of the image
        raise AlignError(f"{n_crops} generated crops of one face cannot be pasted into {n_images} images; give 1 or {n_crops} images")
    raise AlignError(
        f"{n_crops} generated crops do not match the {n_faces} faces of the representation; generate one crop per face "
        f"(or several crops of a single face)"
    )


def paste_back(
    original,
    crops: torch.Tensor,
    affine,
    feather_px: float = 16.0,
    colour_match: bool = False,
    mask: Optional[torch.Tensor] = None,
    face_mask: Optional[torch.Tensor] = None,
    landmarks5: Optional[torch.Tensor] = None,
    crop_size: Optional[int] = None,
    image_index: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Put generated crops back into the original images, inverting the alignment.

    original   (N, H, W, C) float in [0, 1] (ComfyUI IMAGE; C = 1, 3 or 4: alpha is kept, grayscale
               gets the crop's luminance).
    crops      generated crops, (G, S', S', 3) BHWC *or* (G, 3, S', S') BCHW (told apart by the channel
               axis); S' may differ from the representation's crop size (a 512 crop made from a 256
               representation is rescaled).
    affine     (F, 2, 3) source px -> crop px (FaceRepresentation.affine) for crops of ``crop_size``
               (default: the generated crop size).
    feather_px width of the soft edge in crop px (of ``crop_size``): the crop fades out over this many px
               at its border, and ``mask``, if given, is softened by half of it. Pixels outside the area
               the crop covers are returned unchanged.
    mask       optional (F or G or 1, S, S) crop-space weight of what to paste (e.g. a head mask);
               default the whole crop.
    colour_match  move the generated crop's per-channel mean/std to the original's, both measured inside
               ``face_mask`` (default an ellipse from ``landmarks5``, else ``mask``) where the crop holds
               image content.
    image_index optional image of each face (see ``pairing``).
    Returns (N', H, W, C) with N' output images per ``pairing``.
    """
    images = as_image_batch(original)
    gen = as_crops_bchw(crops)
    mats = torch.as_tensor(affine, dtype=torch.float64).reshape(-1, 2, 3).cpu().numpy()
    n, h, w, ch = images.shape
    g, s = gen.shape[0], gen.shape[-1]
    plan = pairing(n, mats.shape[0], g, image_index)
    base = crop_size or s
    resize = np.diag([s / base, s / base, 1.0])  # representation crop px -> generated crop px
    n_out = max(o for o, _, _ in plan) + 1
    out = images.clone() if n_out == n else images[:1].expand(n_out, -1, -1, -1).clone()
    edge = border_feather(s, feather_px * s / base)

    def per_crop(t, k_face, k_crop, what):
        if t is None:
            return None
        t = torch.as_tensor(t).float().cpu()
        if t.dim() == 2:
            t = t[None]
        k = k_crop if t.shape[0] == g else (k_face if t.shape[0] == mats.shape[0] else 0 if t.shape[0] == 1 else None)
        if k is None:
            raise AlignError(f"{what} has {t.shape[0]} entries; expected 1, {mats.shape[0]} (faces) or {g} (crops)")
        m = t[k : k + 1]
        if m.shape[-1] != s or m.shape[-2] != s:
            m = F.interpolate(m[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        return m

    for o, f, c in plan:
        m = (resize @ to3x3(mats[f]))[:2]
        crop = gen[c : c + 1].cpu()
        weight = edge[None]
        user = per_crop(mask, f, c, "mask")
        if user is not None:
            weight = weight * soften(user.clamp(0, 1), feather_px * s / base / 2)
        if colour_match:
            ref = warp_region(to_rgb(out[o]).permute(2, 0, 1), m, (s, s))[None]
            area = per_crop(face_mask, f, c, "face_mask")
            if area is None and landmarks5 is not None:
                lm = torch.as_tensor(landmarks5).float().reshape(-1, 5, 2)[f : f + 1] * (s / base)
                area = landmark_face_mask(lm, s)
            if area is None:
                area = user if user is not None else torch.ones(1, s, s)
            # compare only where the reference holds image content (faces at a photo's edge)
            valid = warp_region(torch.ones(1, h, w), m, (s, s))[0] > 0.999
            crop = match_colour(crop, ref, area * valid[None])
        _paste_one(out[o], crop[0], weight[0], m)
    return out


def _paste_one(image_hwc: torch.Tensor, crop_chw: torch.Tensor, weight: torch.Tensor, m_image_to_crop: np.ndarray) -> None:
    """Blend one crop into one image (in place) where the crop lands, weighted by ``weight`` (crop space)."""
    h, w, ch = image_hwc.shape
    s = crop_chw.shape[-1]
    inv = invert_affine(m_image_to_crop)  # crop px -> image px
    corners = apply_affine(inv, np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]]))
    bx0 = max(0, int(math.floor(corners[:, 0].min())))
    by0 = max(0, int(math.floor(corners[:, 1].min())))
    bx1 = min(w, int(math.ceil(corners[:, 0].max())) + 1)
    by1 = min(h, int(math.ceil(corners[:, 1].max())) + 1)
    if bx1 <= bx0 or by1 <= by0:
        return
    stacked = torch.cat([crop_chw.to(image_hwc.device), weight[None].to(image_hwc.device)], dim=0)  # (4, S, S)
    to_box = compose([[1, 0, -bx0], [0, 1, -by0]], inv)  # crop px -> box px
    warped = warp_region(stacked, to_box, (by1 - by0, bx1 - bx0))  # antialiased when the crop shrinks
    colour, alpha = warped[:3].permute(1, 2, 0), warped[3:].permute(1, 2, 0).clamp(0, 1)
    region = image_hwc[by0:by1, bx0:bx1]
    if ch == 1:
        colour = (colour * torch.tensor([0.299, 0.587, 0.114], device=colour.device)).sum(-1, keepdim=True)
    rgb = region[..., : min(ch, 3)]
    blended = rgb * (1 - alpha) + colour * alpha
    image_hwc[by0:by1, bx0:bx1, : min(ch, 3)] = blended.to(image_hwc.dtype)
