"""Fréchet Inception Distance with the standard FID Inception-v3.

FID numbers are only comparable with published ones when they come from the same network: the
TensorFlow Inception graph of 2015-12-05 as ported to PyTorch by pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``). That port differs from torchvision's ImageNet
Inception-v3 in four places, reproduced here: 1008 output classes, average pools that do not count
padding in Mixed_5*/6b-e/7b, and a max pool in Mixed_7c's pool branch. Features are the 2048-d
global average pool, computed on images resized to 299x299 (bilinear) and scaled to [-1, 1].

The weights are never downloaded: the user provides the file, loaded with
``torch.load(weights_only=True)`` or safetensors, and checked key by key against this network.
Statistics (mean, covariance) are computed in float64; the Fréchet distance uses
``scipy.linalg.sqrtm`` with the usual fixes (diagonal offset when the product is singular,
dropping a negligible imaginary part).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SOURCE = "the pytorch-fid project's GitHub release 'fid_weights'"
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's 1008-way classifier; not used for FID but part of the file
INPUT_SIZE = 299


class InceptionWeightsError(ValueError):
    """The Inception weights file is missing or is not the FID Inception-v3."""


class FIDError(ValueError):
    """Feature sets that FID cannot compare."""


# ---- the network ------------------------------------------------------------------------------

class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    # count_include_pad=False: the TF graph averages only real pixels at the border.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):  # Mixed_5b/5c/5d
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class MixedB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class MixedC(nn.Module):  # Mixed_6b..6e: factorised 7x7
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class MixedD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool, a quirk of the TF graph)
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; attribute names are the weight file's key prefixes."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, channels_7x7=128)
        self.Mixed_6c = MixedC(768, channels_7x7=160)
        self.Mixed_6d = MixedC(768, channels_7x7=160)
        self.Mixed_6e = MixedC(768, channels_7x7=192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # kept so the file loads strictly; FID stops before it
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features (B, 2048) of RGB images (B, 3, H, W) in [0, 1], any size."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def expected_weights() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor the weight file must hold (BatchNorm's step counter is optional:
    the file may or may not carry it)."""
    return {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}


# ---- loading ------------------------------------------------------------------------------------

def _read_tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def load_inception(path: Union[str, Path], device: Union[str, torch.device] = "cpu", looked_in: Optional[str] = None) -> FIDInceptionV3:
    """The FID Inception-v3 with weights from `path` (.pth/.pt via torch.load(weights_only=True), or .safetensors).

    `looked_in` describes where the caller searched (a models folder, a command-line option) so a
    missing file's message says where to put it.
    """
    path = Path(path)
    if not path.is_file():
        where = f" (looked in {looked_in})" if looked_in else ""
        raise InceptionWeightsError(
            f"Inception weights file not found: {path}{where}. FID needs {INCEPTION_FILENAME} from "
            f"{INCEPTION_SOURCE}; FaceX never downloads it; put the file there."
        )
    try:
        state = _read_tensors(path)
    except Exception as e:  # truncated zip, pickle refused by weights_only, bad safetensors header...
        raise InceptionWeightsError(
            f"{path.name} could not be read as a weights file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"it may be truncated or not a torch/safetensors file. Get a fresh copy of {INCEPTION_FILENAME}."
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path.name} does not hold a plain state dict of tensors; expected {INCEPTION_FILENAME}")
    _check_keys(path.name, state)
    model = FIDInceptionV3()
    model.load_state_dict(state, strict=False)  # keys and shapes checked above; only step counters may be absent
    return model.to(device).eval()


def _check_keys(name: str, state: dict) -> None:
    want = expected_weights()
    got = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(set(want) - got)
    unexpected = sorted(got - set(want))
    if any(k.startswith("AuxLogits.") for k in unexpected) or ("fc.weight" in state and state["fc.weight"].shape[0] == 1000):
        raise InceptionWeightsError(
            f"{name} looks like torchvision's ImageNet Inception-v3, not the FID Inception-v3; their features "
            f"differ and FID values would not be comparable. Use {INCEPTION_FILENAME}."
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise InceptionWeightsError(
            f"{name} is not the FID Inception-v3 weights file: keys {'; '.join(parts)}. Use {INCEPTION_FILENAME}."
        )
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise InceptionWeightsError(
                f"{name}: tensor {key} has shape {tuple(state[key].shape)}, the FID Inception-v3 needs {shape}. "
                f"Use {INCEPTION_FILENAME}."
            )


# ---- features and statistics -----------------------------------------------------------------------

@torch.no_grad()
def inception_features(
    model: FIDInceptionV3,
    images: Union[torch.Tensor, Iterable[torch.Tensor]],
    layout: str = "BHWC",
    batch_size: int = 32,
) -> torch.Tensor:
    """Pool features (N, 2048) float64 for images in [0, 1].

    `images` is one batch tensor or an iterable of batches / single images (HWC or CHW by `layout`)
    whose sizes may differ between items; each is resized to 299x299 inside the network.
    """
    if layout not in ("BHWC", "BCHW"):
        raise FIDError(f"layout must be 'BHWC' or 'BCHW', got {layout!r}")
    device = next(model.parameters()).device
    chunks = [images] if isinstance(images, torch.Tensor) else images
    feats = []
    for chunk in chunks:
        x = chunk if chunk.dim() == 4 else chunk.unsqueeze(0)
        if layout == "BHWC":
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != 3:
            raise FIDError(f"FID needs RGB images (3 channels), got {x.shape[1]} channel(s)")
        for start in range(0, x.shape[0], batch_size):
            part = x[start : start + batch_size].to(device=device, dtype=torch.float32)
            feats.append(model(part).to("cpu", torch.float64))
    if not feats:
        raise FIDError("no images to compute Inception features from")
    return torch.cat(feats)


def activation_statistics(features: Union[torch.Tensor, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as in pytorch-fid's np.cov) of (N, D) features, float64."""
    f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2:
        raise FIDError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise FIDError(f"FID needs at least 2 images per set to estimate a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) for two Gaussians, in float64."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise FIDError(
            f"statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Fewer images than feature dims make the product singular; scipy warns, the fixes below handle it.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps  # regularise both covariances slightly
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        worst = np.max(np.abs(np.diagonal(covmean).imag))
        if worst > 1e-3:
            raise FIDError(f"matrix square root has a significant imaginary part ({worst:.3g}); the statistics are degenerate")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _centred_factor(features) -> np.ndarray:
    """A with A^T A = the unbiased covariance of (N, D) features."""
    f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    return (f - f.mean(axis=0)) / np.sqrt(f.shape[0] - 1)


def fid_from_features(features_a, features_b) -> float:
    """FID of two feature sets (N, D).

    With at least D features per set this is `frechet_distance` on the sets' statistics (sqrtm,
    as pytorch-fid). With fewer, both covariances have rank < D and the D x D square root is both
    slow (about a minute for D = 2048 on two CPU cores) and inaccurate; the same quantity is then
    computed exactly in the small space: with S1 = A^T A and S2 = B^T B (A, B centred features),
    the non-zero eigenvalues of S1 S2 are those of the symmetric PSD matrix A S2 A^T, so
    Tr sqrt(S1 S2) = sum of their square roots.
    """
    mu1, s1 = activation_statistics(features_a)
    mu2, s2 = activation_statistics(features_b)
    n1, n2, dims = len(features_a), len(features_b), mu1.shape[0]
    if min(n1, n2) >= dims:
        return frechet_distance(mu1, s1, mu2, s2)
    a, other = (features_a, s2) if n1 <= n2 else (features_b, s1)
    factor = _centred_factor(a)
    small = factor @ other @ factor.T
    eig = np.linalg.eigvalsh((small + small.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid(model: FIDInceptionV3, images_a, images_b, layout: str = "BHWC", batch_size: int = 32) -> float:
    """FID between two image sets (tensors or iterables of batches, values in [0, 1])."""
    return fid_from_features(
        inception_features(model, images_a, layout, batch_size),
        inception_features(model, images_b, layout, batch_size),
    )
