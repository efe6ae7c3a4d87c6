"""FRC layer, bank, layouts, the FaceX model and its checkpoint format, without ComfyUI."""

import json

import pytest
import torch

from facex_core.checkpoint import CheckpointError, init_model, load_checkpoint, read_metadata, save_checkpoint
from facex_core.frc.comfy_hooks import FRCPatch, FRCRuntime
from facex_core.frc.layer import FRCBank, FRCLayer
from facex_core.frc.layout import FAMILIES, BlockSpec, family_layout, layout_from_diffusers, layout_from_state_dict
from facex_core.model import FaceXConfig, FaceXModel
from facex_core.representation import RepresentationError
from support.representations import synthetic_representation


def small_config(**kw) -> FaceXConfig:
    """SD1.5-family config over a narrow (32-channel) UNet layout so tests stay fast."""
    kw.setdefault("layout", family_layout("sd15", 32))
    return FaceXConfig.for_family("sd15", **kw)


# ---- layer ------------------------------------------------------------------------------------
def test_fresh_frc_layer_adds_exactly_zero_and_a_trained_one_does_not():
    layer = FRCLayer(64, 8, 32)
    hidden, tokens = torch.randn(2, 10, 64), torch.randn(2, 5, 32)
    k, v = layer.project_tokens(tokens)
    assert torch.equal(layer(hidden, k, v), torch.zeros(2, 10, 64))
    torch.nn.init.normal_(layer.zero_out.weight, std=0.1)
    assert layer(hidden, k, v).abs().max() > 1e-4


def test_layer_runs_in_the_unet_dtype_with_fp32_weights():
    layer = FRCLayer(64, 8, 32)
    torch.nn.init.normal_(layer.zero_out.weight, std=0.1)
    k, v = layer.project_tokens(torch.randn(1, 5, 32, dtype=torch.bfloat16))
    out = layer(torch.randn(1, 10, 64, dtype=torch.bfloat16), k, v)
    assert out.dtype == torch.bfloat16


# ---- layouts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, blocks, widths, heads_of_1280",
    [("sd15", 16, {320: 5, 640: 5, 1280: 6}, 8), ("sd2", 16, {320: 5, 640: 5, 1280: 6}, 20), ("sdxl", 70, {640: 10, 1280: 60}, 20)],
)
def test_family_layouts_have_the_real_block_counts_widths_and_heads(family, blocks, widths, heads_of_1280):
    layout = family_layout(family)
    assert len(layout) == blocks
    counts = {}
    for b in layout:
        counts[b.dim] = counts.get(b.dim, 0) + 1
    assert counts == widths
    assert {b.heads for b in layout if b.dim == 1280} == {heads_of_1280}
    assert sum(b.section == "middle" for b in layout) == (10 if family == "sdxl" else 1)


def test_layout_from_state_dict_walks_attn2_weights_and_detects_the_family():
    for family in FAMILIES:
        fam = FAMILIES[family]
        sd = {}
        for b in family_layout(family):
            prefix = {"input": f"input_blocks.{b.block}.1", "middle": "middle_block.1", "output": f"output_blocks.{b.block}.1"}[b.section]
            sd[f"model.diffusion_model.{prefix}.transformer_blocks.{b.index}.attn2.to_k.weight"] = torch.empty(b.dim, fam.context_dim, device="meta")
        found, layout = layout_from_state_dict(sd)
        assert found == family and layout == family_layout(family)


def test_state_dict_without_cross_attention_is_refused():
    with pytest.raises(ValueError, match="not a Stable Diffusion UNet"):
        layout_from_state_dict({"conv.weight": torch.empty(3, 3)})


def test_diffusers_block_map_matches_the_comfy_numbering():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    context_dim, layout = layout_from_diffusers(unet)
    assert context_dim == 768
    assert layout == family_layout("sd15", 32)


# ---- model and budget --------------------------------------------------------------------------
def test_sd15_facex_weights_fit_the_budget():
    model = init_model("sd15")
    frc = sum(p.numel() for p in model.frc.parameters())
    adapters = sum(p.numel() for p in model.adapter_parameters())
    assert 55e6 < frc < 58e6, frc  # the paper-sized bank: ~56 M parameters
    assert (frc + adapters) * 2 <= 150e6, (frc, adapters)
    assert model.frc.is_zero()


def test_encode_gives_tokens_and_uses_every_group():
    cfg = small_config()
    model = FaceXModel(cfg)
    rep = synthetic_representation(cfg, batch=2)
    tokens = model.encode(rep, reference=torch.rand(1, 3, 64, 64))
    assert tokens.shape == (2, model.num_tokens, cfg.token_dim)
    # a different identity changes the tokens; the null encoding differs from a real face
    other = model.encode(rep.replace(identity=-rep.identity), reference=torch.rand(1, 3, 64, 64))
    assert not torch.allclose(tokens, other)
    assert model.null_encoding().shape == (1, model.num_tokens, cfg.token_dim)


def test_representation_from_other_backends_or_dims_is_refused_with_names():
    cfg = small_config()
    model = FaceXModel(cfg)
    rep = synthetic_representation(cfg)
    wrong_dim = synthetic_representation(small_config(identity_dim=128))
    with pytest.raises(RepresentationError, match=r"identity.*128-d.*expects 512-d"):
        model.check_representation(wrong_dim)
    with pytest.raises(RepresentationError, match=r"'dlib_resnet'.*'insightface_arcface'"):
        model.check_representation(rep.replace(backends={**rep.backends, "identity": "dlib_resnet"}))
    with pytest.raises(RepresentationError, match="identity"):
        model.check_representation(rep.replace(identity=None))


# ---- checkpoint -------------------------------------------------------------------------------
def test_backend_names_match_any_model_of_a_bare_backend_only():
    from facex_core.model import backend_matches

    assert backend_matches("insightface_arcface", "insightface_arcface:glintr100")
    assert backend_matches("insightface_arcface:glintr100", "insightface_arcface:glintr100")
    assert not backend_matches("insightface_arcface:glintr100", "insightface_arcface:w600k_r50")
    assert not backend_matches("insightface_arcface", "insightface_arcface_v2")


def test_checkpoint_round_trip(tmp_path):
    model = FaceXModel(small_config())
    path = save_checkpoint(model, tmp_path / "facex_random_small.safetensors", weights="random-test")
    meta = read_metadata(path)
    assert meta["weights"] == "random-test" and json.loads(meta["config"])["family"] == "sd15"
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.cfg.layout == model.cfg.layout


def test_broken_checkpoints_give_clear_errors(tmp_path):
    model = FaceXModel(small_config())
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors.*(truncated|could not be read)"):
        load_checkpoint(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a FaceX checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_facex_init_cli_writes_a_zero_bank_checkpoint(tmp_path, capsys):
    from facex_core.cli import main

    out = tmp_path / "facex_sd15_init.safetensors"
    assert main(["init", "--family", "sd15", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frc_blocks"] == 16 and report["fp16_megabytes"] <= 150
    model = load_checkpoint(out)
    assert model.frc.is_zero() and read_metadata(out)["weights"] == "initialised"
    with pytest.raises(SystemExit, match="random"):
        main(["init", "--family", "sd15", "--out", str(tmp_path / "x.safetensors"), "--random-bank-std", "0.1"])


# ---- the ComfyUI hook pair, driven directly --------------------------------------------------
def _runtime(model, rep, strength=1.0, start=1e9, end=0.0):
    return FRCRuntime(model, lambda m: m.encode(rep), strength, start, end)


def test_hooks_give_cond_the_face_and_uncond_the_null_and_project_once():
    cfg = small_config()
    model = FaceXModel(cfg)
    for layer in model.frc.layers.values():
        torch.nn.init.normal_(layer.zero_out.weight, std=0.1)
    rep = synthetic_representation(cfg)
    rt = _runtime(model, rep)
    patch = FRCPatch(rt)
    block = cfg.layout[0]
    x, n = torch.randn(4, 6, block.dim), torch.randn(4, 6, block.dim)
    opts = {"block": (block.section, block.block), "block_index": block.index, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0])}
    for _ in range(3):
        assert patch.middle(x, opts) is x
        out = patch.output(n, opts)
    assert rt.kv_projections == 1 and rt.calls == 3
    layer = model.frc.layer(block.key)
    with torch.no_grad():
        k_null, v_null = layer.project_tokens(model.null_encoding())
        k_face, v_face = layer.project_tokens(model.encode(rep))
        want_uncond = n[:2] + layer(x[:2] + n[:2], k_null.expand(2, -1, -1, -1), v_null.expand(2, -1, -1, -1))
        want_cond = n[2:] + layer(x[2:] + n[2:], k_face.expand(2, -1, -1, -1), v_face.expand(2, -1, -1, -1))
    torch.testing.assert_close(out[:2], want_uncond)
    torch.testing.assert_close(out[2:], want_cond)


def test_hooks_respect_strength_zero_the_sigma_range_and_batch_rules():
    cfg = small_config()
    model = FaceXModel(cfg)
    for layer in model.frc.layers.values():
        torch.nn.init.normal_(layer.zero_out.weight, std=0.1)
    block = cfg.layout[0]
    x, n = torch.randn(2, 6, block.dim), torch.randn(2, 6, block.dim)
    opts = {"block": (block.section, block.block), "block_index": block.index, "cond_or_uncond": [0], "sigmas": torch.tensor([5.0])}
    rep = synthetic_representation(cfg)
    for rt in (_runtime(model, rep, strength=0.0), _runtime(model, rep, start=4.0, end=1.0)):
        patch = FRCPatch(rt)
        patch.middle(x, opts)
        assert torch.equal(patch.output(n, opts), n)
    # 3 faces for a latent batch of 2: refused with both numbers
    patch = FRCPatch(_runtime(model, synthetic_representation(cfg, batch=3)))
    patch.middle(x, opts)
    with pytest.raises(ValueError, match="3 faces but the latent batch is 2"):
        patch.output(n, opts)
    # one face per latent is used as given
    patch = FRCPatch(_runtime(model, synthetic_representation(cfg, batch=2)))
    patch.middle(x, opts)
    assert patch.output(n, opts).shape == n.shape


def test_deepcopy_of_hooks_shares_the_weights():
    import copy

    cfg = small_config()
    patch = FRCPatch(_runtime(FaceXModel(cfg), synthetic_representation(cfg)))
    opts = {"patches": {"middle_patch": [patch.middle], "attn2_output_patch": [patch.output]}}
    clone = copy.deepcopy(opts)
    assert clone["patches"]["middle_patch"][0] is patch.middle
    assert clone["patches"]["attn2_output_patch"][0].patch.runtime.model is patch.runtime.model
