"""Tiny random-weight Stable Diffusion 1.5-shaped base models for trainer tests (no downloads).

- `tiny_diffusers_unet(seed)`: a diffusers UNet2DConditionModel with SD1.5's structure (4 levels,
  cross-attention in the first three, one transformer per attention, 8 heads, context width 768,
  conv proj_in/out) at 32 base channels: the diffusers twin of ComfyUI's tiny SD1.5 UNet in
  support/comfy_inprocess.py (TINY_UNET_CONFIGS["sd15"]), so the same weights load into both.
- `comfy_to_diffusers_state_dict(sd, comfy_config)`: ComfyUI UNet keys -> diffusers keys, with
  ComfyUI's own map (comfy.utils.unet_to_diffusers).
- `tiny_base_model_dir()`: a diffusers-format folder (unet/, vae/, text_encoder/, tokenizer/,
  scheduler/, model_index.json) with a two-level SD1.5-style UNet (DIFFUSERS_TINY_TRAIN, diffusers'
  own seeded initialisation), an 8x-downsampling 4-level VAE of 8-16 channels
  and a one-layer CLIP text encoder of width 768 over a 56-token character vocabulary, all random,
  cached under tests/.cache/ keyed by this file's content. Folder name contains "random".
- `tiny_facex_overrides()`: FaceX adapter sizes small enough for CPU tests.
- `sd15_checkpoint_tiny_config_dir(comfyui)`: configs (+ ComfyUI's SD1 tokenizer) that let the
  trainer load ComfyUI's tiny random SD1.5 single-file checkpoint offline (random_checkpoints.py).
- `astronaut_frames(n)` / `write_video(path, frames)`: the public-domain astronaut photo as a short
  moving "video" (shifted, scaled crops around her face), written with PyAV.
- `fake_decompose`: a stand-in for FORD (cache plumbing tests only; the real FORD is used by
  test_prepare's real-FORD test), backends named "fake_*".
- `torchrun(n, module, *args)` + `env_for_subprocess()`: n CPU processes (gloo) of a module.
- `python -m support.tiny_training prepare-fake IN OUT`: `facex prepare` with fake_decompose,
  reporting per rank which clips it decomposed (the 2-process split test).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

TESTS_DIR = Path(__file__).resolve().parents[1]
CACHE_DIR = TESTS_DIR / ".cache" / "tiny_training"

TINY_CHANNELS = 32
CONTEXT_DIM = 768

# ComfyUI's tiny SD1.5 config (the same numbers as support/comfy_inprocess.TINY_UNET_CONFIGS["sd15"])
# in the form comfy.utils.unet_to_diffusers reads.
COMFY_TINY_SD15 = dict(
    model_channels=TINY_CHANNELS, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, context_dim=CONTEXT_DIM, num_heads=8, num_head_channels=-1,
    use_linear_in_transformer=False,
)

DIFFUSERS_TINY_SD15 = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128, 128), layers_per_block=2,
    cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    flip_sin_to_cos=True, freq_shift=0, use_linear_projection=False,
)

# The trainer tests' base UNet: SD1.5's block types, context width and head count, two levels of
# 32/64 channels (4 transformer blocks: input 1, middle, output 2 and 3); fast enough for CPU
# training loops. The parity tests use the full 4-level twin above.
DIFFUSERS_TINY_TRAIN = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    flip_sin_to_cos=True, freq_shift=0, use_linear_projection=False,
)

TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)

# SD1.5's training schedule (scheduler_config.json of the original release).
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", clip_sample=False, steps_offset=1)


def randomise_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter drawn from N(0, std) in named order (the ComfyUI tiny UNet's recipe)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_diffusers_unet(seed: int | None = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**DIFFUSERS_TINY_SD15)
    return randomise_(unet, seed) if seed is not None else unet


def comfy_to_diffusers_state_dict(comfy_sd: dict, comfy_config: dict = COMFY_TINY_SD15) -> dict:
    """Rename a ComfyUI UNet state dict to diffusers names with ComfyUI's own key map."""
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(comfy_config)  # diffusers key -> comfy key
    out = {}
    for diffusers_key, comfy_key in mapping.items():
        if comfy_key in comfy_sd:
            out[diffusers_key] = comfy_sd[comfy_key]
    missing = sorted(set(comfy_sd) - set(mapping.values()))
    if missing:
        raise KeyError(f"ComfyUI keys with no diffusers name: {missing[:6]}")
    return out


def tiny_text_encoder_and_tokenizer(seed: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz ":
        if c != " ":
            vocab[c] = len(vocab)
            vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CONTEXT_DIM, intermediate_size=256, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=CONTEXT_DIM,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    encoder = CLIPTextModel(config)
    return encoder, tokenizer


def _content_key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    import diffusers
    import transformers

    h.update(f"{diffusers.__version__} {transformers.__version__} {torch.__version__}".encode())
    return h.hexdigest()[:12]


def build_tiny_base_model(folder: Path) -> Path:
    """Write the tiny random SD1.5-shaped diffusers folder (see module doc)."""
    from diffusers import AutoencoderKL, DDPMScheduler

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # diffusers' own initialisation (seeded), not the parity tests' N(0, 0.05) everywhere: norm
    # scales of 0.05 starve the residual stream, and the trainer tests need a UNet FRC can steer.
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    UNet2DConditionModel(**DIFFUSERS_TINY_TRAIN).save_pretrained(tmp / "unet")
    torch.manual_seed(3)
    vae = AutoencoderKL(**TINY_VAE)
    vae.save_pretrained(tmp / "vae")
    encoder, tokenizer = tiny_text_encoder_and_tokenizer()
    encoder.save_pretrained(tmp / "text_encoder")
    tokenizer.save_pretrained(tmp / "tokenizer")
    DDPMScheduler(**SD15_SCHEDULER).save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "note": "random weights for tests only, not a model",
    }, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def tiny_base_model_dir() -> Path:
    folder = CACHE_DIR / f"tiny-random-sd15-diffusers-{_content_key()}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several pytest processes may share the cache
        if not (folder / "model_index.json").exists():
            for stale in CACHE_DIR.glob("tiny-random-sd15-diffusers-*"):
                shutil.rmtree(stale, ignore_errors=True)
            build_tiny_base_model(folder)
    return folder


# ---- configs for ComfyUI's tiny random SD1.5 checkpoint (support/random_checkpoints.py) ------------
def diffusers_unet_config_from_comfy(c: dict) -> dict:
    """diffusers UNet2DConditionModel config of a ComfyUI SD1.x-style UNet config (one
    num_res_blocks for all levels, fixed head count, conv projections)."""
    levels = len(c["channel_mult"])
    per = c["num_res_blocks"][0] if isinstance(c["num_res_blocks"], list) else c["num_res_blocks"]
    depth_in = c["transformer_depth"]
    depth_out = c["transformer_depth_output"]
    down = ["CrossAttnDownBlock2D" if depth_in[lvl * per] else "DownBlock2D" for lvl in range(levels)]
    up = ["CrossAttnUpBlock2D" if depth_out[i * (per + 1)] else "UpBlock2D" for i in range(levels)]
    return dict(sample_size=64, in_channels=c["in_channels"], out_channels=c["out_channels"],
                block_out_channels=[c["model_channels"] * m for m in c["channel_mult"]], layers_per_block=per,
                cross_attention_dim=c["context_dim"], attention_head_dim=c["num_heads"],
                down_block_types=down, up_block_types=up, flip_sin_to_cos=True, freq_shift=0,
                use_linear_projection=c["use_linear_in_transformer"])


# SD1.5's real VAE and CLIP-L text encoder layouts (the tiny checkpoint holds those at full size).
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=1)


def sd15_checkpoint_tiny_config_dir(comfyui_dir) -> Path:
    """A diffusers-format folder of configs only (plus ComfyUI's own SD1 tokenizer files) for
    loading the tiny random SD1.5 single-file checkpoint with `from_single_file(config=...)`."""
    from support.random_checkpoints import SD15_CHECKPOINT_TINY

    unet_config = diffusers_unet_config_from_comfy(SD15_CHECKPOINT_TINY)
    key = hashlib.sha256(json.dumps(unet_config, sort_keys=True).encode() + _content_key().encode()).hexdigest()[:12]
    folder = CACHE_DIR / f"sd15-checkpoint-tiny-configs-{key}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "model_index.json").exists():
            return folder
        from diffusers import DDPMScheduler

        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            (tmp / sub).mkdir(parents=True)
        (tmp / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet_config}))
        (tmp / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **{
            k: list(v) if isinstance(v, tuple) else v for k, v in SD15_VAE.items()}}))
        (tmp / "text_encoder" / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **CLIP_L_TEXT}))
        tok_src = Path(comfyui_dir) / "comfy" / "sd1_tokenizer"
        for f in tok_src.iterdir():
            shutil.copy(f, tmp / "tokenizer" / f.name)
        DDPMScheduler(**SD15_SCHEDULER).save_config(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
            "requires_safety_checker": False}))
        tmp.rename(folder)
    return folder


def tiny_facex_overrides() -> dict:
    """FaceX adapter sizes for CPU tests (the real ones are set by the family: token width 768)."""
    return dict(token_dim=64, adapter_hidden=128, identity_tokens=2, reference_tokens=4)


def env_for_subprocess() -> dict:
    """Environment for `accelerate launch` / torchrun children: tests/ importable, 1 thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["ACCELERATE_DISABLE_RICH"] = "1"
    env["ACCELERATE_USE_CPU"] = "true"
    return env


def torchrun(nproc: int, module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` in nproc CPU processes (gloo). `accelerate
    launch --cpu` only starts several CPU processes through mpirun, so tests use torchrun, which is
    what `accelerate launch --multi_gpu` runs too; accelerate picks the processes up from its env."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(port), "-m", module, *args]


# ---- tiny face data ---------------------------------------------------------------------------------
def astronaut_frames(n: int, size: int = 160, seed: int = 0):
    """n RGB uint8 frames of the public-domain astronaut photo (skimage.data.astronaut), each a
    slightly shifted and scaled crop around her face: a short "video" of one real face moving."""
    import numpy as np
    from skimage import data, transform

    img = data.astronaut()  # 512x512, face around (y 60-230, x 150-300)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        half = 120 * (1.0 + 0.08 * np.sin(i * 0.9))
        cy, cx = 150 + rng.uniform(-12, 12), 225 + rng.uniform(-12, 12)
        y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
        crop = img[y0:int(cy + half), x0:int(cx + half)]
        frames.append((transform.resize(crop, (size, size), anti_aliasing=True) * 255).astype(np.uint8))
    return frames


def write_video(path, frames, fps: int = 10) -> Path:
    """Frames (H, W, 3 uint8) -> an H.264 (or MPEG-4) .mp4 written with PyAV."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
        except Exception:  # an FFmpeg build without x264
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


FAKE_BACKENDS = {"detect": "fake_detect", "identity": "fake_identity", "parse": "fake_parse", "motion": "fake_motion",
                 "gaze": "fake_gaze"}


def fake_decompose(images: torch.Tensor, crop_size: int = 64, backends: dict | None = None):
    """A stand-in for FORD's decompose (tests of the cache plumbing only): the centre square of a
    (1, H, W, 3) frame is "the face" unless the frame is dark (max < 0.1: "no face found").
    Fields are simple functions of the pixels, so different frames give different values."""
    import torch.nn.functional as F

    from facex_core.regions import REGIONS
    from facex_core.representation import FaceRepresentation

    if images.max() < 0.1:
        raise ValueError("no face found in image 1 of the batch (0-based index 0)")
    b, h, w, _ = images.shape
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = images[:, y0:y0 + s, x0:x0 + s].permute(0, 3, 1, 2)
    crop = F.interpolate(crop, size=(crop_size, crop_size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    pooled = F.adaptive_avg_pool2d(crop, 4).flatten(1)  # (b, 48)
    identity = F.normalize(torch.cat([pooled, pooled[:, :16] ** 2], 1), dim=1)  # 64-d
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, crop_size), torch.linspace(-1, 1, crop_size), indexing="ij")
    face = ((yy / 0.8) ** 2 + (xx / 0.6) ** 2 <= 1).float()
    masks = torch.zeros(b, len(REGIONS), crop_size, crop_size)
    masks[:, REGIONS.index("skin")] = face
    masks[:, REGIONS.index("hair")] = ((yy < -0.5).float() * (1 - face))
    masks[:, REGIONS.index("background")] = 1 - masks.sum(1).clamp(0, 1)
    rep = FaceRepresentation(
        crop_size=crop_size,
        affine=torch.tensor([[[crop_size / s, 0.0, -x0 * crop_size / s], [0.0, crop_size / s, -y0 * crop_size / s]]]).expand(b, 2, 3).clone(),
        image_hw=torch.tensor([[h, w]] * b),
        landmarks5=torch.tensor([[[22.0, 26.0], [42.0, 26.0], [32.0, 36.0], [24.0, 46.0], [40.0, 46.0]]]).expand(b, 5, 2) * crop_size / 64,
        identity=identity,
        region_masks=masks,
        pose=(pooled[:, :3] - 0.5),
        expression=pooled[:, 3:19],
        gaze=(pooled[:, 19:21] - 0.5),
        backends=dict(backends or FAKE_BACKENDS),
    )
    return rep, crop


# ---- subprocess entry points (run under `accelerate launch -m support.tiny_training ...`) ----------
def _prepare_fake(argv) -> int:
    """`facex prepare` with fake_decompose, reporting which clips this rank decomposed."""
    import argparse
    import sys

    from accelerate import PartialState

    import facex_core.train.prepare as prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("--frames-per-clip", type=int, default=2)
    ap.add_argument("--clips-per-shard", type=int, default=1)
    args = ap.parse_args(argv)
    from facex_core.train import use_cpu

    state = PartialState(cpu=use_cpu())
    seen = []
    original = prepare.process_clip

    def recording(clip, fn, settings):
        seen.append(clip.id)
        return original(clip, fn, settings)

    prepare.process_clip = recording
    settings = prepare.PrepareSettings(frames_per_clip=args.frames_per_clip, clips_per_shard=args.clips_per_shard, mask_size=32, crop_size=64)
    report = prepare.run_prepare(args.input, args.out, settings, decompose_fn=fake_decompose, rank=state.process_index,
                                 world_size=state.num_processes, show_progress=False)
    state.wait_for_everyone()
    wrote = False
    if state.is_main_process:
        prepare.finalize(args.input, args.out, settings)
        wrote = True
    print(json.dumps({"rank": state.process_index, "done": report["done"], "clips_decomposed": seen, "wrote_manifest": wrote}))
    sys.stdout.flush()
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    import sys

    commands = {"prepare-fake": _prepare_fake}
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
