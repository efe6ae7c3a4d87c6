"""Pictures of a decomposition, for the preview outputs of the FORD nodes (pure torch, no drawing library).

- ``region_colour_map``: region masks -> an RGB picture, each region in its REGION_COLOURS colour
  (soft masks mix their colours, so parser uncertainty stays visible);
- ``draw_landmarks`` / ``draw_pose_axes`` / ``annotate``: the dense landmarks (grey), the five
  alignment points (yellow), and the head pose as three axes from the nose tip (red = the head's
  right-to-left axis toward image right, green = up, blue = forward out of the face) on the crop;
- ``decomposition_preview``: annotated crop | crop with the region colours blended in, side by side.

Images are (B, S, S, 3) float in [0, 1] (ComfyUI IMAGE); crops may be given BCHW or BHWC.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..regions import REGION_COLOURS, REGIONS
from ..representation import FaceRepresentation

COLOUR_TABLE = torch.tensor(REGION_COLOURS, dtype=torch.float32) / 255.0  # (R, 3) in REGIONS order
LANDMARK_COLOUR = (0.85, 0.85, 0.85)
FIVE_COLOUR = (1.0, 0.85, 0.0)
AXIS_COLOURS = ((0.95, 0.15, 0.15), (0.15, 0.85, 0.2), (0.2, 0.4, 1.0))  # right, up, forward


def as_bhwc(crops: torch.Tensor) -> torch.Tensor:
    if crops.dim() != 4:
        raise ValueError(f"images must be 4-d (B, H, W, 3) or (B, 3, H, W), got shape {tuple(crops.shape)}")
    if crops.shape[1] == 3 and crops.shape[-1] != 3:
        crops = crops.permute(0, 2, 3, 1)
    return crops.float().clamp(0, 1).contiguous()


def region_colour_map(region_masks: torch.Tensor) -> torch.Tensor:
    """(B, R, S, S) soft masks -> (B, S, S, 3): per-pixel mix of the region colours by mask weight."""
    if region_masks.dim() != 4 or region_masks.shape[1] != len(REGIONS):
        raise ValueError(f"region masks must be (batch, {len(REGIONS)}, S, S) in REGIONS order, got {tuple(region_masks.shape)}")
    m = region_masks.float().clamp_min(0)
    total = m.sum(1, keepdim=True)
    weights = m / total.clamp_min(1e-6)
    rgb = torch.einsum("brhw,rc->bhwc", weights, COLOUR_TABLE.to(m.device))
    return torch.where(total.permute(0, 2, 3, 1) > 1e-6, rgb, torch.zeros_like(rgb))


def overlay_regions(crops: torch.Tensor, region_masks: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """The crops with the region colour map blended in (background left as the photo)."""
    img = as_bhwc(crops)
    colours = region_colour_map(region_masks).to(img.device)
    bg = region_masks[:, REGIONS.index("background")].float().clamp(0, 1)[..., None].to(img.device)
    a = alpha * (1 - bg)
    return (img * (1 - a) + colours * a).clamp(0, 1)


def _stamp(img: torch.Tensor, points: torch.Tensor, colour, radius: float) -> None:
    """Paint filled discs of ``radius`` px at ``points`` (N, 2) (x, y) into one (S, S, 3) image, in place."""
    if points.numel() == 0:
        return
    h, w = img.shape[:2]
    r = max(0.5, float(radius))
    k = int(math.ceil(r))
    offs = torch.stack(torch.meshgrid(torch.arange(-k, k + 1), torch.arange(-k, k + 1), indexing="ij"), -1).reshape(-1, 2)
    offs = offs[(offs.float() ** 2).sum(1) <= r * r + 0.25]  # (K, 2) dy, dx
    centre = points.float().round().long()
    ys = (centre[:, None, 1] + offs[None, :, 0]).reshape(-1)
    xs = (centre[:, None, 0] + offs[None, :, 1]).reshape(-1)
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    img[ys[ok], xs[ok]] = torch.tensor(colour, dtype=img.dtype, device=img.device)


def _line(img: torch.Tensor, a, b, colour, width: float) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    n = int(max(2, math.ceil(float((b - a).norm()) * 2)))
    t = torch.linspace(0, 1, n)[:, None]
    _stamp(img, a + (b - a) * t, colour, width / 2)


def draw_landmarks(images: torch.Tensor, landmarks: Optional[torch.Tensor], landmarks5: Optional[torch.Tensor]) -> torch.Tensor:
    """Dense landmarks (B, N, 2) and the five points (B, 5, 2), crop px, drawn on (B, S, S, 3) copies."""
    out = as_bhwc(images).clone()
    s = out.shape[1]
    for i in range(out.shape[0]):
        if landmarks is not None:
            _stamp(out[i], landmarks[i].cpu(), LANDMARK_COLOUR, max(0.5, s / 512))
        if landmarks5 is not None:
            _stamp(out[i], landmarks5[i].cpu(), FIVE_COLOUR, max(1.5, s / 128))
    return out


def head_axes(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """(3, 2) image-plane directions (x right, y down) of the head's right, up and forward axes.

    FaceX pose convention (ford deep3d / mesh_pnp): yaw > 0 turns the face toward image right,
    pitch > 0 turns it up, roll > 0 rotates it counter-clockwise in the image.
    """
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    # frame: x = image right, y = image up, z = toward the viewer; R = roll(z) @ yaw(y) @ pitch(x)
    r_yaw = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = torch.tensor([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    r_roll = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rot = r_roll @ r_yaw @ r_pitch
    axes = rot.T  # rows: rotated x (right), y (up), z (forward)
    return torch.stack([axes[:, 0], -axes[:, 1]], dim=1)  # image y points down


def draw_pose_axes(images: torch.Tensor, pose: torch.Tensor, origins: torch.Tensor, length: Optional[float] = None) -> torch.Tensor:
    """Pose axes (B, 3 radians yaw/pitch/roll) drawn from ``origins`` (B, 2) crop px on (B, S, S, 3) copies."""
    out = as_bhwc(images).clone()
    s = out.shape[1]
    length = length or s * 0.18
    for i in range(out.shape[0]):
        yaw, pitch, roll = (float(v) for v in pose[i])
        o = origins[i].float().cpu()
        dirs = head_axes(yaw, pitch, roll)
        for axis in (2, 0, 1):  # forward first so the in-plane axes stay visible on top
            _line(out[i], o, o + dirs[axis] * length, AXIS_COLOURS[axis], max(2.0, s / 170))
    return out


def annotate(crops: torch.Tensor, rep: FaceRepresentation) -> torch.Tensor:
    """Crops with the landmarks and, when the representation has a pose, the pose axes."""
    if crops.shape[0] != rep.batch_size:
        raise ValueError(f"{crops.shape[0]} crops but the face representation holds {rep.batch_size} faces")
    out = draw_landmarks(crops, rep.landmarks, rep.landmarks5)
    if rep.pose is not None:
        out = draw_pose_axes(out, rep.pose, rep.landmarks5[:, 2])
    return out


def decomposition_preview(crops: torch.Tensor, rep: FaceRepresentation) -> torch.Tensor:
    """(B, S, 2S, 3): annotated crop | region colours over the crop (the crop again without a parse)."""
    left = annotate(crops, rep)
    right = overlay_regions(crops, rep.region_masks) if rep.region_masks is not None else as_bhwc(crops)
    return torch.cat([left, right.to(left.device)], dim=2)
