"""Pieces the torch production backends share.

1. ResNet trunks with torchvision's parameter names (conv1, bn1, layer1..4, blocks with
   conv1/bn1/conv2/bn2[/conv3/bn3] and downsample.0/.1). BiSeNet's ResNet-18 context path,
   Deep3DFaceRecon's ResNet-50 backbone and L2CS-Net's ResNet-50 all store their weights under these
   names, so one trunk serves all three (written here, not imported from torchvision, so the pack does
   not depend on torchvision and the trunk can hand back every stage).
2. Loading a PyTorch checkpoint safely (``weights_only=True``), unwrapping and de-prefixing its state
   dict, and checking it key by key against the module, with errors that name the file and what is
   wrong.
3. Crop geometry: fit a 5-point transform from the representation's landmarks to a model's template
   and warp the crops into that model's input frame (torch, no OpenCV).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .onnx_session import ModelFileError

log = logging.getLogger("facex")


# =============================================================================================
# 1. ResNet trunks
# =============================================================================================


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision and all three backends use."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Sequential]:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


# name -> (block, blocks per stage)
RESNETS: dict[str, tuple[type, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetTrunk(nn.Module):
    """conv1/bn1/maxpool and four stages; ``stages(x)`` returns the output of each stage."""

    def __init__(self, arch: str):
        super().__init__()
        block, counts = RESNETS[arch]
        self.conv1, self.bn1 = _conv_bn(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=(2 if (i > 0 and j == 0) else 1)))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin

    def stages(self, x) -> list[torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.stages(x)[-1]


# =============================================================================================
# 2. Checkpoints
# =============================================================================================


def load_torch_file(path) -> object:
    """``torch.load(weights_only=True)`` (or safetensors) with errors that say what is wrong with the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises several types for truncated / foreign files
            raise ModelFileError(f"{path.name}: not a readable safetensors file ({e}); the file is truncated or corrupt — download it again") from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
            raise ModelFileError(
                f"{path.name}: holds Python objects besides tensors (for example a whole pickled model); FaceX loads "
                f"only plain weight files (state dicts) with torch.load(weights_only=True). Use the released weight file."
            ) from e
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise ModelFileError(
            f"{path.name}: not a readable PyTorch checkpoint ({first}); the file is truncated or corrupt — download it again ({path})"
        ) from e


def unwrap_state_dict(obj, path, wrapper_keys: Sequence[str], what: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor dict inside a checkpoint: the object itself, or under one of ``wrapper_keys``.

    Returns (state dict, where it was found) for the log.
    """
    name = Path(path).name
    if not isinstance(obj, dict):
        raise ModelFileError(f"{name}: holds a {type(obj).__name__}, not a state dict; this is not {what}")
    for key in wrapper_keys:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), f"under key {key!r}"
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(
            f"{name}: holds no tensors at the top level{' nor under ' + ', '.join(repr(k) for k in wrapper_keys) if wrapper_keys else ''} "
            f"(top-level keys: {', '.join(map(str, list(obj)[:8]))}); this is not {what}"
        )
    return tensors, "at the top level"


def strip_prefix(sd: dict[str, torch.Tensor], anchor: str) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a prefix every key shares ('module.', 'model.', ...) found by locating ``anchor``."""
    for key in sd:
        if key.endswith(anchor):
            prefix = key[: -len(anchor)]
            if prefix and all(k.startswith(prefix) for k in sd):
                return {k[len(prefix):]: v for k, v in sd.items()}, prefix
            return sd, ""
    return sd, ""


def load_checked(module: nn.Module, sd: dict[str, torch.Tensor], path, what: str, ignore: Iterable[str] = ()) -> None:
    """Load ``sd`` into ``module`` after checking names and shapes; raise a ModelFileError naming the problem.

    BatchNorm ``num_batches_tracked`` counters may be absent (older checkpoints) and are not
    used at inference. Keys listed in ``ignore`` may be present and are dropped.
    """
    name = Path(path).name
    expected = module.state_dict()
    ignore = set(ignore)
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected and k not in ignore]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} ({len(missing)} in all)")
    if unexpected:
        problems.append(f"unexpected keys {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''} ({len(unexpected)} in all)")
    if wrong:
        problems.append(f"wrong shapes {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    if problems:
        raise ModelFileError(f"{name}: {'; '.join(problems)}; this is not {what}")
    clean = {}
    for k, v in sd.items():
        if k in expected:
            if not v.is_floating_point() and expected[k].is_floating_point():
                raise ModelFileError(f"{name}: tensor {k} has dtype {v.dtype}; this is not {what}")
            clean[k] = v.to(expected[k].dtype) if v.is_floating_point() else v
    module.load_state_dict(clean, strict=False)
    nonfinite = [k for k, v in clean.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelFileError(f"{name}: tensors {', '.join(nonfinite[:3])} contain NaN or infinite values; the file is corrupt")


# =============================================================================================
# 3. Crop geometry
# =============================================================================================

# FaceX's 5-point order (ford/base.py Detection): subject's left eye (image right on a frontal
# face), subject's right eye, nose tip, subject's left mouth corner, subject's right mouth corner.
# insightface, ArcFace's template and Deep3DFaceRecon list the image-left point of each pair first,
# i.e. the subject's right eye first. This permutation converts between the two orders (both ways).
SWAP_LEFT_RIGHT_5 = (1, 0, 2, 4, 3)

# The standard ArcFace 112x112 template (insightface arcface_dst), image-left eye first.
ARCFACE_TEMPLATE_112_INSIGHTFACE_ORDER = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
ARCFACE_TEMPLATE_112 = torch.tensor([ARCFACE_TEMPLATE_112_INSIGHTFACE_ORDER[i] for i in SWAP_LEFT_RIGHT_5], dtype=torch.float32)


def fit_transform(src: torch.Tensor, dst: torch.Tensor, rotation: bool = True) -> torch.Tensor:
    """Least-squares 2x3 transforms mapping points ``src`` (B,N,2) onto ``dst`` (N,2) or (B,N,2).

    ``rotation=True``: similarity (scale, rotation, translation; Umeyama without reflection).
    ``rotation=False``: scale and translation only (what Deep3DFaceRecon's alignment does).
    """
    src = src.to(torch.float64)
    dst = dst.to(torch.float64).expand_as(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum((1, 2))
    if rotation:
        cov = d0.transpose(1, 2) @ s0  # (B,2,2)
        u, sig, vt = torch.linalg.svd(cov)
        det = torch.det(u @ vt)
        fix = torch.ones_like(sig)
        fix[:, 1] = torch.where(det < 0, -1.0, 1.0)
        rot = u @ torch.diag_embed(fix) @ vt
        scale = (sig * fix).sum(1) / var_s.clamp_min(1e-12)
        lin = rot * scale[:, None, None]
    else:
        scale = (s0 * d0).sum((1, 2)) / var_s.clamp_min(1e-12)
        lin = torch.eye(2, dtype=src.dtype).expand(src.shape[0], 2, 2) * scale[:, None, None]
    trans = mu_d.squeeze(1) - (lin @ mu_s.transpose(1, 2)).squeeze(2)
    return torch.cat([lin, trans[:, :, None]], dim=2).to(torch.float32)


def warp_crops(images: torch.Tensor, matrix: torch.Tensor, out_size: int) -> torch.Tensor:
    """Warp (B,C,H,W) images by 2x3 matrices mapping source px -> output px (cv2.warpAffine
    convention: pixel centres at integer coordinates), bilinear, zeros outside."""
    b, _, h, w = images.shape
    m = matrix.to(device=images.device, dtype=torch.float32)
    full = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], device=m.device).expand(b, 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2]  # output px -> source px
    ys, xs = torch.meshgrid(
        torch.arange(out_size, dtype=torch.float32, device=images.device),
        torch.arange(out_size, dtype=torch.float32, device=images.device),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # (1,P,3)
    src = pts @ inv.transpose(1, 2)  # (B,P,2)
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], dim=-1)
    grid = grid.reshape(b, out_size, out_size, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_to_template(crops: torch.Tensor, landmarks5: torch.Tensor, template: torch.Tensor, out_size: int, rotation: bool = True) -> torch.Tensor:
    """Cut each crop into a model's input frame by fitting its 5 landmarks (crop px, FaceX order) to ``template``."""
    matrix = fit_transform(landmarks5.to(torch.float32).cpu(), template.to(torch.float32), rotation=rotation)
    return warp_crops(crops, matrix, out_size)


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0,1] -> ImageNet mean/std normalised (what BiSeNet and L2CS-Net were trained on)."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def check_crops(crops: torch.Tensor, rep, who: str) -> None:
    """Crops must be (B,3,S,S) float with one representation entry per crop."""
    if crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"{who}: crops must be (batch, 3, S, S) float in [0, 1], got shape {tuple(crops.shape)}")
    if rep.batch_size != crops.shape[0]:
        raise ValueError(f"{who}: {crops.shape[0]} crops but the face representation holds {rep.batch_size} faces")
