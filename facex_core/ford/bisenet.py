"""BiSeNet 19-class CelebAMask-HQ face parser (face-parsing.PyTorch ``79999_iter.pth``, facexlib
``parsing_bisenet.pth``) -> FaceX region masks.

Real-file layout relied on (a plain state dict, no wrapper; facexlib's copy has the same keys and
loads with strict=True there): a ResNet-18 context path under ``cp.resnet.*`` (torchvision names,
no fc), attention refinement ``cp.arm16`` (256->128) / ``cp.arm32`` (512->128) each with
``conv.conv.weight``, ``conv.bn.*``, ``conv_atten.weight``, ``bn_atten.*``; ``cp.conv_head32`` /
``cp.conv_head16`` (128->128, 3x3) and ``cp.conv_avg`` (512->128, 1x1) as ConvBNReLU (``conv.weight``,
``bn.*``); ``ffm.convblk`` (256->256, 1x1), ``ffm.conv1`` (256->64), ``ffm.conv2`` (64->256); heads
``conv_out`` (256, mid 256), ``conv_out16`` / ``conv_out32`` (128, mid 64) each with ``conv.conv.weight``,
``conv.bn.*`` and ``conv_out.weight`` (19 classes, 1x1, no bias). 53 MB in float32.
Input: RGB 512x512, ImageNet mean/std; output logits (19, 512, 512) from ``conv_out`` (the two
auxiliary heads only served training and are not run).

Keys may carry a prefix every key shares (``module.`` from DataParallel, ``model.``...) or sit under
'state_dict' / 'params' / 'params_ema'; the loader detects and logs which layout it read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..regions import REGION_INDEX, REGIONS
from ..representation import FaceRepresentation
from .base import BackendInfo, register
from .onnx_session import cached, resolve_model_file
from .resnet import ResNetTrunk, check_crops, imagenet_normalise, load_checked, load_torch_file, module_device, strip_prefix, unwrap_state_dict

log = logging.getLogger("facex")

FILES = ("79999_iter.pth", "parsing_bisenet.pth")
LICENCE = "code: MIT (face-parsing.PyTorch, facexlib); weights trained on CelebAMask-HQ, which is for non-commercial research only"
WHAT = "a BiSeNet face parser (79999_iter.pth / parsing_bisenet.pth, 19 CelebAMask-HQ classes)"
INPUT_SIZE = 512

# CelebAMask-HQ class index -> name, as the face-parsing.PyTorch training labels use them.
CELEBAMASK_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)

# CelebAMask-HQ class -> FaceX region. Accessories go to the region they sit on, so a swap of that
# region carries them along and the face regions stay clean:
#   eye_g (eyeglasses) -> eyes (the lenses cover the eyes; frames over the skin are part of the look)
#   ear_r (earrings)   -> ears;  neck_l (necklace) -> neck;  hat -> hair (headwear occupies the hair
#   region: head swap keeps it with the head, face swap leaves it with the target)
#   mouth (mouth interior, teeth) -> lips (the lips region is the whole mouth)
CLASS_TO_REGION: dict[str, str] = {
    "background": "background",
    "skin": "skin",
    "l_brow": "eyebrows",
    "r_brow": "eyebrows",
    "l_eye": "eyes",
    "r_eye": "eyes",
    "eye_g": "eyes",
    "l_ear": "ears",
    "r_ear": "ears",
    "ear_r": "ears",
    "nose": "nose",
    "mouth": "lips",
    "u_lip": "lips",
    "l_lip": "lips",
    "neck": "neck",
    "neck_l": "neck",
    "cloth": "cloth",
    "hair": "hair",
    "hat": "hair",
}


def class_to_region_matrix() -> torch.Tensor:
    """(len(REGIONS), 19) 0/1 matrix: region masks = matrix @ class probabilities."""
    m = torch.zeros(len(REGIONS), len(CELEBAMASK_CLASSES))
    for c, name in enumerate(CELEBAMASK_CLASSES):
        m[REGION_INDEX[CLASS_TO_REGION[name]], c] = 1.0
    return m


# ---- the network (names follow the released state dict) -------------------------------------


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNetTrunk("resnet18")
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x):
        _, feat8, feat16, feat32 = self.resnet.stages(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        up32 = F.interpolate(self.arm32(feat32) + avg, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNetFaceParser(nn.Module):
    """BiSeNet with the ResNet-18 layer2 feature standing in for the spatial path (as released)."""

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        # auxiliary training heads: present in the released weights, not run at inference
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x):
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


# ---- loading ---------------------------------------------------------------------------------


def load_bisenet(path, device="cpu") -> BiSeNetFaceParser:
    """The parser network from a checkpoint file, checked key by key; cached per (file, device)."""
    path = Path(path)

    def build():
        obj = load_torch_file(path)
        sd, where = unwrap_state_dict(obj, path, ("state_dict", "params_ema", "params", "model"), WHAT)
        sd, prefix = strip_prefix(sd, "cp.resnet.conv1.weight")
        net = BiSeNetFaceParser(len(CELEBAMASK_CLASSES))
        load_checked(net, sd, path, WHAT)
        layout = f"state dict {where}" + (f", keys prefixed {prefix!r}" if prefix else ", unprefixed keys (face-parsing.PyTorch / facexlib layout)")
        log.info("FaceX: BiSeNet face parser %s read as %s", path.name, layout)
        net.layout = layout
        return net.eval().to(device)

    return cached("bisenet", path, str(torch.device(device)), build)


class BiSeNetParser:
    """FaceX ``Extractor`` (family 'parse'): soft region masks in REGIONS order from class probabilities."""

    family = "parse"

    def __init__(self, net: BiSeNetFaceParser, name: str = "bisenet_celebamask19", batch: int = 4):
        self.net = net
        self.name = name
        self.batch = batch
        self.region_matrix = class_to_region_matrix()

    @torch.no_grad()
    def class_probabilities(self, crops: torch.Tensor) -> torch.Tensor:
        """(B,19,S,S) softmax probabilities for RGB crops (B,3,S,S) in [0,1]."""
        device = module_device(self.net)
        size = crops.shape[-1]
        outs = []
        for i in range(0, crops.shape[0], self.batch):
            x = crops[i : i + self.batch].to(device=device, dtype=torch.float32)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=size > INPUT_SIZE)
            prob = torch.softmax(self.net(imagenet_normalise(x)), dim=1)
            if size != INPUT_SIZE:
                prob = F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=False, antialias=size < INPUT_SIZE)
            outs.append(prob.float().cpu())
        return torch.cat(outs)

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        prob = self.class_probabilities(crops)
        masks = torch.einsum("rc,bchw->brhw", self.region_matrix, prob)
        return {"region_masks": masks.clamp(0.0, 1.0).contiguous()}


def make_parser(path=None, folders: Sequence = (), device="cpu") -> BiSeNetParser:
    file = resolve_model_file(path, FILES, folders, "BiSeNet face parser")
    return BiSeNetParser(load_bisenet(file, device))


register(
    BackendInfo(
        family="parse",
        name="bisenet_celebamask19",
        factory=make_parser,
        embedded=False,
        licence=LICENCE,
        description="BiSeNet (ResNet-18) face parser, 19 CelebAMask-HQ classes mapped to FaceX regions (512x512 input)",
        files=FILES,
    )
)
