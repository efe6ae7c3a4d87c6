"""FaceRepresentation: one typed container for everything FORD produces.

Every tensor is batch-first (one entry per face). Geometry lives in the aligned crop's pixel
frame; ``affine`` maps source-image pixels to crop pixels, so paste-back inverts it.
Which backend made each part is recorded in ``backends`` (part name -> backend name), so a FaceX
checkpoint can refuse a representation made by extractors it was not trained with.

The field table below is data: validation, saving, loading, batching and the assemblers all
read it instead of naming fields one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .regions import REGIONS

FORMAT = "facex.representation"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FieldSpec:
    """Shape rule for one tensor field: ``dims`` after the batch dim, None = any size."""

    dims: tuple[Optional[int], ...]
    dtype: torch.dtype
    part: str  # the FORD part this field belongs to (key of `backends`)
    doc: str


R = len(REGIONS)

# name -> spec. Sizes fixed by the vocabulary are given; backend-dependent sizes are None.
FIELDS: dict[str, FieldSpec] = {
    "affine": FieldSpec((2, 3), torch.float32, "detect", "source image px -> crop px (2x3 similarity)"),
    "image_hw": FieldSpec((2,), torch.int64, "detect", "height, width of the source image"),
    "landmarks5": FieldSpec((5, 2), torch.float32, "detect", "eyes, nose tip, mouth corners (crop px)"),
    "landmarks": FieldSpec((None, 2), torch.float32, "landmarks", "dense landmarks (crop px)"),
    "identity": FieldSpec((None,), torch.float32, "identity", "L2-normalised identity embedding"),
    "identity_map": FieldSpec((None, None, None), torch.float32, "identity", "feature map before the embedding (C, h, w)"),
    "region_masks": FieldSpec((R, None, None), torch.float32, "parse", "soft masks in REGIONS order (crop px)"),
    "region_features": FieldSpec((R, None), torch.float32, "region_features", "mask-pooled CLIP features per region"),
    "clip_tokens": FieldSpec((None, None), torch.float32, "region_features", "CLIP patch tokens (N, D)"),
    "pose": FieldSpec((3,), torch.float32, "motion", "yaw, pitch, roll in radians"),
    "expression": FieldSpec((None,), torch.float32, "motion", "expression coefficients"),
    "texture": FieldSpec((None,), torch.float32, "texture", "albedo / texture coefficients"),
    "lighting": FieldSpec((None,), torch.float32, "lighting", "spherical-harmonic lighting (27 = 9 x RGB)"),
    "gaze": FieldSpec((2,), torch.float32, "gaze", "pitch, yaw in radians"),
}

# The components the assemblers pick from a source or a target face (paper Fig. 4).
# Each component is a group of fields that always travel together.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "identity": ("identity", "identity_map"),
    "pose": ("pose",),
    "expression": ("expression",),
    "gaze": ("gaze",),
    "texture": ("texture",),
    "lighting": ("lighting",),
    "landmarks": ("landmarks", "landmarks5"),
}


class RepresentationError(ValueError):
    """A representation that is malformed or does not fit what it is used with."""


@dataclass
class FaceRepresentation:
    crop_size: int
    affine: torch.Tensor
    image_hw: torch.Tensor
    landmarks5: torch.Tensor
    landmarks: Optional[torch.Tensor] = None
    identity: Optional[torch.Tensor] = None
    identity_map: Optional[torch.Tensor] = None
    region_masks: Optional[torch.Tensor] = None
    region_features: Optional[torch.Tensor] = None
    clip_tokens: Optional[torch.Tensor] = None
    pose: Optional[torch.Tensor] = None
    expression: Optional[torch.Tensor] = None
    texture: Optional[torch.Tensor] = None
    lighting: Optional[torch.Tensor] = None
    gaze: Optional[torch.Tensor] = None
    backends: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # ---- basic properties -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.affine.shape[0])

    def present(self) -> list[str]:
        """Names of the tensor fields that are set."""
        return [name for name in FIELDS if getattr(self, name) is not None]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.present()}

    def require(self, *names: str, purpose: str = "this operation") -> None:
        """Raise a clear error naming the FORD node that fills each missing field."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            hints = {FIELDS[n].part for n in missing}
            raise RepresentationError(
                f"{purpose} needs {', '.join(missing)} in the face representation, which it lacks; "
                f"run the FORD extractor(s) for: {', '.join(sorted(hints))} (or FaceXDecompose) first"
            )

    # ---- validation -------------------------------------------------------------------
    def validate(self, names=None) -> None:
        """Check dtypes, shapes and finiteness of `names` (all fields by default) and that every
        set field has the same batch size."""
        b = None
        for name, spec in FIELDS.items():
            t = getattr(self, name)
            if t is None:
                continue
            if names is not None and name not in names:
                if b is None:
                    b = t.shape[0]
                elif t.shape[0] != b:
                    raise RepresentationError(f"field {name!r} has batch {t.shape[0]}, other fields have {b}")
                continue
            if not isinstance(t, torch.Tensor):
                raise RepresentationError(f"field {name!r} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != spec.dtype:
                raise RepresentationError(f"field {name!r} has dtype {t.dtype}, expected {spec.dtype}")
            if t.dim() != len(spec.dims) + 1:
                raise RepresentationError(
                    f"field {name!r} has shape {tuple(t.shape)}, expected (batch, {', '.join(str(d or '*') for d in spec.dims)})"
                )
            for got, want in zip(t.shape[1:], spec.dims):
                if want is not None and got != want:
                    raise RepresentationError(
                        f"field {name!r} has shape {tuple(t.shape)}, expected (batch, {', '.join(str(d or '*') for d in spec.dims)})"
                    )
            if not torch.isfinite(t.float()).all():
                raise RepresentationError(f"field {name!r} contains NaN or infinite values")
            if b is None:
                b = t.shape[0]
            elif t.shape[0] != b:
                raise RepresentationError(f"field {name!r} has batch {t.shape[0]}, other fields have {b}")
        if self.region_masks is not None and tuple(self.region_masks.shape[-2:]) != (self.crop_size, self.crop_size):
            raise RepresentationError(
                f"region_masks are {tuple(self.region_masks.shape[-2:])}, the crop is {self.crop_size}x{self.crop_size}"
            )
        if not isinstance(self.crop_size, int) or self.crop_size < 16:
            raise RepresentationError(f"crop_size must be an int >= 16, got {self.crop_size!r}")

    # ---- batching and editing ---------------------------------------------------------
    def replace(self, **changes) -> "FaceRepresentation":
        """A copy with some fields changed; only the changed fields are re-checked (the rest were
        checked when this one was made, and full-size masks are costly to scan again)."""
        new = _unchecked_replace(self, changes)
        new.validate(names=set(changes))
        return new

    def index(self, idx) -> "FaceRepresentation":
        """Select batch entries (int, slice, list or tensor of indices); keeps the batch dim."""
        if isinstance(idx, int):
            idx = [idx]
        return self.replace(**{k: v[idx] for k, v in self.tensors().items()})

    def expand(self, batch: int) -> "FaceRepresentation":
        """Broadcast a batch of one to `batch` entries."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise RepresentationError(f"cannot broadcast a representation of batch {self.batch_size} to {batch}")
        return self.replace(**{k: v.expand(batch, *v.shape[1:]).clone() for k, v in self.tensors().items()})

    @staticmethod
    def concat(reps: list["FaceRepresentation"]) -> "FaceRepresentation":
        if not reps:
            raise RepresentationError("nothing to concatenate")
        first = reps[0]
        for r in reps[1:]:
            if r.crop_size != first.crop_size or set(r.present()) != set(first.present()):
                raise RepresentationError("representations to concatenate differ in crop size or in the parts they hold")
        merged = {k: torch.cat([getattr(r, k) for r in reps]) for k in first.present()}
        return first.replace(**merged)

    def to(self, device=None, dtype=None) -> "FaceRepresentation":
        """Move tensors; `dtype` applies to floating fields only (the stored format stays fp32)."""
        out = {}
        for k, v in self.tensors().items():
            out[k] = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
        return self.replace(**out) if dtype is None else _unchecked_replace(self, out)

    # ---- persistence ------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "crop_size": str(self.crop_size),
            "regions": json.dumps(list(REGIONS)),
            "backends": json.dumps(self.backends, sort_keys=True),
        }

    def save(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        tmp = path.with_suffix(path.suffix + ".partial")
        save_file(tensors, str(tmp), metadata=self.metadata())
        tmp.replace(path)  # never leave a half-written face behind

    @classmethod
    def load(cls, path) -> "FaceRepresentation":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise RepresentationError(f"face representation file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for truncated / foreign files
            raise RepresentationError(f"{path.name} is not a readable safetensors file ({e}); re-save the face") from e
        if meta.get("format") != FORMAT:
            raise RepresentationError(f"{path.name} is not a FaceX face representation (format={meta.get('format')!r})")
        if int(meta.get("format_version", "0")) > FORMAT_VERSION:
            raise RepresentationError(
                f"{path.name} uses representation format {meta['format_version']}, this FaceX reads up to {FORMAT_VERSION}; update FaceX"
            )
        regions = json.loads(meta.get("regions", "[]"))
        if tuple(regions) != REGIONS:
            raise RepresentationError(f"{path.name} uses regions {regions}, this FaceX uses {list(REGIONS)}")
        unknown = set(tensors) - set(FIELDS)
        if unknown:
            raise RepresentationError(f"{path.name} has unknown fields {sorted(unknown)}")
        return cls(crop_size=int(meta["crop_size"]), backends=json.loads(meta.get("backends", "{}")), **tensors)


def _unchecked_replace(rep: FaceRepresentation, changes: dict) -> FaceRepresentation:
    """Copy with changed tensors, skipping dtype validation (for half-precision working copies)."""
    new = object.__new__(FaceRepresentation)
    new.__dict__.update(rep.__dict__)
    new.__dict__.update(changes)
    return new
