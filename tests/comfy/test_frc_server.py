"""FaceXApplyFRC in the real ComfyUI server: exactness of a fresh bank, effect of a random one,
strength and step range, composition with LoRA / ControlNet / an attn2 replace patch, every block
firing with k/v projected once, and clear errors that leave the server up."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from facex_core.checkpoint import BACKEND_PRESETS, FaceXConfig
from facex_core.cli import main as facex_cli
from facex_core.frc.layout import FAMILIES
from support.comfy_server import ExecutionFailed, PromptRejected, next_seed, output_images, txt2img
from support.representations import synthetic_representation

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def facex_files(comfy_server, random_sd15_tiny):
    """FaceX checkpoints made for the tiny random SD1.5 (fresh and random-bank), one for SD2.x,
    a truncated one, and saved faces (production dims, and embedded dims that the checkpoint refuses)."""
    models = comfy_server.models_dir
    unet = os.path.join(models, "checkpoints", random_sd15_tiny)
    names = {
        "init": "facex_init_for_random_sd15_tiny.safetensors",
        "random": "facex_random_bank_sd15_tiny.safetensors",
        "sd2": "facex_init_sd2.safetensors",
        "truncated": "facex_truncated_random.safetensors",
    }
    out = {k: os.path.join(models, "facex", v) for k, v in names.items()}
    assert facex_cli(["init", "--family", "sd15", "--unet", unet, "--out", out["init"]]) == 0
    assert facex_cli(["init", "--family", "sd15", "--unet", unet, "--out", out["random"], "--random-bank-std", "0.5"]) == 0
    assert facex_cli(["init", "--family", "sd2", "--out", out["sd2"]]) == 0
    data = open(out["init"], "rb").read()
    open(out["truncated"], "wb").write(data[: len(data) // 3])
    faces = os.path.join(models, "facex", "faces")
    cfg = FaceXConfig.for_family("sd15", **BACKEND_PRESETS["production"])
    synthetic_representation(cfg, crop_size=64).save(os.path.join(faces, "random_face.safetensors"))
    synthetic_representation(cfg, batch=3, crop_size=64, seed=3).save(os.path.join(faces, "random_three_faces.safetensors"))
    embedded = FaceXConfig.for_family("sd15", **{**BACKEND_PRESETS["embedded"], "expression_dim": 12})
    synthetic_representation(embedded, crop_size=64).save(os.path.join(faces, "random_face_embedded_dims.safetensors"))
    return names


def frc_patch(facex_name, face="random_face.safetensors", strength=1.0, start=0.0, end=1.0):
    def patch(p, model):
        loader = p.add("FaceXModelLoader", facex_name=facex_name)
        rep = p.add("FaceXLoadRepresentation", face=face)
        return p.add("FaceXApplyFRC", model=model, facex_model=loader[0], representation=rep[0],
                     strength=strength, start_percent=start, end_percent=end)[0]
    return patch


def attn2_replace(scale=1.0):
    return lambda p, model: p.add("FaceXTestAttn2Replace", model=model, scale=scale)[0]


def generate(server, ckpt, seed, patches=(), inspect=False, batch=1, **kw):
    """Decoded image (uint8) and the fp32 latent of one txt2img run; optionally the FRC report."""
    p = txt2img(ckpt, seed, model_patches=patches, **kw)
    p[p.find("EmptyLatentImage")[0]]["inputs"]["batch_size"] = batch
    sampler = p.find("KSampler")[0]
    p.add("SaveLatent", samples=sampler[0], filename_prefix=f"facex_test_latent_{seed}")
    if inspect:
        model_ref = p[sampler]["inputs"]["model"]
        p.add("FaceXInspectFRC", model=model_ref, after=sampler[0])
    outputs = server.run(p)
    image = server.fetch_image(output_images(outputs)[0])
    latents = [l for o in outputs.values() for l in o.get("latents", [])]
    latent = load_file(os.path.join(server.output_dir, latents[0].get("subfolder", ""), latents[0]["filename"]))["latent_tensor"]
    report = None
    if inspect:
        texts = [t for o in outputs.values() for t in o.get("text", [])]
        report = json.loads(texts[0])["frc_patches"]
    return image, latent, report


def test_facex_nodes_are_registered(comfy_server):
    info = comfy_server.object_info()
    for node in ("FaceXModelLoader", "FaceXApplyFRC", "FaceXInspectFRC", "FaceXSaveRepresentation", "FaceXLoadRepresentation"):
        assert node in info, f"{node} missing from /object_info"
    inputs = info["FaceXApplyFRC"]["input"]
    assert set(inputs["required"]) == {"model", "facex_model", "representation", "strength", "start_percent", "end_percent"}
    assert "reference" in inputs["optional"]


def test_fresh_checkpoint_is_exact_and_random_bank_changes_the_image(comfy_server, random_sd15_tiny, facex_files):
    seed = next_seed()
    base_img, base_lat, _ = generate(comfy_server, random_sd15_tiny, seed)
    init_img, init_lat, report = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["init"])], inspect=True)
    assert torch.equal(init_lat, base_lat), f"max abs latent difference {(init_lat - base_lat).abs().max()}"
    assert np.array_equal(init_img, base_img)
    assert report and report[0]["fired"] == report[0]["blocks"] > 0  # it ran, and added exactly zero
    rand_img, rand_lat, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"])])
    assert (rand_lat - base_lat).abs().max() > 1e-3
    assert not np.array_equal(rand_img, base_img)


def test_strength_zero_and_an_empty_step_range_restore_the_original(comfy_server, random_sd15_tiny, facex_files):
    seed = next_seed()
    _, base_lat, _ = generate(comfy_server, random_sd15_tiny, seed, steps=3)
    _, zero_lat, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"], strength=0.0)], steps=3)
    assert torch.equal(zero_lat, base_lat)
    # start = end = 1.0: the range holds no sampling step
    _, none_lat, report = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"], start=1.0, end=1.0)], steps=3, inspect=True)
    assert torch.equal(none_lat, base_lat)
    assert report[0]["layer_calls"] == 0
    # a range covering only the later steps acts (differs from both)
    _, late_lat, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"], start=0.5, end=1.0)], steps=3)
    _, full_lat, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"])], steps=3)
    assert not torch.equal(late_lat, base_lat) and not torch.equal(late_lat, full_lat)


def test_every_block_fires_and_kv_is_projected_once_per_run(comfy_server, random_sd15_tiny, facex_files):
    steps = 3
    _, _, report = generate(comfy_server, random_sd15_tiny, next_seed(), [frc_patch(facex_files["random"], strength=0.99)],
                            steps=steps, inspect=True)
    (frc,) = report
    assert frc["not_fired"] == [] and frc["fired"] == frc["blocks"]
    assert frc["kv_projections"] == frc["blocks"], "k/v of f_SD must be projected once per block per run"
    # cfg 5: one batched cond+uncond call per step (euler: one model call per step)
    assert frc["layer_calls"] == frc["blocks"] * steps


def test_frc_composes_with_lora_controlnet_and_an_attn2_replace_patch(
        comfy_server, random_sd15_tiny, random_lora_sd15_tiny, random_controlnet_sd15_tiny, control_image, facex_files):
    seed = next_seed()
    frc = frc_patch(facex_files["random"])
    img, _, report = generate(comfy_server, random_sd15_tiny, seed, [frc], inspect=True, lora=random_lora_sd15_tiny,
                              controlnet=random_controlnet_sd15_tiny, control_image=control_image)
    assert img.shape == (256, 256, 3) and report[0]["not_fired"] == []
    _, base, _ = generate(comfy_server, random_sd15_tiny, seed)
    _, only_frc, _ = generate(comfy_server, random_sd15_tiny, seed, [frc])
    _, only_replace, _ = generate(comfy_server, random_sd15_tiny, seed, [attn2_replace()])
    _, both, report = generate(comfy_server, random_sd15_tiny, seed, [attn2_replace(), frc], inspect=True)
    assert report[0]["not_fired"] == []
    for name, lat in (("FRC", only_frc), ("attn2 replace", only_replace), ("both", both)):
        assert (lat - base).abs().max() > 1e-3, f"{name} did not change the output"
    assert (both - only_frc).abs().max() > 1e-3 and (both - only_replace).abs().max() > 1e-3


def test_one_face_broadcasts_over_the_batch_and_one_face_per_latent_is_used_per_latent(comfy_server, random_sd15_tiny, facex_files):
    seed = next_seed()
    _, base, _ = generate(comfy_server, random_sd15_tiny, seed, batch=3)
    _, one, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"])], batch=3)
    _, three, _ = generate(comfy_server, random_sd15_tiny, seed, [frc_patch(facex_files["random"], face="random_three_faces.safetensors")], batch=3)
    assert one.shape[0] == three.shape[0] == 3
    assert (one - base).abs().max() > 1e-3
    # three different faces steer the three latents differently from one face for all
    for i in range(3):
        assert (three[i] - one[i]).abs().max() > 1e-4, f"latent {i}"


def _error_text(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("case, expect", [
    ("truncated", r"facex_truncated_random\.safetensors.*(truncated|not a readable)"),
    ("sd2", r"made for SD2\.x but the model is SD1\.x"),
    ("embedded_face", r"identity.*128-d.*expects 512-d"),
    ("missing", r"not found; FaceX looked in: .*models.facex"),
    ("batch", r"3 faces but the latent batch is 1"),
])
def test_bad_inputs_give_clear_errors_and_the_server_stays_up(comfy_server, random_sd15_tiny, facex_files, case, expect):
    import re

    facex, face = facex_files["init"], "random_face.safetensors"
    if case in ("truncated", "sd2"):
        facex = facex_files[case]
    elif case == "embedded_face":
        face = "random_face_embedded_dims.safetensors"
    elif case == "missing":
        facex = "facex_not_there.safetensors"
    elif case == "batch":
        face = "random_three_faces.safetensors"
    with pytest.raises((ExecutionFailed, PromptRejected)) as excinfo:
        generate(comfy_server, random_sd15_tiny, next_seed(), [frc_patch(facex, face=face)])
    assert re.search(expect, _error_text(excinfo), re.S), _error_text(excinfo)[:2000]
    comfy_server.assert_alive()
    # the server still runs an ordinary prompt afterwards
    img, _, _ = generate(comfy_server, random_sd15_tiny, next_seed())
    assert img.shape == (256, 256, 3)
