"""The training configuration: a dataclass whose defaults are the paper's recipe, loadable from
YAML or JSON and overridable with `key=value` pairs.

Paper recipe (FaceX, Sec. 4.1 as we read it): Stable Diffusion 1.5 frozen (UNet, VAE, text
encoder), only the FaceX adapters and the FRC bank trained, AdamW at a constant learning rate of
1e-5, batch 32, 10% of the samples with the null representation (for classifier-free guidance),
(source, target) frame pairs of one clip assembled as a head swap for the generalist model.
Values the paper does not give are marked "ours" below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..model import DEFAULT_BACKENDS, EMBEDDED_BACKENDS
from . import TrainError

# FORD backend sets a cache / model can be made with (names as FaceRepresentation.backends records them).
BACKEND_SETS: dict[str, dict[str, str]] = {
    "production": dict(DEFAULT_BACKENDS),
    "embedded": dict(EMBEDDED_BACKENDS),
}

TASKS_TRAINABLE = ("head_swap", "face_swap", "reenactment")  # generalist (head swap) + task fine-tuning
LOGGERS = ("csv", "tensorboard", "none")


@dataclass
class TrainConfig:
    # --- what to train on ---------------------------------------------------------------------
    base_model: str = ""  # a diffusers-format SD1.5 folder, or a single .safetensors/.ckpt (needs base_model_config)
    base_model_config: str = ""  # single-file only: a diffusers-format folder holding the configs + tokenizer (offline)
    cache: str = ""  # a `facex prepare` output folder
    ford_backends: Union[str, dict] = "production"  # preset name (production | embedded) or {part: backend}
    data_name: str = ""  # for the licence note of exported weights, e.g. "CelebV-HQ"
    data_licence: str = ""  # the training data's licence terms, e.g. "non-commercial research only"

    # --- what to learn --------------------------------------------------------------------------
    task: str = "head_swap"  # head_swap = the generalist recipe; reenactment / face_swap = task fine-tuning
    init_checkpoint: str = ""  # FaceX checkpoint to start from (task fine-tuning starts from the generalist)
    facex: dict = field(default_factory=dict)  # FaceXConfig overrides (token_dim, adapter_hidden, ...)
    use_reference: bool = True  # feed the region-assembled reference image (inpainting tokens)
    prompt: str = ""  # ours: the text condition of every sample (the paper trains without captions)

    # --- the recipe -----------------------------------------------------------------------------
    resolution: int = 512
    train_batch_size: int = 32  # global: over processes and gradient accumulation
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_warmup_steps: int = 0  # constant learning rate (after an optional warm-up, ours)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    max_steps: int = 100_000  # ours: the paper gives no step count
    condition_drop_prob: float = 0.1  # samples trained with the null representation (CFG)

    # --- FaceChain-FACT options (off in the paper recipe) -----------------------------------------
    fair_weight: float = 0.0  # FAIR: penalise the noise-prediction change outside the edited region
    group_drop_prob: float = 0.0  # condition drop: each optional token group -> its null tokens

    # --- engine ---------------------------------------------------------------------------------
    output_dir: str = "facex-run"
    mixed_precision: str = ""  # "" = accelerate's config / launcher flag; else no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    checkpoints_total_limit: int = 3  # 0 = keep all
    log_every: int = 10
    log_with: str = "tensorboard"  # tensorboard | csv | none
    seed: int = 0
    num_workers: int = 4
    export_name: str = "facex_trained.safetensors"

    # ------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        if self.task not in TASKS_TRAINABLE:
            raise TrainError(f"task {self.task!r} cannot be trained from video clips; use one of {', '.join(TASKS_TRAINABLE)}")
        if self.log_with not in LOGGERS:
            raise TrainError(f"log_with {self.log_with!r}: use one of {', '.join(LOGGERS)}")
        if self.mixed_precision not in ("", "no", "fp16", "bf16", "fp8"):
            raise TrainError(f"mixed_precision {self.mixed_precision!r}: use no, fp16, bf16 (or leave empty for accelerate's setting)")
        for name in ("condition_drop_prob", "group_drop_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise TrainError(f"{name} must be within [0, 1], got {v}")
        if self.resolution % 8:
            raise TrainError(f"resolution {self.resolution} must be a multiple of 8 (the VAE downsamples by 8)")
        if self.train_batch_size < 1 or self.gradient_accumulation_steps < 1 or self.max_steps < 1:
            raise TrainError("train_batch_size, gradient_accumulation_steps and max_steps must be >= 1")
        self.backend_names()  # raises for an unknown preset
        return self

    def backend_names(self) -> dict[str, str]:
        if isinstance(self.ford_backends, dict):
            return {str(k): str(v) for k, v in self.ford_backends.items()}
        if self.ford_backends not in BACKEND_SETS:
            raise TrainError(f"ford_backends {self.ford_backends!r}: use one of {', '.join(BACKEND_SETS)} or a {{part: backend}} mapping")
        return dict(BACKEND_SETS[self.ford_backends])

    def micro_batch(self, world_size: int) -> int:
        per = world_size * self.gradient_accumulation_steps
        if self.train_batch_size % per:
            raise TrainError(
                f"train_batch_size {self.train_batch_size} is not divisible by processes x gradient_accumulation_steps "
                f"= {world_size} x {self.gradient_accumulation_steps}; change one of them"
            )
        return self.train_batch_size // per

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A `key=value` string -> the field's type (JSON for dicts/lists/bools/numbers)."""
    if not isinstance(value, str):
        return value
    if isinstance(default, str) and not isinstance(default, bool):
        if name == "ford_backends" and value.strip().startswith("{"):
            return json.loads(value)
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise TrainError(f"config value {name}={value!r} is not valid for a {type(default).__name__}") from None


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Defaults <- YAML/JSON file <- `key=value` overrides; unknown keys are refused by name."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise TrainError(f"training config {p} not found")
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise TrainError(f"training config {p} must hold a mapping of settings, got {type(data).__name__}")
    defaults = TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides or []:
        if "=" not in item:
            raise TrainError(f"override {item!r} must be key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key.startswith("facex."):  # facex.token_dim=64
            sub = key.split(".", 1)[1]
            data.setdefault("facex", {})
            data["facex"] = {**data["facex"], sub: _coerce(sub, value, 0)}
            continue
        if key not in known:
            raise TrainError(f"unknown training setting {key!r}; known: {', '.join(sorted(known))}")
        data[key] = _coerce(key, value, getattr(defaults, key))
    unknown = set(data) - known
    if unknown:
        raise TrainError(f"unknown training settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return TrainConfig(**data).validate()


def dump_config(cfg: TrainConfig, path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
