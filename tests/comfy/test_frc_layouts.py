"""The FRC bank against real ComfyUI UNetModel classes (in-process, scaled-down widths) for every
family: the walked layout matches the family table, every block fires during a forward pass, a
fresh bank is exact, a random one is not."""

import pytest
import torch

from facex_core.frc.comfy_hooks import FRCPatch, FRCRuntime
from facex_core.frc.layout import FAMILIES, family_layout, layout_from_module
from facex_core.model import FaceXConfig, FaceXModel
from support.comfy_inprocess import TINY_UNET_CONFIGS, tiny_unet
from support.representations import synthetic_representation


def _facex_for(unet, family):
    context_dim, layout = layout_from_module(unet)
    cfg = FaceXConfig.for_family(family, layout=layout, identity_map_channels=0, clip_dim=0, texture_dim=0, lighting_dim=0)
    return cfg, FaceXModel(cfg)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_walked_layout_matches_the_family_table(family):
    unet = tiny_unet(family)
    context_dim, layout = layout_from_module(unet)
    assert context_dim == FAMILIES[family].context_dim
    assert layout == family_layout(family, TINY_UNET_CONFIGS[family]["model_channels"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_block_fires_and_a_fresh_bank_is_exact(family):
    unet = tiny_unet(family)
    cfg, facex = _facex_for(unet, family)
    rep = synthetic_representation(cfg)
    ctx_dim = FAMILIES[family].context_dim
    torch.manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([400.0, 400.0]), torch.randn(2, 5, ctx_dim)
    kwargs = {}
    if family == "sdxl":
        unet.num_classes = None  # tiny test UNet built without the SDXL size embedding
    with torch.no_grad():
        base = unet(x, t, context=ctx, transformer_options={}, **kwargs)

        def run():
            rt = FRCRuntime(facex, lambda m: m.encode(rep), 1.0, 1e9, 0.0)
            p = FRCPatch(rt)
            opts = {"patches": {"middle_patch": [p.middle], "attn2_output_patch": [p.output]}, "cond_or_uncond": [0, 1]}
            return unet(x, t, context=ctx, transformer_options=opts, **kwargs), rt

        out, rt = run()
    assert rt.fired == {b.key for b in cfg.layout}, "some transformer blocks never ran their FRC layer"
    assert rt.kv_projections == len(cfg.layout)
    assert torch.equal(out, base)
    for layer in facex.frc.layers.values():
        torch.nn.init.normal_(layer.zero_out.weight, std=0.05)
    with torch.no_grad():
        out2, _ = run()
    assert (out2 - base).abs().max() > 1e-5
