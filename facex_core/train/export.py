"""`facex export`: a training state -> the FaceX checkpoint the nodes load (checkpoint.py format,
weights="trained", with a licence note naming the training data).

    facex export RUN_DIR/checkpoints/step-0010000 --out ComfyUI/models/facex/facex_sd15.safetensors \
        --data-name CelebV-HQ --data-licence "non-commercial research only"

A state folder is what `facex train` saves with accelerate (model.safetensors + optimizer + RNG
states) plus its facex_config.json / train_config.yaml. `facex train` also exports by itself at
the end of a run (output_dir/facex_trained.safetensors). States sharded by FSDP or DeepSpeed are
merged first with `accelerate merge-weights` (the end-of-run export gathers them itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..model import FaceXConfig, FaceXModel
from . import TrainError
from .config import TrainConfig, load_config

PREFIX = "facex."  # the training module holds the FaceX model under this name


def licence_note(cfg: Optional[TrainConfig], data_name: str = "", data_licence: str = "") -> str:
    data_name = data_name or (cfg.data_name if cfg else "") or "unnamed training data"
    data_licence = data_licence or (cfg.data_licence if cfg else "") or "not stated: check the terms of the data used"
    base = Path(cfg.base_model).name if cfg and cfg.base_model else "a Stable Diffusion base model"
    return (f"FaceX weights trained with `facex train` on {data_name} (training data licence: {data_licence}); "
            f"base model {base}, whose licence also applies to generated images")


def _facex_state(state: dict) -> dict:
    keys = [k for k in state if k.startswith(PREFIX)]
    if not keys:
        raise TrainError("the training state holds no FaceX weights (no 'facex.' keys)")
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def export_weights(state: dict, facex_cfg: FaceXConfig, out, cfg: Optional[TrainConfig] = None,
                   data_name: str = "", data_licence: str = "", step: Optional[int] = None) -> Path:
    model = FaceXModel(facex_cfg)
    try:
        model.load_state_dict(_facex_state(state), strict=True)
    except RuntimeError as e:
        raise TrainError(f"the training state does not match its FaceX config: {e}") from e
    extra = {"trained_steps": step} if step is not None else None
    return save_checkpoint(model, out, weights="trained", licence=licence_note(cfg, data_name, data_licence), extra=extra)


def export_state(state_dir, out, data_name: str = "", data_licence: str = "") -> Path:
    from safetensors.torch import load_file

    from .trainer import FACEX_CONFIG_FILE, STEP_FILE, TRAIN_CONFIG_FILE

    d = Path(state_dir)
    cfg_file = d / FACEX_CONFIG_FILE
    if not cfg_file.is_file():
        raise TrainError(f"{d} is not a FaceX training state: no {FACEX_CONFIG_FILE} (give a folder under <output_dir>/checkpoints/)")
    weights = d / "model.safetensors"
    if not weights.is_file():
        binary = d / "pytorch_model.bin"
        if binary.is_file():
            state = torch.load(binary, map_location="cpu", weights_only=True)
        else:
            raise TrainError(
                f"{d} has no model.safetensors; a sharded FSDP/DeepSpeed state must be merged first with "
                f"`accelerate merge-weights` (or use the export written at the end of `facex train`)"
            )
    else:
        state = load_file(str(weights))
    train_cfg = load_config(str(d / TRAIN_CONFIG_FILE)) if (d / TRAIN_CONFIG_FILE).is_file() else None
    step = json.loads((d / STEP_FILE).read_text())["step"] if (d / STEP_FILE).is_file() else None
    return export_weights(state, FaceXConfig.from_json(cfg_file.read_text()), out, train_cfg, data_name, data_licence, step)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state", help="a training state folder (<output_dir>/checkpoints/step-...)")
    parser.add_argument("--out", required=True, help="FaceX checkpoint to write (.safetensors, into ComfyUI/models/facex/)")
    parser.add_argument("--data-name", default="", help="name of the training data for the licence note (default: from the run's config)")
    parser.add_argument("--data-licence", default="", help="licence terms of the training data (default: from the run's config)")


def run(args) -> int:
    try:
        path = export_state(args.state, args.out, args.data_name, args.data_licence)
        model = load_checkpoint(path)  # what FaceXModelLoader will do
    except TrainError as e:
        print(f"facex export: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(path), "family": model.cfg.family, "weights": model.weights_kind, "licence": model.licence}))
    return 0
