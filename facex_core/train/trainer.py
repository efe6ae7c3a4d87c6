"""`facex train`: the FaceX adapters and FRC bank on a frozen Stable Diffusion 1.5, with
HuggingFace accelerate (one GPU, several, several machines; DeepSpeed / FSDP through accelerate's
own config) and diffusers.

    facex train --config run.yaml [--set key=value ...] [--resume latest]
    accelerate launch [--num_processes N] [--config_file fsdp.yaml] -m facex_core.cli train --config run.yaml
    torchrun --nproc_per_node N -m facex_core.cli train --config run.yaml     # N CPU processes (gloo)

One step, per sample: the target frame -> VAE latent; noise and timestep -> noisy latent; the
assembled (source, target) representation and region-assembled reference -> f_SD tokens (the null
f_SD for `condition_drop_prob` of the samples); the frozen UNet with the FRC hooks
(frc/diffusers_hooks.py, the same layers ComfyUI runs) predicts epsilon or v (as the scheduler
config says); loss = MSE, plus optionally FAIR (FaceChain-FACT): the change FRC makes to the
prediction outside the edited region, against a second UNet pass without FRC.

Only rank 0 writes logs, the config copies and the exported checkpoint; accelerate's save_state
writes the weights and optimizer once and one RNG-state file per process (its own format).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..frc.diffusers_hooks import DiffusersFRC, attach_frc, frc_conditioning, mix_null_tokens
from ..frc.layout import FAMILY_BY_CONTEXT_DIM, describe_families, layout_from_diffusers
from ..model import FaceXConfig, FaceXModel
from . import TrainError, use_cpu
from .config import TrainConfig, dump_config, load_config
from .data import PairDataset, TrainCache, batch_representation, check_backends

log = logging.getLogger("facex.train")

CHECKPOINTS = "checkpoints"
STEP_FILE = "facex_step.json"
FACEX_CONFIG_FILE = "facex_config.json"
TRAIN_CONFIG_FILE = "train_config.yaml"
CSV_LOG = "train_log.csv"

# FORD parts the FaceX adapters read: a trained checkpoint records (and later insists on) these.
ADAPTER_PARTS = ("identity", "parse", "motion", "texture", "lighting", "gaze", "region_features")


# ---- the frozen base model -----------------------------------------------------------------------
@dataclass
class BaseModel:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object  # DDPMScheduler (training noise schedule + prediction type)


def load_base_model(path: str, config_dir: str = "") -> BaseModel:
    """A diffusers-format SD1.x folder, or a single-file checkpoint with a local config folder.

    Nothing is downloaded: a single .safetensors/.ckpt has no configs or tokenizer inside, so it
    needs `base_model_config`, a diffusers-format folder of the same family (its weights unused)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = Path(path)
    if not path:
        raise TrainError("base_model is not set: give a diffusers-format SD1.5 folder (or a single-file checkpoint + base_model_config)")
    if p.is_dir():
        missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (p / s).is_dir()]
        if missing:
            raise TrainError(f"{p} is not a diffusers-format Stable Diffusion folder: missing sub-folders {missing}")
        kw = dict(local_files_only=True)
        return BaseModel(
            unet=UNet2DConditionModel.from_pretrained(p, subfolder="unet", **kw),
            vae=AutoencoderKL.from_pretrained(p, subfolder="vae", **kw),
            text_encoder=CLIPTextModel.from_pretrained(p, subfolder="text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(p, subfolder="tokenizer", **kw),
            scheduler=DDPMScheduler.from_pretrained(p, subfolder="scheduler", **kw),
        )
    if p.is_file():
        if not config_dir or not Path(config_dir).is_dir():
            raise TrainError(
                f"{p.name} is a single-file checkpoint, which holds no configs or tokenizer; set base_model_config to a "
                f"local diffusers-format folder of the same family (configs + tokenizer; its weights are not used). "
                f"Nothing is downloaded."
            )
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_single_file(str(p), config=str(config_dir), local_files_only=True,
                                                            safety_checker=None, requires_safety_checker=False)
        except Exception as e:
            raise TrainError(f"diffusers could not read {p.name} as an SD1.x checkpoint with the configs in {config_dir}: {e}") from e
        return BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer,
                         DDPMScheduler.from_config(pipe.scheduler.config))
    raise TrainError(f"base model {p} not found")


def encode_prompt(base: BaseModel, prompt: str, device) -> torch.Tensor:
    tok = base.tokenizer
    max_len = min(int(getattr(tok, "model_max_length", 77)), 77)
    ids = tok(prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return base.text_encoder(ids.to(device))[0]


# ---- the FaceX model for this base + cache ---------------------------------------------------------
def facex_config_for(unet, cache: TrainCache, cfg: TrainConfig) -> FaceXConfig:
    context_dim, layout = layout_from_diffusers(unet)
    family = FAMILY_BY_CONTEXT_DIM.get(context_dim)
    if family is None:
        raise TrainError(f"the base UNet's cross-attention width {context_dim} matches no supported family ({describe_families()})")
    dims = cache.field_dims()
    if "identity" not in dims:
        raise TrainError(f"the training cache {cache.folder} has no identity embeddings; FaceX needs FORD's identity part")

    def size(name, axis=0):
        return int(dims[name][axis]) if name in dims else 0

    overrides = dict(
        identity_dim=size("identity"),
        identity_map_channels=size("identity_map"),
        expression_dim=size("expression"),
        texture_dim=size("texture"),
        lighting_dim=size("lighting"),
        clip_dim=size("clip_tokens", -1) if "clip_tokens" in dims and "region_features" in dims else 0,
        backends={p: b for p, b in cache.backends.items() if p in ADAPTER_PARTS},
    )
    if overrides["clip_dim"]:
        overrides["fpn_grid"] = int(round(math.sqrt(dims["clip_tokens"][0])))
    overrides.update(cfg.facex)
    try:
        return FaceXConfig.for_family(family, layout=layout, **overrides)
    except TypeError as e:
        raise TrainError(f"facex settings {sorted(cfg.facex)}: {e}") from e


def build_facex(base: BaseModel, cache: TrainCache, cfg: TrainConfig) -> FaceXModel:
    if cfg.init_checkpoint:
        from ..checkpoint import load_checkpoint

        model = load_checkpoint(cfg.init_checkpoint).train()
        _, layout = layout_from_diffusers(base.unet)
        if model.cfg.layout != layout:
            raise TrainError(f"init_checkpoint {cfg.init_checkpoint} was made for another UNet layout than the base model's")
        check_backends(cache.backends, model.cfg.backends, cache.folder)
        return model
    return FaceXModel(facex_config_for(base.unet, cache, cfg))


def drop_groups(model: FaceXModel, tokens: torch.Tensor, null: torch.Tensor, group_drop: Optional[torch.Tensor]) -> torch.Tensor:
    """FaceChain-FACT condition drop: token group g of sample b -> that group's null tokens where
    group_drop[b, g]. Exact: the SD adapter works token by token, so mixing its outputs equals
    mixing its inputs. Required groups (identity) are never dropped alone."""
    if group_drop is None or not bool(group_drop.any()):
        return tokens
    b, t, _ = tokens.shape
    keep = torch.ones(b, t, dtype=torch.bool, device=tokens.device)
    start = 0
    for gi, g in enumerate(model.groups):
        size = model.group_size(g.name)
        if not g.required:
            keep[:, start:start + size] = ~group_drop[:, gi:gi + 1].to(tokens.device)
        start += size
    return torch.where(keep[..., None], tokens, null.to(tokens.dtype).expand_as(tokens))


class _Frozen:
    """Everything the step needs that is not trained (kept out of the nn.Module tree so DDP, FSDP
    and DeepSpeed wrap, sync and save only the FaceX weights)."""

    def __init__(self, base: BaseModel, holder: DiffusersFRC, text: torch.Tensor, dtype: torch.dtype, crop_size: int, backends: dict):
        self.unet, self.vae, self.scheduler, self.holder = base.unet, base.vae, base.scheduler, holder
        self.text, self.dtype, self.crop_size, self.backends = text, dtype, crop_size, backends
        self.prediction_type = base.scheduler.config.prediction_type
        self.scaling_factor = base.vae.config.scaling_factor
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise TrainError(f"scheduler prediction_type {self.prediction_type!r}: FaceX trains epsilon or v_prediction models")


def condition_tokens(facex: FaceXModel, rep, reference=None, drop=None, group_drop=None) -> torch.Tensor:
    """f_SD for a batch: the assembled representation's tokens, with the null f_SD for dropped
    samples (CFG) and dropped token groups (FaceChain-FACT condition drop)."""
    tokens = facex.encode(rep, reference)
    if drop is None and group_drop is None:
        return tokens
    null = facex.null_encoding()
    tokens = drop_groups(facex, tokens, null, group_drop)
    return mix_null_tokens(tokens, null, drop)


def predict_noise(unet, holder: DiffusersFRC, tokens: Optional[torch.Tensor], noisy: torch.Tensor, t: torch.Tensor,
                  context: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction (epsilon or v) with FRC steered by `tokens` (None: without FRC)."""
    with frc_conditioning(holder, tokens):
        return unet(noisy, t, encoder_hidden_states=context.expand(noisy.shape[0], -1, -1)).sample


class FaceXTrainingModule(nn.Module):
    """forward(batch) -> {"loss", "mse", "fair"}; its only parameters are the FaceX model's."""

    def __init__(self, facex: FaceXModel, frozen: _Frozen, fair_weight: float = 0.0):
        super().__init__()
        self.facex = facex
        self.__dict__["frozen"] = frozen
        self.fair_weight = float(fair_weight)

    def forward(self, batch: dict) -> dict:
        fz: _Frozen = self.frozen
        device = batch["noise"].device
        with torch.no_grad():
            dist = fz.vae.encode(batch["pixels"].to(fz.dtype)).latent_dist
            latents = (dist.mean + dist.std * batch["vae_noise"].to(dist.mean.dtype)) * fz.scaling_factor
        noise = batch["noise"].to(latents.dtype)
        t = batch["timestep"].long().to(device)
        noisy = fz.scheduler.add_noise(latents, noise, t).to(fz.dtype)
        target = noise if fz.prediction_type == "epsilon" else fz.scheduler.get_velocity(latents, noise, t)

        rep = batch_representation(batch, fz.crop_size, fz.backends)
        tokens = condition_tokens(self.facex, rep, batch.get("reference"), batch["drop"], batch.get("group_drop"))
        context = fz.text.to(device, fz.dtype)
        pred = predict_noise(fz.unet, fz.holder, tokens, noisy, t, context)
        mse = (pred.float() - target.float()).square().mean(dim=(1, 2, 3)).mean()
        out = {"mse": mse.detach(), "fair": torch.zeros((), device=device)}
        loss = mse
        if self.fair_weight > 0:
            with torch.no_grad():
                base_pred = predict_noise(fz.unet, fz.holder, None, noisy, t, context)  # the un-patched UNet
            outside = (1.0 - batch["edit_mask"].float()).unsqueeze(1)
            change = (pred.float() - base_pred.float()).square() * outside
            fair = (change.sum(dim=(1, 2, 3)) / (outside.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-6)).mean()
            loss = loss + self.fair_weight * fair
            out["fair"] = fair.detach()
        out["loss"] = loss
        return out


# ---- checkpoints -------------------------------------------------------------------------------------
def checkpoint_dirs(output_dir) -> list[Path]:
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and (d / STEP_FILE).is_file()]
    return sorted(found, key=lambda d: json.loads((d / STEP_FILE).read_text())["step"])


def resolve_resume(output_dir, resume: str) -> Optional[Path]:
    if not resume:
        return None
    if resume == "latest":
        dirs = checkpoint_dirs(output_dir)
        return dirs[-1] if dirs else None  # nothing saved yet: a fresh start
    p = Path(resume)
    if not (p / STEP_FILE).is_file():
        raise TrainError(f"--resume {resume}: not a FaceX training checkpoint folder (no {STEP_FILE})")
    return p


def write_checkpoint_extras(path: Path, step: int, facex_cfg: FaceXConfig, cfg: TrainConfig) -> None:
    (path / FACEX_CONFIG_FILE).write_text(facex_cfg.to_json())
    dump_config(cfg, path / TRAIN_CONFIG_FILE)
    (path / STEP_FILE).write_text(json.dumps({"step": step}))  # written last: marks the folder complete


# ---- logging -----------------------------------------------------------------------------------------
class CsvLog:
    FIELDS = ("step", "loss", "mse", "fair", "lr", "samples_per_second")

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if path.exists():  # a resumed run keeps the rows up to its checkpoint
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow({k: row.get(k, "") for k in self.FIELDS})


def read_csv_log(path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


# ---- the run -----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: str = "", cache: Optional[TrainCache] = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from tqdm import tqdm

    cfg.validate()
    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision or None,
        log_with="tensorboard" if cfg.log_with == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
        # unused groups (a field the cache lacks, no reference image) leave some adapters idle
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    micro = cfg.micro_batch(accelerator.num_processes)
    set_seed(cfg.seed)

    resume_dir = resolve_resume(out_dir, resume)
    if resume_dir is None and checkpoint_dirs(out_dir):
        raise TrainError(
            f"{out_dir} already holds checkpoints of an earlier run; continue it with --resume latest, or choose a new "
            f"output_dir"
        )
    start_step = json.loads((resume_dir / STEP_FILE).read_text())["step"] if resume_dir else 0
    if start_step >= cfg.max_steps:
        raise TrainError(f"the checkpoint {resume_dir} is at step {start_step}, max_steps is {cfg.max_steps}: nothing to do")

    cache = cache or TrainCache(cfg.cache)
    check_backends(cache.backends, cfg.backend_names(), cache.folder)
    base = load_base_model(cfg.base_model, cfg.base_model_config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    device = accelerator.device
    for m in (base.unet, base.vae, base.text_encoder):
        m.requires_grad_(False).eval().to(device)
    text = encode_prompt(base, cfg.prompt, device)
    if text.shape[-1] != base.unet.config.cross_attention_dim:
        raise TrainError(f"the text encoder gives {text.shape[-1]}-d tokens, the UNet expects {base.unet.config.cross_attention_dim}")
    for m in (base.unet, base.vae):
        m.to(dtype=weight_dtype)
    facex = build_facex(base, cache, cfg).to(device)
    holder = attach_frc(facex.frc, base.unet)
    if cfg.gradient_checkpointing:
        holder.enable_gradient_checkpointing()
    frozen = _Frozen(base, holder, text, weight_dtype, cache.crop_size, cache.backends)
    module = FaceXTrainingModule(facex, frozen, cfg.fair_weight)

    latent_scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
    latent_shape = (base.unet.config.in_channels, cfg.resolution // latent_scale, cfg.resolution // latent_scale)
    dataset = PairDataset(
        cache, task=cfg.task, resolution=cfg.resolution, latent_shape=latent_shape,
        num_train_timesteps=base.scheduler.config.num_train_timesteps, condition_drop_prob=cfg.condition_drop_prob,
        group_drop_prob=cfg.group_drop_prob, n_groups=len(facex.groups), use_reference=cfg.use_reference,
        seed=cfg.seed, start=start_step * cfg.train_batch_size, length=(cfg.max_steps - start_step) * cfg.train_batch_size,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=micro, shuffle=False, drop_last=True,
                                         num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    optimizer = torch.optim.AdamW(facex.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    if resume_dir:
        accelerator.load_state(str(resume_dir))
        log.info("resumed from %s at step %d", resume_dir, start_step)

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / FACEX_CONFIG_FILE).write_text(facex.cfg.to_json())
        dump_config(cfg, out_dir / TRAIN_CONFIG_FILE)
    csv_log = CsvLog(out_dir / CSV_LOG, start_step) if main and cfg.log_with == "csv" else None
    if cfg.log_with == "tensorboard":
        accelerator.init_trackers("facex", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})

    step = start_step
    history: list[dict] = []
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="facex train", unit="step", disable=not main)
    t_last, samples_since = time.perf_counter(), 0
    sums = {"loss": 0.0, "mse": 0.0, "fair": 0.0}
    module.train()
    for batch in loader:
        with accelerator.accumulate(module):
            out = module(batch)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            lr = cfg.learning_rate * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.learning_rate
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        # mean over processes and accumulation micro-batches = mean over the global batch (one collective)
        values = accelerator.reduce(torch.stack([out[k].detach().float() for k in sums]), reduction="mean").tolist()
        for k, v in zip(sums, values):
            sums[k] += v / cfg.gradient_accumulation_steps
        samples_since += micro * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        row = {"step": step, **sums, "lr": lr}
        sums = {k: 0.0 for k in sums}
        history.append(row)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            row["samples_per_second"] = samples_since / max(now - t_last, 1e-9)
            t_last, samples_since = now, 0
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if csv_log:
                csv_log.write(row)
            if cfg.log_with == "tensorboard":
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            save_checkpoint_state(accelerator, out_dir, step, facex.cfg, cfg)
        if step >= cfg.max_steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    export_path = out_dir / cfg.export_name
    state = accelerator.get_state_dict(module)  # gathers FSDP / DeepSpeed shards
    if main:
        from .export import export_weights

        export_weights(state, facex.cfg, export_path, cfg)
    accelerator.end_training()
    holder.detach()
    return {"steps": step, "start_step": start_step, "history": history, "export": str(export_path),
            "processes": accelerator.num_processes, "micro_batch": micro, "main": main}


def save_checkpoint_state(accelerator, out_dir: Path, step: int, facex_cfg: FaceXConfig, cfg: TrainConfig) -> Path:
    path = out_dir / CHECKPOINTS / f"step-{step:07d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        write_checkpoint_extras(path, step, facex_cfg, cfg)
        if cfg.checkpoints_total_limit > 0:
            for old in checkpoint_dirs(out_dir)[:-cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


# ---- CLI ---------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON training config (defaults: the paper recipe, see --print-config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train_batch_size=16 --set facex.token_dim=768")
    parser.add_argument("--resume", default="", help="'latest' (in output_dir/checkpoints) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")


def run(args) -> int:
    import yaml

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        report = train(cfg, resume=args.resume)
    except TrainError as e:
        print(f"facex train: {e}", file=sys.stderr)
        return 2
    if report["main"]:
        last = report["history"][-1] if report["history"] else {}
        print(json.dumps({"steps": report["steps"], "export": report["export"], "loss": last.get("loss")}))
    return 0
