"""A RANDOM-weight stand-in for pytorch-fid's pt_inception-2015-12-05-6726825d.pth.

The real FID Inception weights cannot be had offline, so tests load a file with the exact same
layout (torchvision Inception-v3 key names with 1008 classes and no AuxLogits, float32 tensors,
BatchNorm step counters, a plain state dict written by torch.save) and random values. Every file
name made here contains `random`; FID values computed with it are only good for testing the code.

Values are scaled (He-normal convolutions, BatchNorm near identity) so activations stay finite
and informative through all 94 conv layers.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from facex_core.evaluate.fid import FIDInceptionV3

GENERATOR_VERSION = 1
CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"


def random_inception_state_dict(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, ref in FIDInceptionV3().state_dict().items():
        shape = ref.shape
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0, dtype=torch.long)
        elif key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.weight"):
            value = 0.8 + 0.4 * torch.rand(shape, generator=gen)
        elif key.endswith("bn.bias"):
            value = 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("running_mean"):
            value = 0.05 * torch.randn(shape, generator=gen)
        elif key.endswith("running_var"):
            value = 0.8 + 0.4 * torch.rand(shape, generator=gen)
        elif key == "fc.weight":
            value = 0.01 * torch.randn(shape, generator=gen)
        elif key == "fc.bias":
            value = torch.zeros(shape)
        else:
            raise AssertionError(f"random_inception: no rule for tensor {key}")
        state[key] = value.to(ref.dtype).contiguous()
    return state


def random_inception_file(seed: int = 0, cache_dir: Path = CACHE_DIR) -> Path:
    """Path of a cached random-weight FID Inception file (written on first use)."""
    spec = {k: list(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    key = hashlib.sha256(json.dumps([GENERATOR_VERSION, seed, spec], sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"random_pt_inception-2015-12-05-seed{seed}-{key}.pth"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        torch.save(random_inception_state_dict(seed), tmp)
        tmp.replace(path)
    return path
