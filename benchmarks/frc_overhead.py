"""FRC overhead on a full-size SD1.5 UNet (random weights, ComfyUI's own UNetModel class).

Times one UNet call (a sampling step with cfg: batch 2 = cond + uncond) patched and unpatched,
interleaved in one run so machine noise hits both alike, at 256x256 and 512x512, and reports the
ratio next to the FLOP ratio from torch.utils.flop_counter. Also reports the FaceX-owned weight
size for SD1.5 (FRC bank + adapters, CLIP vision excluded) in fp16.

    python benchmarks/frc_overhead.py [--repeats 5] [--sizes 256 512] > frc_overhead.json
Targets (issue 2): time ratio <= 1.12 at 512x512 and within 5% of the FLOP ratio; <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from facex_core.checkpoint import init_model  # noqa: E402
from facex_core.frc.comfy_hooks import FRCPatch, FRCRuntime  # noqa: E402
from facex_core.frc.layout import family_layout, layout_from_module  # noqa: E402
from support.comfy_inprocess import import_comfy  # noqa: E402
from support.representations import synthetic_representation  # noqa: E402

SD15_UNET = dict(model_channels=320, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 context_dim=768, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False)


def full_sd15_unet():
    import_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(image_size=64, in_channels=4, out_channels=4, num_res_blocks=2, use_spatial_transformer=True,
                     use_checkpoint=False, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **SD15_UNET)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return unet.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args()
    torch.manual_seed(0)

    unet = full_sd15_unet()
    _, layout = layout_from_module(unet)
    assert layout == family_layout("sd15"), "the full-size UNet's blocks differ from the SD1.5 family table"
    facex = init_model("sd15", random_bank_std=0.02).eval().requires_grad_(False)  # non-zero bank: the layers do real work
    rep = synthetic_representation(facex.cfg)
    runtime = FRCRuntime(facex, lambda m: m.encode(rep), 1.0, 1e9, 0.0)
    patch = FRCPatch(runtime)
    patched_opts = {"patches": {"middle_patch": [patch.middle], "attn2_output_patch": [patch.output]}, "cond_or_uncond": [1, 0]}

    n_frc = sum(p.numel() for p in facex.frc.parameters())
    n_adapters = sum(p.numel() for p in facex.adapter_parameters())
    result = {
        "unet": "SD1.5 full size, random weights, ComfyUI UNetModel, fp32, CPU",
        "threads": torch.get_num_threads(),
        "frc_blocks": len(layout),
        "frc_parameters": n_frc,
        "adapter_parameters": n_adapters,
        "facex_fp16_megabytes": round((n_frc + n_adapters) * 2 / 1e6, 1),
        "sizes": {},
    }
    from torch.utils.flop_counter import FlopCounterMode

    for size in args.sizes:
        lat = size // 8
        x = torch.randn(2, 4, lat, lat)
        t = torch.tensor([500.0, 500.0])
        ctx = torch.randn(2, 77, 768)

        def call(opts):
            with torch.no_grad():
                return unet(x, t, context=ctx, transformer_options=dict(opts))

        call({}), call(patched_opts)  # warm-up (allocations; f_SD and its k/v are computed once here)
        flops = {}
        for name, opts in (("unpatched", {}), ("patched", patched_opts)):
            with FlopCounterMode(display=False) as counter:
                call(opts)
            flops[name] = counter.get_total_flops()
        times = {"unpatched": [], "patched": []}
        for _ in range(args.repeats):
            for name, opts in (("unpatched", {}), ("patched", patched_opts)):
                start = time.perf_counter()
                call(opts)
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio_t = med["patched"] / med["unpatched"]
        ratio_f = flops["patched"] / flops["unpatched"]
        result["sizes"][f"{size}x{size}"] = {
            "seconds_per_step_unpatched": round(med["unpatched"], 4),
            "seconds_per_step_patched": round(med["patched"], 4),
            "time_ratio": round(ratio_t, 4),
            "flop_ratio": round(ratio_f, 4),
            "time_vs_flop_ratio": round(ratio_t / ratio_f, 4),
            "all_times": {k: [round(s, 4) for s in v] for k, v in times.items()},
        }
    result["kv_projections"] = runtime.kv_projections
    result["targets"] = {
        "time_ratio_512_max": 1.12,
        "time_within_flop_ratio": 0.05,
        "facex_fp16_megabytes_max": 150,
    }
    s512 = result["sizes"].get("512x512")
    if s512:
        result["targets"]["met"] = {
            "time_ratio_512": s512["time_ratio"] <= 1.12,
            "within_5pct_of_flops": abs(s512["time_vs_flop_ratio"] - 1) <= 0.05,
            "size": result["facex_fp16_megabytes"] <= 150,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
