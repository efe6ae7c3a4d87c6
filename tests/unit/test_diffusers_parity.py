"""The diffusers hook adapter (training) against the ComfyUI hook adapter (inference), in-process:
the same random SD1.5-shaped UNet weights in diffusers' UNet2DConditionModel and ComfyUI's own
UNetModel, the same FaceX weights (random non-zero FRC bank), the same inputs -> the same noise
prediction with FRC. This is what proves the diffusers<->ComfyUI block map."""

import pytest
import torch

from facex_core.frc.comfy_hooks import FRCPatch, FRCRuntime
from facex_core.frc.diffusers_hooks import DiffusersFRCError, attach_frc, frc_conditioning, mix_null_tokens
from facex_core.frc.layout import family_layout, layout_from_diffusers, layout_from_module
from facex_core.model import FaceXConfig, FaceXModel
from support.comfy_inprocess import tiny_unet
from support.representations import synthetic_representation
from support.tiny_training import TINY_CHANNELS, comfy_to_diffusers_state_dict, tiny_diffusers_unet

# fp32 on both sides; the attention kernels and summation orders differ, nothing else.
ATOL, RTOL = 2e-5, 1e-4


@pytest.fixture(scope="module")
def twins():
    comfy_unet = tiny_unet("sd15", seed=7).eval()
    diff_unet = tiny_diffusers_unet(seed=None).eval().requires_grad_(False)
    diff_unet.load_state_dict(comfy_to_diffusers_state_dict(comfy_unet.state_dict()), strict=True)
    _, layout = layout_from_module(comfy_unet)
    cfg = FaceXConfig.for_family("sd15", layout=layout, identity_map_channels=0, clip_dim=0, texture_dim=0, lighting_dim=0)
    torch.manual_seed(3)
    facex = FaceXModel(cfg).eval()
    with torch.no_grad():
        for layer in facex.frc.layers.values():
            layer.zero_out.weight.normal_(0.0, 0.05)
            layer.zero_out.bias.normal_(0.0, 0.05)
    return comfy_unet, diff_unet, facex


def _inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([710.0, 35.0][:batch])
    ctx = torch.randn(batch, 7, 768, generator=g)
    return x, t, ctx


def _comfy(unet, facex, rep, x, t, ctx, cond_or_uncond=(0,)):
    rt = FRCRuntime(facex, lambda m: m.encode(rep), 1.0, 1e9, 0.0)
    patch = FRCPatch(rt)
    opts = {"patches": {"middle_patch": [patch.middle], "attn2_output_patch": [patch.output]},
            "cond_or_uncond": list(cond_or_uncond)}
    with torch.no_grad():
        return unet(x, t, context=ctx, transformer_options=opts), rt


def test_layouts_and_block_keys_agree(twins):
    comfy_unet, diff_unet, facex = twins
    ctx_dim, layout = layout_from_diffusers(diff_unet)
    assert ctx_dim == 768
    assert layout == layout_from_module(comfy_unet)[1] == family_layout("sd15", TINY_CHANNELS)
    holder = attach_frc(facex.frc, diff_unet)
    try:
        assert set(holder.blocks) == {b.key for b in facex.cfg.layout}
    finally:
        holder.detach()


def test_unpatched_twins_agree(twins):
    comfy_unet, diff_unet, _ = twins
    x, t, ctx = _inputs()
    with torch.no_grad():
        a = comfy_unet(x, t, context=ctx, transformer_options={})
        b = diff_unet(x, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL)


def test_frc_noise_prediction_is_the_same_through_both_hook_adapters(twins):
    comfy_unet, diff_unet, facex = twins
    rep = synthetic_representation(facex.cfg, batch=2, seed=4)  # one face per latent
    x, t, ctx = _inputs(1)
    with torch.no_grad():
        base = diff_unet(x, t, encoder_hidden_states=ctx).sample
    want, rt = _comfy(comfy_unet, facex, rep, x, t, ctx)
    assert rt.fired == {b.key for b in facex.cfg.layout}
    holder = attach_frc(facex.frc, diff_unet)
    try:
        with torch.no_grad(), frc_conditioning(holder, facex.encode(rep)):
            got = diff_unet(x, t, encoder_hidden_states=ctx).sample
        assert holder.fired == {b.key for b in facex.cfg.layout}, "some diffusers blocks never ran FRC"
        # outside the context the same UNet is un-patched again (FAIR's second pass relies on it)
        with torch.no_grad():
            again = diff_unet(x, t, encoder_hidden_states=ctx).sample
    finally:
        holder.detach()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert (got - base).abs().max() > 1e-3, "FRC changed nothing: the parity would prove nothing"
    assert torch.equal(again, base)


def test_null_rows_match_comfy_uncond_and_detach_restores_the_unet(twins):
    """cond/uncond batch as ComfyUI runs cfg ([cond, uncond] chunks) vs per-sample null rows."""
    comfy_unet, diff_unet, facex = twins
    rep = synthetic_representation(facex.cfg, batch=1, seed=5)
    x, t, ctx = _inputs(2)
    want, _ = _comfy(comfy_unet, facex, rep, x, t, ctx, cond_or_uncond=(0, 1))
    holder = attach_frc(facex.frc, diff_unet)
    with torch.no_grad():
        tokens = mix_null_tokens(facex.encode(rep).expand(2, -1, -1), facex.null_encoding(), torch.tensor([False, True]))
        with frc_conditioning(holder, tokens):
            got = diff_unet(x, t, encoder_hidden_states=ctx).sample
    holder.detach()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in diff_unet.modules()), "a hook survived detach()"
    with torch.no_grad(), frc_conditioning(holder, tokens):  # detached: tokens have no effect
        plain = diff_unet(x, t, encoder_hidden_states=ctx).sample
    with torch.no_grad():
        torch.testing.assert_close(plain, diff_unet(x, t, encoder_hidden_states=ctx).sample, atol=0, rtol=0)


def test_a_bank_for_another_layout_is_refused(twins):
    _, diff_unet, _ = twins
    other = FaceXModel(FaceXConfig.for_family("sd15", layout=family_layout("sd15", 64), identity_map_channels=0,
                                              clip_dim=0, texture_dim=0, lighting_dim=0, token_dim=32, adapter_hidden=32))
    with pytest.raises(DiffusersFRCError, match="is 64 wide"):
        attach_frc(other.frc, diff_unet)


def test_gradient_checkpointing_gives_the_same_gradients(twins):
    """The UNet's own checkpointing recomputes blocks in backward, after the conditioning context
    has closed; the FRC-aware checkpoint function must still give the same gradients."""
    _, unet, facex = twins
    rep = synthetic_representation(facex.cfg, batch=2, seed=6)
    x, t, ctx = _inputs(3)
    x = x[..., :8, :8]
    grads, calls = [], []
    for checkpointing in (False, True):
        holder = attach_frc(facex.frc, unet)
        if checkpointing:
            holder.enable_gradient_checkpointing()
        facex.zero_grad()
        try:
            with frc_conditioning(holder, facex.encode(rep)):
                out = unet(x, t, encoder_hidden_states=ctx).sample
            out.square().mean().backward()  # outside the context, as in the trainer
        finally:
            holder.detach()
            unet.disable_gradient_checkpointing()
        calls.append(holder.calls)
        grads.append({n: p.grad.clone() for n, p in facex.named_parameters() if p.grad is not None})
    blocks = len(facex.cfg.layout)
    assert calls == [blocks, 2 * blocks], f"checkpointing did not recompute the blocks: FRC calls {calls}"
    assert set(grads[0]) == set(grads[1]) and any(n.startswith("frc.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
