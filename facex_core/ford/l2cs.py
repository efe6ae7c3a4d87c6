"""L2CS-Net (Ahmednull/L2CS-Net) gaze estimator -> FaceX gaze.

Real-file layout relied on (``L2CSNet_gaze360.pkl``, a plain state dict saved with torch.save):
ResNet-50 trunk at the top level with torchvision names (``conv1``, ``bn1``, ``layer1..4``), heads
``fc_yaw_gaze`` and ``fc_pitch_gaze`` (Linear 2048 -> 90), and the vestigial ``fc_finetune``
(Linear 2051 -> 3, unused; accepted when present). Input: the face crop resized to 448x448, RGB,
ImageNet mean/std. Output: 90 bins of 4 degrees; angle = sum(softmax * bin index) * 4 - 180 degrees.

Which head is which: the network returns (fc_yaw_gaze, fc_pitch_gaze) and is trained with the first
against the first Gaze360 label, which is the horizontal angle (the repo's draw_gaze moves the
arrow's x with it), so fc_yaw_gaze really is yaw even though the repo's scripts name the variable
"pitch". Signs (from the repo's draw_gaze: dx = -sin(yaw) cos(pitch), dy = -sin(pitch) in image px):
L2CS yaw > 0 looks toward image left, pitch > 0 looks up.

FaceX gaze convention: (pitch, yaw) radians in the aligned crop's frame; pitch > 0 = looking up,
yaw > 0 = looking toward image right (so mirroring the image flips the sign of yaw). Hence
pitch = +l2cs_pitch, yaw = -l2cs_yaw (GAZE_FROM_L2CS).

Crop (approximated): the repo feeds the face detector's box; FaceX cuts the ArcFace-template frame
(a tight face box, similar framing) at 448x448 from the representation's landmarks5.
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
from .resnet import ARCFACE_TEMPLATE_112, ResNetTrunk, check_crops, imagenet_normalise, load_checked, load_torch_file, module_device, strip_prefix, unwrap_state_dict, warp_to_template

log = logging.getLogger("facex")

FILES = ("L2CSNet_gaze360.pkl",)
LICENCE = "MIT (L2CS-Net code and released weights); trained on Gaze360 (research dataset licence)"
WHAT = "an L2CS-Net gaze model (L2CSNet_gaze360.pkl: ResNet-50 with fc_yaw_gaze / fc_pitch_gaze, 90 bins)"
INPUT_SIZE = 448
BINS = 90
BIN_WIDTH_DEG = 4.0
BIN_START_DEG = -180.0

# FaceX gaze component <- (sign, L2CS output)
GAZE_FROM_L2CS: dict[str, tuple[float, str]] = {"pitch": (1.0, "pitch"), "yaw": (-1.0, "yaw")}


class L2CSNet(ResNetTrunk):
    def __init__(self, bins: int = BINS):
        super().__init__("resnet50")
        self.fc_yaw_gaze = nn.Linear(2048, bins)
        self.fc_pitch_gaze = nn.Linear(2048, bins)

    def forward(self, x):
        feat = self.stages(x)[-1].mean(dim=(2, 3))
        return self.fc_yaw_gaze(feat), self.fc_pitch_gaze(feat)


def bins_to_radians(logits: torch.Tensor) -> torch.Tensor:
    """Softmax expectation over the 90 bins, in radians."""
    idx = torch.arange(logits.shape[1], dtype=torch.float32, device=logits.device)
    deg = (torch.softmax(logits.float(), dim=1) * idx).sum(dim=1) * BIN_WIDTH_DEG + BIN_START_DEG
    return torch.deg2rad(deg)


def load_l2cs(path, device="cpu") -> L2CSNet:
    path = Path(path)

    def build():
        obj = load_torch_file(path)
        sd, where = unwrap_state_dict(obj, path, ("state_dict", "model"), WHAT)
        sd, prefix = strip_prefix(sd, "fc_yaw_gaze.weight")
        net = L2CSNet()
        load_checked(net, sd, path, WHAT, ignore=("fc_finetune.weight", "fc_finetune.bias"))
        net.layout = f"state dict {where}" + (f", keys prefixed {prefix!r}" if prefix else "")
        log.info("FaceX: L2CS-Net %s read as %s", path.name, net.layout)
        return net.eval().to(device)

    return cached("l2cs", path, str(torch.device(device)), build)


class L2CSGaze:
    """FaceX ``Extractor`` (family 'gaze'): (pitch, yaw) radians per face."""

    family = "gaze"

    def __init__(self, net: L2CSNet, name: str = "l2cs_gaze360", batch: int = 4):
        self.net = net
        self.name = name
        self.batch = batch

    @torch.no_grad()
    def l2cs_angles(self, crops: torch.Tensor, landmarks5: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2CS's own (pitch, yaw) radians, before FaceX's sign convention."""
        template = ARCFACE_TEMPLATE_112 * (INPUT_SIZE / 112.0)
        x = warp_to_template(crops.detach().float().cpu(), landmarks5, template, INPUT_SIZE)
        device = module_device(self.net)
        yaws, pitches = [], []
        for i in range(0, x.shape[0], self.batch):
            yaw_logits, pitch_logits = self.net(imagenet_normalise(x[i : i + self.batch].to(device)))
            yaws.append(bins_to_radians(yaw_logits).cpu())
            pitches.append(bins_to_radians(pitch_logits).cpu())
        return {"pitch": torch.cat(pitches), "yaw": torch.cat(yaws)}

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        raw = self.l2cs_angles(crops, rep.landmarks5)
        gaze = torch.stack([sign * raw[src] for sign, src in (GAZE_FROM_L2CS[k] for k in ("pitch", "yaw"))], dim=1)
        return {"gaze": gaze.float().contiguous()}


def make_gaze(path=None, folders: Sequence = (), device="cpu") -> L2CSGaze:
    file = resolve_model_file(path, FILES, folders, "L2CS-Net gaze model")
    return L2CSGaze(load_l2cs(file, device))


register(
    BackendInfo(
        family="gaze",
        name="l2cs_gaze360",
        factory=make_gaze,
        embedded=False,
        licence=LICENCE,
        description="L2CS-Net ResNet-50 trained on Gaze360: gaze pitch and yaw from 90 bins of 4 degrees (448x448 face crop)",
        files=FILES,
    )
)
