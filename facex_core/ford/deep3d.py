"""Deep3DFaceRecon (sicxu/Deep3DFaceRecon_pytorch) ResNet-50 coefficient regressor -> FaceX motion,
texture and lighting.

Real-file layout relied on (``epoch_20.pth`` from the released checkpoint folder):
  - a dict saved by the training script: ``{'net_recon': state_dict, 'epoch': 20, ...}`` (optimizer
    and scheduler states may sit beside it; they are ignored);
  - ``net_recon`` = ReconNetWrapper('resnet50', use_last_fc=False): ``backbone.*`` with torchvision
    ResNet-50 names (no ``fc``) and ``final_layers.0..6`` 1x1 convs with bias, from 2048 channels, in
    this order: identity 80, expression 64, texture 80, angles 3, gamma 27 (SH lighting), tx/ty 2,
    tz 1 = 257 coefficients (seven layers: translation is split 2 + 1, not one layer of 3);
  - input: the 224x224 RGB crop in [0, 1] (no mean/std).
Coefficients as the repo's BFM code reads them: angles (x, y, z) in radians build R = Rz Ry Rx on
model coordinates with x to image right, y up, z toward the camera; gamma is 3 colour channels x 9
SH coefficients, channel-major (before the repo adds its 0.8 ambient offset to each channel's DC term).

Alignment (approximated): the repo scales and translates the image, without rotation, so its five
landmarks best match the orthographic projection of its standard 3D landmarks (POS), at 102 px per
model unit, then cuts 224x224 around the projected origin. FaceX fits scale + translation (no
rotation) from the representation's landmarks5 to those standard landmarks projected the same way
(template below = 112 + 102 * (x, -y)), inside the already-aligned FaceX crop.

Pose in FaceX's convention (yaw, pitch, roll radians, in the aligned crop's frame, shared with the
gaze convention): yaw > 0 when the face turns toward image right; pitch > 0 when it turns up;
roll > 0 when it rotates counter-clockwise as seen in the image. From the repo's angles:
yaw = +angle_y, pitch = -angle_x, roll = +angle_z (POSE_FROM_ANGLES).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..representation import FaceRepresentation
from .base import BackendInfo, register
from .onnx_session import cached, resolve_model_file
from .resnet import SWAP_LEFT_RIGHT_5, ResNetTrunk, check_crops, load_checked, load_torch_file, module_device, strip_prefix, unwrap_state_dict, warp_to_template

log = logging.getLogger("facex")

FILES = ("epoch_20.pth",)
LICENCE = (
    "code: MIT (Deep3DFaceRecon_pytorch); the released weights were trained with the Basel Face Model 2009, "
    "whose licence (registration with the University of Basel) governs use — obtain it before using them"
)
WHAT = "a Deep3DFaceRecon checkpoint (epoch_20.pth with net_recon: ResNet-50 backbone + 7 final_layers = 257 coefficients)"
INPUT_SIZE = 224

# final_layers order and sizes -> 257 coefficients
COEFFICIENTS: tuple[tuple[str, int], ...] = (
    ("identity", 80),
    ("expression", 64),
    ("texture", 80),
    ("angles", 3),
    ("gamma", 27),
    ("translation_xy", 2),
    ("translation_z", 1),
)
N_COEFFICIENTS = sum(n for _, n in COEFFICIENTS)

# FaceX pose component <- (sign, index into the repo's angles (x, y, z))
POSE_FROM_ANGLES: dict[str, tuple[float, int]] = {"yaw": (1.0, 1), "pitch": (-1.0, 0), "roll": (1.0, 2)}

# Standard 3D landmarks of the repo's BFM (eye centres, nose tip, mouth corners; x right, y up),
# image-left eye first, and their 224-px projection at 102 px per unit around the crop centre.
STANDARD_LANDMARKS_3D = (
    (-0.31148657, 0.29036078, 0.13377953),
    (0.30979887, 0.28972036, 0.13179526),
    (0.0032535, -0.04617932, 0.55244243),
    (-0.25216928, -0.38133916, 0.22405732),
    (0.2484662, -0.38128236, 0.22235769),
)
RESCALE = 102.0
TEMPLATE_224 = torch.tensor(
    [[112.0 + RESCALE * STANDARD_LANDMARKS_3D[i][0], 112.0 - RESCALE * STANDARD_LANDMARKS_3D[i][1]] for i in SWAP_LEFT_RIGHT_5],
    dtype=torch.float32,
)


class Deep3DReconNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNetTrunk("resnet50")
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, n, 1, bias=True) for _, n in COEFFICIENTS)

    def forward(self, x):
        feat = self.backbone(x).mean(dim=(2, 3), keepdim=True)
        return torch.cat([layer(feat) for layer in self.final_layers], dim=1).flatten(1)


def split_coefficients(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, n in COEFFICIENTS:
        out[name] = coeffs[:, start : start + n]
        start += n
    return out


def pose_from_angles(angles: torch.Tensor) -> torch.Tensor:
    """(B,3) repo angles (x, y, z) -> (B,3) FaceX (yaw, pitch, roll)."""
    return torch.stack([sign * angles[:, idx] for sign, idx in (POSE_FROM_ANGLES[k] for k in ("yaw", "pitch", "roll"))], dim=1)


def load_deep3d(path, device="cpu") -> Deep3DReconNet:
    path = Path(path)

    def build():
        obj = load_torch_file(path)
        sd, where = unwrap_state_dict(obj, path, ("net_recon", "state_dict"), WHAT)
        if where != "under key 'net_recon'":
            log.warning("FaceX: %s has no 'net_recon' entry; read the state dict %s", path.name, where)
        sd, prefix = strip_prefix(sd, "backbone.conv1.weight")
        net = Deep3DReconNet()
        load_checked(net, sd, path, WHAT)
        net.layout = f"state dict {where}" + (f", keys prefixed {prefix!r}" if prefix else "")
        log.info("FaceX: Deep3DFaceRecon %s read as %s", path.name, net.layout)
        return net.eval().to(device)

    return cached("deep3d", path, str(torch.device(device)), build)


class Deep3DMotion:
    """FaceX ``Extractor`` (family 'motion'): pose (3), expression (64), texture (80), lighting (27)."""

    family = "motion"

    def __init__(self, net: Deep3DReconNet, name: str = "deep3dfacerecon_bfm", batch: int = 8):
        self.net = net
        self.name = name
        self.batch = batch

    @torch.no_grad()
    def coefficients(self, crops: torch.Tensor, landmarks5: torch.Tensor) -> torch.Tensor:
        x = warp_to_template(crops.detach().float().cpu(), landmarks5, TEMPLATE_224, INPUT_SIZE, rotation=False)
        device = module_device(self.net)
        return torch.cat([self.net(x[i : i + self.batch].to(device)).float().cpu() for i in range(0, x.shape[0], self.batch)])

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        parts = split_coefficients(self.coefficients(crops, rep.landmarks5))
        return {
            "pose": pose_from_angles(parts["angles"]).contiguous(),
            "expression": parts["expression"].contiguous(),
            "texture": parts["texture"].contiguous(),
            "lighting": parts["gamma"].contiguous(),
        }


def make_motion(path=None, folders: Sequence = (), device="cpu") -> Deep3DMotion:
    file = resolve_model_file(path, FILES, folders, "Deep3DFaceRecon model")
    return Deep3DMotion(load_deep3d(file, device))


register(
    BackendInfo(
        family="motion",
        name="deep3dfacerecon_bfm",
        factory=make_motion,
        embedded=False,
        licence=LICENCE,
        description="Deep3DFaceRecon ResNet-50 3DMM regressor: pose, 64 expression, 80 texture, 27 SH lighting coefficients",
        files=FILES,
    )
)
