"""The FaceX checkpoint format: one safetensors file with JSON metadata.

metadata:
  format          "facex.checkpoint"
  format_version  "1"
  config          FaceXConfig as JSON (family, block layout, token width, FORD backends and dims)
  licence         licence note for the weights (what they were trained on)
  weights         "initialised" (fresh from `facex init`: FRC output exactly zero),
                  "random-test" (random non-zero bank, for tests only) or "trained"

Also the `facex init` subcommand (configure / run, see cli.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch

from .frc.layout import FAMILIES, describe_families, layout_from_state_dict
from .model import DEFAULT_BACKENDS, EMBEDDED_BACKENDS, FaceXConfig, FaceXModel

FORMAT = "facex.checkpoint"
FORMAT_VERSION = 1
INIT_LICENCE = "Apache-2.0 (freshly initialised; contains no trained weights)"

# FORD backend sets a checkpoint can be built for, with the dimensions their extractors give.
BACKEND_PRESETS: dict[str, dict] = {
    "production": dict(backends=DEFAULT_BACKENDS, identity_dim=512, identity_map_channels=512, expression_dim=64,
                       texture_dim=80, lighting_dim=27, clip_dim=1024),
    "embedded": dict(backends=EMBEDDED_BACKENDS, identity_dim=128, identity_map_channels=0, expression_dim=None,
                     texture_dim=0, lighting_dim=0, clip_dim=1024),
}


class CheckpointError(ValueError):
    """A FaceX checkpoint that cannot be used; the message names the file and what is wrong."""


def save_checkpoint(model: FaceXModel, path, weights: str = "trained", licence: str = INIT_LICENCE, extra: Optional[dict] = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.cfg.to_json(),
        "licence": licence,
        "weights": weights,
        **{k: str(v) for k, v in (extra or {}).items()},
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # a crash never leaves a truncated checkpoint under the real name
    return path


def read_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"FaceX checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file (truncated download or another format: {e}); "
            f"download it again or re-export it with `facex export`"
        ) from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is not a FaceX checkpoint (its metadata format is {meta.get('format')!r}); "
            f"FaceX checkpoints are made by `facex init`, `facex train` or `facex export`"
        )
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{path.name} is FaceX checkpoint format {meta['format_version']}; this FaceX reads up to {FORMAT_VERSION}. Update FaceX.")
    return meta


def load_checkpoint(path, device="cpu", dtype: Optional[torch.dtype] = None) -> FaceXModel:
    from safetensors import safe_open

    path = Path(path)
    meta = read_metadata(path)
    try:
        cfg = FaceXConfig.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name}: the FaceX config in its metadata is unreadable ({e})") from e
    model = FaceXModel(cfg)
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                raise CheckpointError(
                    f"{path.name} does not match its own config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                )
            state = {}
            for k in expected:
                t = f.get_tensor(k)
                if t.shape != expected[k].shape:
                    raise CheckpointError(f"{path.name}: tensor {k} has shape {tuple(t.shape)}, its config says {tuple(expected[k].shape)}")
                state[k] = t
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path.name} could not be read whole (truncated file? {e}); download or export it again") from e
    model.load_state_dict(state)
    model.weights_kind = meta.get("weights", "trained")
    model.licence = meta.get("licence", "")
    return model.to(device=device, dtype=dtype).eval()


def unet_layout_from_file(path) -> tuple[str, list]:
    """(family, layout) from a UNet or full SD checkpoint, reading tensor shapes only."""
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            if k.endswith("attn2.to_k.weight"):
                shapes[k] = torch.empty(f.get_slice(k).get_shape(), device="meta")
    return layout_from_state_dict(shapes)


def init_model(family: str, backends: str = "production", unet: Optional[str] = None, seed: int = 0,
               random_bank_std: float = 0.0, **overrides) -> FaceXModel:
    """A fresh FaceX model: adapters initialised, FRC output projections zero (unless a random
    non-zero bank is asked for, which is for tests only)."""
    preset = dict(BACKEND_PRESETS[backends])
    if preset.get("expression_dim") is None:
        from .ford.mediapipe_extractors import EXPRESSION_DIM  # embedded mesh expression descriptor

        preset["expression_dim"] = EXPRESSION_DIM
    preset.update(overrides)
    if unet is not None:
        found, layout = unet_layout_from_file(unet)
        if found != family:
            raise CheckpointError(
                f"{Path(unet).name} is a {FAMILIES[found].display} UNet but --family {family} ({FAMILIES[family].display}) was asked for"
            )
        preset["layout"] = layout
    torch.manual_seed(seed)
    model = FaceXModel(FaceXConfig.for_family(family, **preset))
    if random_bank_std:
        with torch.no_grad():
            for layer in model.frc.layers.values():
                layer.zero_out.weight.normal_(0.0, random_bank_std)
                layer.zero_out.bias.normal_(0.0, random_bank_std)
    return model


# ---- `facex init` ------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES), help=f"base model family: {describe_families()}")
    parser.add_argument("--out", required=True, help="output .safetensors path (put it in ComfyUI/models/facex/)")
    parser.add_argument("--backends", default="production", choices=sorted(BACKEND_PRESETS),
                        help="FORD backends the adapters are sized for (production: ArcFace/BiSeNet/Deep3D/L2CS/CLIP)")
    parser.add_argument("--unet", help="take the block layout from this UNet/SD checkpoint instead of the family table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-bank-std", type=float, default=0.0,
                        help="TESTS ONLY: fill the FRC output projections with random values (the file name must contain 'random')")


def run(args) -> int:
    out = Path(args.out)
    if args.random_bank_std and "random" not in out.name:
        raise SystemExit("--random-bank-std writes random weights: the output file name must contain 'random'")
    model = init_model(args.family, args.backends, args.unet, args.seed, args.random_bank_std)
    kind = "random-test" if args.random_bank_std else "initialised"
    licence = "random test weights, no licence restrictions, useless for images" if args.random_bank_std else INIT_LICENCE
    save_checkpoint(model, out, weights=kind, licence=licence)
    n_frc = sum(p.numel() for p in model.frc.parameters())
    n_adapt = sum(p.numel() for p in model.adapter_parameters())
    print(json.dumps({"out": str(out), "family": args.family, "weights": kind, "frc_blocks": len(model.cfg.layout),
                      "frc_parameters": n_frc, "adapter_parameters": n_adapt,
                      "fp16_megabytes": round((n_frc + n_adapt) * 2 / 1e6, 1)}))
    return 0
