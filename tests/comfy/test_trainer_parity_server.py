"""The trainer's noise prediction with FRC equals FaceXApplyFRC's in the real ComfyUI server.

Same files on both sides: the tiny random SD1.5 single-file checkpoint (ComfyUI loads it with
CheckpointLoaderSimple; the trainer with its own loader, diffusers' from_single_file with a local
config folder, offline), one FaceX checkpoint with a random FRC bank made for that UNet, and one
saved face. The server graph observes the model output through a prompt:

    LoadLatent (x, our file) -> SamplerCustom(add_noise off, cfg 1, euler, BasicScheduler 1 step)
        -> denoised_output = x0 = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)) -> SaveLatent

so eps = (x - x0) / sigma is ComfyUI's noise prediction, and the test compares it with the
trainer-side prediction (trainer.condition_tokens + trainer.predict_noise, diffusers hooks)."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from facex_core.checkpoint import init_model, load_checkpoint, save_checkpoint
from facex_core.frc.diffusers_hooks import attach_frc
from facex_core.train.trainer import condition_tokens, encode_prompt, load_base_model, predict_noise
from support.comfy_server import Prompt, next_seed
from support.representations import synthetic_representation
from support.tiny_training import sd15_checkpoint_tiny_config_dir

pytestmark = pytest.mark.comfy

SD15_LATENT_SCALE = 0.18215
# fp32 on both sides (ComfyUI runs the fp16 file's UNet in fp32 on CPU); attention kernels and
# summation order differ. eps is O(1).
ATOL, RTOL = 1e-4, 1e-3


def comfy_sigma_max() -> float:
    """ComfyUI's SD1.x discrete schedule (make_beta_schedule 'linear' = scaled linear, float64),
    sigma at t = 999: the only sigma of BasicScheduler('normal', steps=1) before the final 0."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    acp = np.cumprod(1.0 - betas)
    return float(np.float32(((1 - acp) / acp) ** 0.5)[999])


@pytest.fixture(scope="module")
def parity_files(comfy_server, random_sd15_tiny):
    models = comfy_server.models_dir
    ckpt = os.path.join(models, "checkpoints", random_sd15_tiny)
    facex = init_model("sd15", "production", unet=ckpt, seed=5, random_bank_std=0.05)
    facex_name = "facex_random_trainer_parity.safetensors"
    save_checkpoint(facex, os.path.join(models, "facex", facex_name), weights="random-test",
                    licence="random test weights, useless for images")
    rep = synthetic_representation(facex.cfg, crop_size=64, seed=11)
    face_name = "random_trainer_parity_face.safetensors"
    rep.save(os.path.join(models, "facex", "faces", face_name))
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # 64x64 image, ComfyUI's latent scale
    latent_name = "facex_random_parity.latent"
    save_file({"latent_tensor": latent, "latent_format_version_0": torch.tensor([])},
              os.path.join(comfy_server.input_dir, latent_name))
    return {"ckpt": ckpt, "ckpt_name": random_sd15_tiny, "facex": facex_name, "face": face_name, "latent": latent_name,
            "latent_tensor": latent}


def server_eps(server, files, with_frc: bool) -> torch.Tensor:
    p = Prompt()
    ckpt = p.add("CheckpointLoaderSimple", ckpt_name=files["ckpt_name"])
    model = ckpt[0]
    if with_frc:
        loader = p.add("FaceXModelLoader", facex_name=files["facex"])
        face = p.add("FaceXLoadRepresentation", face=files["face"])
        model = p.add("FaceXApplyFRC", model=model, facex_model=loader[0], representation=face[0], strength=1.0,
                      start_percent=0.0, end_percent=1.0)[0]
    text = p.add("CLIPTextEncode", clip=ckpt[1], text="a photo of a face")
    zero = p.add("ConditioningZeroOut", conditioning=text[0])
    sampler = p.add("KSamplerSelect", sampler_name="euler")
    sigmas = p.add("BasicScheduler", model=model, scheduler="normal", steps=1, denoise=1.0)
    latent = p.add("LoadLatent", latent=files["latent"])
    seed = next_seed()  # unused without noise, but defeats ComfyUI's prompt cache
    out = p.add("SamplerCustom", model=model, add_noise=False, noise_seed=seed, cfg=1.0, positive=zero[0], negative=zero[0],
                sampler=sampler[0], sigmas=sigmas[0], latent_image=latent[0])
    prefix = f"facex_trainer_parity_{seed}"
    p.add("SaveLatent", samples=out[1], filename_prefix=prefix)  # output 1 = denoised_output (x0)
    outputs = server.run(p)
    saved = [l for o in outputs.values() for l in o.get("latents", [])]
    assert len(saved) == 1, outputs
    x0 = load_file(os.path.join(server.output_dir, saved[0].get("subfolder", ""), saved[0]["filename"]))["latent_tensor"]
    x = files["latent_tensor"] * SD15_LATENT_SCALE  # LoadLatent, then the SD1.5 latent format's process_in
    sigma = comfy_sigma_max()
    return (x - x0.float() * SD15_LATENT_SCALE) / sigma


def test_trainer_noise_prediction_equals_faceX_apply_frc_in_the_server(comfy_server, parity_files, figures):
    files = parity_files
    eps_frc = server_eps(comfy_server, files, with_frc=True)
    eps_plain = server_eps(comfy_server, files, with_frc=False)

    # the trainer side, from the same files, through the trainer's own code
    config_dir = sd15_checkpoint_tiny_config_dir(comfy_server.comfyui)
    base = load_base_model(files["ckpt"], str(config_dir))
    base.unet.requires_grad_(False).eval()
    facex = load_checkpoint(os.path.join(comfy_server.models_dir, "facex", files["facex"]))
    holder = attach_frc(facex.frc, base.unet)
    sigma = comfy_sigma_max()
    x = files["latent_tensor"] * SD15_LATENT_SCALE
    t = torch.tensor([999])
    context = torch.zeros(1, 77, 768)  # ConditioningZeroOut
    from facex_core.representation import FaceRepresentation

    rep = FaceRepresentation.load(os.path.join(comfy_server.models_dir, "facex", "faces", files["face"]))
    with torch.no_grad():
        tokens = condition_tokens(facex, rep)
        eps_trainer = predict_noise(base.unet, holder, tokens, x / (sigma ** 2 + 1) ** 0.5, t, context)
        eps_trainer_plain = predict_noise(base.unet, holder, None, x / (sigma ** 2 + 1) ** 0.5, t, context)
    holder.detach()
    assert encode_prompt(base, "", "cpu").shape == (1, 77, 768)  # the single-file text encoder + ComfyUI's tokenizer work

    figures["trainer_vs_server_eps_max_abs_diff"] = float((eps_trainer - eps_frc).abs().max())
    figures["server_frc_effect_eps_max_abs"] = float((eps_frc - eps_plain).abs().max())
    torch.testing.assert_close(eps_trainer_plain, eps_plain, atol=ATOL, rtol=RTOL)  # the same UNet, unpatched
    torch.testing.assert_close(eps_trainer, eps_frc, atol=ATOL, rtol=RTOL)
    assert (eps_frc - eps_plain).abs().max() > 1e-2, "FRC did not change the server's prediction: the parity would prove nothing"
