"""Random-weight Stable Diffusion files with the real file layout, for tests and benchmarks.

No SD weights can be downloaded here, so tests build their own from ComfyUI's own classes: the
tensor names and shapes are exactly what ComfyUI's loaders read, only the values are random. Every
file name contains `random` and nothing built here is ever presented as a result.

Kinds (MODEL_KINDS):
- `sd15_tiny`: a checkpoint ComfyUI detects as SD1.5 (model_channels 320, context_dim 768, conv
  proj_in, no adm, no temporal attention) whose UNet has only 2 levels of 320 channels (one
  resblock per level, a transformer block after every resblock and in the middle: 7 transformer
  blocks, input/middle/output all present for FRC), plus the real-layout CLIP-L text
  encoder and the real-layout SD VAE. A 256x256 2-step prompt runs in a few seconds on CPU.
- `sd15_full`: the real SD1.5 layout (860M-parameter UNet), 2 GiB fp16. Benchmarks only.
- `controlnet_sd15_tiny`: a ControlNet matching the tiny UNet, in the `control_model.` layout that
  ComfyUI's ControlNetLoader reads.
- `lora_sd15_tiny`: a kohya-style LoRA (`lora_unet_<diffusers name>`, `lora_te_text_model_...`)
  for the tiny UNet's attention/feed-forward layers and the text encoder's attention/MLP layers.

Files are built in a subprocess that has the ComfyUI tree on sys.path and `--cpu` parsed (ComfyUI
reads its command line when imported), checked by loading them back through ComfyUI's own loaders,
and cached under tests/.cache/random_models/ keyed by this file's content, the kind and the
ComfyUI version. `install(kind, models_dir)` links a cached file into a ComfyUI models folder under
its stable name (e.g. checkpoints/facex_random_sd15_tiny.safetensors).

In-process helpers for layout tests (need `import comfy`, see `import_comfy()`):
`unet_config(family, size)` gives ComfyUI UNetModel kwargs for family "sd15" | "sd2" | "sdxl" at size
"full" (the real layout) or "tiny" (the same levels and transformer depths, widths and context
dims divided by 10/8 so it builds in a moment); `build_unet(family, size, device, seed)` returns a
ComfyUI UNetModel with random weights (device="meta" gives the full layouts for free);
`unet_inputs(family, size, ...)` gives matching (x, timesteps, context, y) tensors.

Run as a script (what the cache uses):
    python tests/support/random_checkpoints.py --comfyui DIR build KIND OUT.safetensors
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import zlib

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(TESTS_DIR, ".cache", "random_models")

# ---------------------------------------------------------------------------------------------
# UNet layouts, as data. Values follow comfy/model_detection.py and comfy/supported_models.py.

_COMMON = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

FULL_LAYOUTS: dict[str, dict] = {
    "sd15": {
        **_COMMON, "adm_in_channels": None, "model_channels": 320, "context_dim": 768,
        "use_linear_in_transformer": False, "num_heads": 8, "num_head_channels": -1,
        "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    },
    "sd2": {
        **_COMMON, "adm_in_channels": None, "model_channels": 320, "context_dim": 1024,
        "use_linear_in_transformer": True, "num_heads": -1, "num_head_channels": 64,
        "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    },
    "sdxl": {
        **_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 320,
        "context_dim": 2048, "use_linear_in_transformer": True, "num_heads": -1,
        "num_head_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    },
}

# Tiny layouts for in-process layout tests: same levels and transformer depths as the real ones,
# widths / 10, head widths / 8, context and adm dims / 8 (values only matter for shapes).
_TINY_SCALE = {"model_channels": 32, "num_head_channels_div": 8, "dim_div": 8}

# The tiny checkpoint ComfyUI must still detect as SD1.5: detection reads model_channels,
# context_dim, use_linear_in_transformer, adm and temporal attention, not the number of levels.
SD15_CHECKPOINT_TINY = {
    **FULL_LAYOUTS["sd15"],
    "channel_mult": [1, 1], "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
}


def unet_config(family: str, size: str = "tiny") -> dict:
    """ComfyUI UNetModel kwargs for an SD1.x ("sd15"), SD2.x ("sd2") or SDXL ("sdxl") layout."""
    if family not in FULL_LAYOUTS:
        raise ValueError(f"unknown UNet family {family!r}; known: {sorted(FULL_LAYOUTS)}")
    config = copy.deepcopy(FULL_LAYOUTS[family])
    if size == "full":
        return config
    if size == "checkpoint_tiny":
        if family != "sd15":
            raise ValueError("only the sd15 family has a tiny checkpoint layout")
        return copy.deepcopy(SD15_CHECKPOINT_TINY)
    if size != "tiny":
        raise ValueError(f"unknown size {size!r}; use 'full', 'tiny' or 'checkpoint_tiny'")
    config["model_channels"] = _TINY_SCALE["model_channels"]
    if config["num_head_channels"] > 0:
        config["num_head_channels"] //= _TINY_SCALE["num_head_channels_div"]
    config["context_dim"] //= _TINY_SCALE["dim_div"]
    if config["adm_in_channels"]:
        config["adm_in_channels"] //= _TINY_SCALE["dim_div"]
    return config


# ---------------------------------------------------------------------------------------------
# Random values by tensor name and shape: deterministic per (seed, name), independent of order,
# scaled so activations stay O(1) through deep stacks (no NaN/inf in fp16 files).

def random_tensor(name: str, shape, seed: int, dtype, zero_conv_gain: float = 0.1):
    import torch

    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).expand(*shape).clone()
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if len(shape) == 1:
        if name.endswith("weight"):  # norm scales
            return (1.0 + 0.05 * torch.randn(shape, generator=gen)).to(dtype)
        return (0.02 * torch.randn(shape, generator=gen)).to(dtype)  # biases
    if len(shape) == 0:
        return torch.zeros(shape, dtype=dtype)
    fan_in = math.prod(shape[1:])
    gain = 1.0
    if "zero_convs" in name or "middle_block_out" in name:
        gain = zero_conv_gain  # ControlNet outputs: small, but non-zero so the net has an effect
    return (torch.randn(shape, generator=gen) * (gain / math.sqrt(fan_in))).to(dtype)


def random_state_dict(module, seed: int, dtype, prefix: str = "", skip=()) -> dict:
    """Random values for every tensor of `module` (which may live on the meta device)."""
    out = {}
    for name, t in module.state_dict().items():
        if any(name.startswith(s) or name == s for s in skip):
            continue
        out[prefix + name] = random_tensor(name, tuple(t.shape), seed, dtype)
    return out


# ---------------------------------------------------------------------------------------------
# In-process use (layout tests). The caller's process must be able to import `comfy`.

def import_comfy(comfyui_dir: str | None = None):
    """Make ComfyUI's `comfy` package importable in this process and return it.

    Appends (never prepends) the tree to sys.path so ComfyUI's top-level `nodes`, `utils`, `app`
    cannot shadow the project's own packages. ComfyUI does not parse pytest's command line here
    (comfy.options default); `--cpu` is set on its parsed defaults before model_management loads
    (with a CUDA build of torch and no GPU it would otherwise fail at import).
    """
    if "comfy.ops" in sys.modules:
        return sys.modules["comfy"]
    if comfyui_dir is None:
        from support.comfy_server import comfyui_dir as _find

        comfyui_dir = _find()
    if comfyui_dir not in sys.path:
        sys.path.append(comfyui_dir)
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
    import comfy.ops  # noqa: F401
    import comfy.ldm.modules.diffusionmodules.openaimodel  # noqa: F401

    return sys.modules["comfy"]


def build_unet(family: str = "sd15", size: str = "tiny", device: str = "cpu", seed: int = 0,
               dtype=None):
    """A ComfyUI UNetModel with the given layout. On "cpu" it gets random weights (see
    random_tensor); on "meta" it is a free shape-only model (walk it, count blocks, read dims)."""
    import torch

    import_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    dtype = dtype or torch.float32
    config = unet_config(family, size)
    with torch.device("meta"):
        model = UNetModel(**config, dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init)
    if device == "meta":
        return model
    sd = random_state_dict(model, seed, dtype)
    model = model.to_empty(device=device)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def unet_inputs(family: str = "sd15", size: str = "tiny", batch: int = 2, latent_hw: int = 8,
                tokens: int = 77, seed: int = 0):
    """(x, timesteps, context, y) matching unet_config(family, size); y is None without adm."""
    import torch

    config = unet_config(family, size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], latent_hw, latent_hw, generator=gen)
    timesteps = torch.full((batch,), 500.0)
    context = torch.randn(batch, tokens, config["context_dim"], generator=gen)
    y = None
    if config.get("adm_in_channels"):
        y = torch.randn(batch, config["adm_in_channels"], generator=gen)
    return x, timesteps, context, y


# ---------------------------------------------------------------------------------------------
# Builders (run inside the subprocess, with ComfyUI importable and --cpu parsed).

SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                   "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                   "attn_resolutions": [], "dropout": 0.0}


def _meta_unet(config):
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        return UNetModel(**config, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)


def _checkpoint_state_dict(unet_layout: dict, seed: int) -> dict:
    """model.diffusion_model.* + cond_stage_model.transformer.* (CLIP-L) + first_stage_model.* (VAE),
    the key layout of an original SD1.x .safetensors checkpoint."""
    import torch
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    dtype = torch.float16
    sd = random_state_dict(_meta_unet(unet_layout), seed, dtype, prefix="model.diffusion_model.")
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    with torch.device("meta"):
        text_model = comfy.clip_model.CLIPTextModel(clip_config, dtype, "meta", comfy.ops.disable_weight_init)
        vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    # SD1.x checkpoints carry no text projection (ComfyUI supplies it and does not warn).
    sd.update(random_state_dict(text_model, seed + 1, dtype, prefix="cond_stage_model.transformer.",
                                skip=("text_projection",)))
    sd.update(random_state_dict(vae, seed + 2, dtype, prefix="first_stage_model."))
    return sd


def _controlnet_state_dict(unet_layout: dict, seed: int) -> dict:
    import torch
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in unet_layout.items() if k not in ("out_channels", "transformer_depth_output")}
    with torch.device("meta"):
        net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, dtype=torch.float16, device="meta",
                                         operations=comfy.ops.disable_weight_init)
    return random_state_dict(net, seed, torch.float16, prefix="control_model.")


# Layers the random LoRA patches: names inside a UNet transformer block and a CLIP layer.
LORA_UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                     "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.2")
LORA_CLIP_TARGETS = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.k_proj": "self_attn_k_proj",
                     "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
                     "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2"}
LORA_RANK = 4


def _lora_state_dict(unet_layout: dict, seed: int) -> dict:
    """kohya-format LoRA: lora_unet_<diffusers name with _>.{lora_down,lora_up}.weight + .alpha."""
    import torch
    import comfy.utils

    dtype = torch.float16
    unet_sd = _meta_unet(unet_layout).state_dict()
    ldm_to_diffusers = {ldm: diff for diff, ldm in comfy.utils.unet_to_diffusers(unet_layout).items()}
    pairs = []  # (lora key, out_features, in_features)
    for ldm_key, t in unet_sd.items():
        if not ldm_key.endswith(".weight") or t.ndim != 2:
            continue
        module = ldm_key[: -len(".weight")]
        if ".transformer_blocks." not in module or not module.endswith(LORA_UNET_TARGETS):
            continue
        diffusers_key = ldm_to_diffusers.get(ldm_key)
        if diffusers_key is None:
            raise RuntimeError(f"no diffusers name for {ldm_key}: comfy.utils.unet_to_diffusers changed?")
        pairs.append(("lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_"), t.shape[0], t.shape[1]))
    clip_width, clip_ff, clip_layers = 768, 3072, 12
    for layer in range(clip_layers):
        for module, lora_name in LORA_CLIP_TARGETS.items():
            out_f, in_f = {"mlp.fc1": (clip_ff, clip_width), "mlp.fc2": (clip_width, clip_ff)}.get(
                module, (clip_width, clip_width))
            pairs.append((f"lora_te_text_model_encoder_layers_{layer}_{lora_name}", out_f, in_f))
    sd = {}
    for key, out_f, in_f in pairs:
        # up @ down has the scale of the weight it patches (alpha == rank: multiplier 1).
        sd[f"{key}.lora_down.weight"] = random_tensor(key + ".down", (LORA_RANK, in_f), seed, dtype)
        sd[f"{key}.lora_up.weight"] = random_tensor(key + ".up", (out_f, LORA_RANK), seed, dtype)
        sd[f"{key}.alpha"] = torch.tensor(float(LORA_RANK), dtype=dtype)
    return sd


# kind -> (ComfyUI models sub-folder, stable file name, builder, layout, seed)
MODEL_KINDS: dict[str, tuple[str, str, str, str, int]] = {
    "sd15_tiny": ("checkpoints", "facex_random_sd15_tiny.safetensors", "checkpoint", "checkpoint_tiny", 1),
    "sd15_full": ("checkpoints", "facex_random_sd15_full.safetensors", "checkpoint", "full", 2),
    "controlnet_sd15_tiny": ("controlnet", "facex_random_controlnet_sd15_tiny.safetensors", "controlnet",
                             "checkpoint_tiny", 3),
    "lora_sd15_tiny": ("loras", "facex_random_lora_sd15_tiny.safetensors", "lora", "checkpoint_tiny", 4),
}
_BUILDERS = {"checkpoint": _checkpoint_state_dict, "controlnet": _controlnet_state_dict, "lora": _lora_state_dict}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)  # ComfyUI logs the keys SD1.x never has at DEBUG
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _problems(messages: list[str]) -> list[str]:
    words = ("missing", "unexpected", "left over", "leftover", "not loaded", "could not detect")
    return [m for m in messages if any(w in m.lower() for w in words)]


def _verify(kind: str, path: str, checkpoint: str | None = None) -> dict:
    """Load the file through ComfyUI's own loaders; any missing/unexpected key is an error."""
    import comfy.controlnet
    import comfy.sd
    import comfy.utils

    records = _Records()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    folder, _, builder, layout, _ = MODEL_KINDS[kind]
    report: dict = {"kind": kind}
    try:
        if builder == "checkpoint":
            model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path)
            detected = type(model.model.model_config).__name__
            if detected != "SD15":
                raise RuntimeError(f"ComfyUI detected {detected}, expected SD15")
            report["detected"] = detected
            report["unet_config"] = {k: v for k, v in model.model.model_config.unet_config.items()
                                     if isinstance(v, (int, list, str, type(None)))}
        elif builder == "controlnet":
            net = comfy.controlnet.load_controlnet(path)
            if net is None:
                raise RuntimeError("ComfyUI could not read the random ControlNet")
            report["detected"] = type(net).__name__
        else:
            if checkpoint is None:
                raise RuntimeError("verifying a LoRA needs the checkpoint it belongs to (--checkpoint)")
            lora = comfy.utils.load_torch_file(path, safe_load=True)
            model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False)
            new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
            report["patched_unet_weights"] = len(new_model.patches)
            report["patched_clip_weights"] = len(new_clip.patcher.patches)
            if not new_model.patches or not new_clip.patcher.patches:
                raise RuntimeError("LoraLoader applied no patch from the random LoRA")
    finally:
        logging.getLogger().removeHandler(records)
    bad = _problems(records.messages)
    if bad:
        raise RuntimeError(f"ComfyUI loaded {os.path.basename(path)} with problems: {bad[:5]}")
    return report


def build(kind: str, out_path: str, checkpoint: str | None = None) -> dict:
    """Write the random file for `kind` to out_path (atomically) and verify it. Subprocess side."""
    from safetensors.torch import save_file

    folder, name, builder, layout, seed = MODEL_KINDS[kind]
    t0 = time.perf_counter()
    sd = _BUILDERS[builder](unet_config("sd15", layout), seed)
    metadata = {"facex_random": "true", "kind": kind,
                "note": "random weights with the real layout, for tests only; not a model"}
    tmp = out_path + ".part"
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=metadata)
    os.replace(tmp, out_path)
    built = time.perf_counter() - t0
    n_params = sum(v.numel() for v in sd.values())
    del sd
    t1 = time.perf_counter()
    report = _verify(kind, out_path, checkpoint)
    report.update({"build_seconds": round(built, 2), "verify_seconds": round(time.perf_counter() - t1, 2),
                   "bytes": os.path.getsize(out_path), "parameters": n_params})
    return report


# ---------------------------------------------------------------------------------------------
# Cache (pytest side): no ComfyUI import in the test process.

def _content_key(kind: str, comfyui_dir: str) -> str:
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(kind.encode())
    version_file = os.path.join(comfyui_dir, "comfyui_version.py")
    if os.path.exists(version_file):
        with open(version_file, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test sessions may share the cache
        yield


def cached_path(kind: str, comfyui_dir: str | None = None, python: str | None = None,
                timeout: float = 1800) -> str:
    """Path of the cached random file for `kind`, building it (in a subprocess) if needed."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown random model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    if comfyui_dir is None:
        from support.comfy_server import comfyui_dir as _find

        comfyui_dir = _find()
    folder, name, builder, _, _ = MODEL_KINDS[kind]
    stem = name[: -len(".safetensors")]
    path = os.path.join(CACHE_DIR, f"{stem}-{_content_key(kind, comfyui_dir)}.safetensors")
    with _locked(path):
        if os.path.exists(path):
            return path
        _remove_stale(stem, keep=path)
        cmd = [python or sys.executable, os.path.abspath(__file__), "--comfyui", comfyui_dir, "build", kind, path]
        if builder == "lora":  # a LoRA is verified by applying it to the tiny checkpoint
            cmd += ["--checkpoint", cached_path("sd15_tiny", comfyui_dir, python, timeout)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=comfyui_dir)
        if proc.returncode != 0 or not os.path.exists(path):
            raise RuntimeError(f"building the random {kind} file failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        with open(path + ".json", "w") as f:
            f.write(proc.stdout.strip().splitlines()[-1] + "\n")
    return path


def _remove_stale(stem: str, keep: str) -> None:
    """Drop files of the same kind built by an older version of this module (servers that use them
    hold hard links, so a running session keeps its copy)."""
    for name in os.listdir(CACHE_DIR):
        path = os.path.join(CACHE_DIR, name)
        if name.startswith(stem + "-") and not path.startswith(keep) and not name.endswith(".lock"):
            os.remove(path)


def build_report(kind: str) -> dict | None:
    """The builder's JSON report (build/verify seconds, bytes, parameters) for a cached file."""
    from support.comfy_server import comfyui_dir as _find

    folder, name, _, _, _ = MODEL_KINDS[kind]
    path = os.path.join(CACHE_DIR, f"{name[:-len('.safetensors')]}-{_content_key(kind, _find())}.safetensors.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)  # a hard link survives the cache being cleaned while a server runs
    except OSError:
        os.symlink(src, dst)


def install(kind: str, models_dir: str, comfyui_dir: str | None = None) -> str:
    """Link the cached random file into <models_dir>/<folder>/<stable name>; returns the name
    ComfyUI lists (what a prompt passes as ckpt_name / lora_name / control_net_name)."""
    folder, name, _, _, _ = MODEL_KINDS[kind]
    _link(cached_path(kind, comfyui_dir), os.path.join(models_dir, folder, name))
    return name


# ---------------------------------------------------------------------------------------------

def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", required=True, help="ComfyUI source tree")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build one random file and print its JSON report")
    b.add_argument("kind", choices=sorted(MODEL_KINDS))
    b.add_argument("out")
    b.add_argument("--checkpoint", help="for a LoRA: the checkpoint to verify it against")
    args = parser.parse_args(argv)

    # ComfyUI parses the process command line at import; give it --cpu and nothing else.
    sys.path.insert(0, args.comfyui)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = build(args.kind, os.path.abspath(args.out), args.checkpoint)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
