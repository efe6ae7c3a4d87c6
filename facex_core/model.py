"""The learnable FaceX model: adapters that turn an assembled FaceRepresentation (and an optional
inpainting reference image) into f_SD tokens, plus the FRC bank those tokens steer the UNet with.

    representation ──► RepresentationAdapter (one linear map per representation) ─┐
    CLIP patch tokens + region masks ──► FPNAdapter (multi-scale, mask-pooled) ────┼──► SDAdapter ──► f_SD (B, T, D)
    reference image ──► ReferenceEncoder (small conv net) ────────────────────────┘

Token groups are a table (TOKEN_GROUPS): each group names the representation fields it reads and
whether a missing field is an error or is replaced by the group's slice of the learned null tokens
(the same null the model sees for unconditional guidance, 10% of training samples).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .frc.layer import FRCBank
from .frc.layout import FAMILIES, BlockSpec, family_layout
from .regions import REGIONS
from .representation import FaceRepresentation, RepresentationError


@dataclass
class FaceXConfig:
    family: str
    layout: list[BlockSpec]
    token_dim: int
    # FORD dimensions and backends the adapters are built for (0 = not used by this model).
    identity_dim: int = 512
    identity_map_channels: int = 512
    expression_dim: int = 64
    texture_dim: int = 80
    lighting_dim: int = 27
    clip_dim: int = 1024
    regions: tuple[str, ...] = REGIONS
    backends: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BACKENDS))
    identity_tokens: int = 4
    identity_map_tokens: int = 16  # the identity feature map pooled to a 4x4 grid
    reference_tokens: int = 16  # the reference image encoded to a 4x4 grid
    fpn_grid: int = 16  # CLIP patch grid (ViT-L/14 at 224 px)
    adapter_hidden: int = 1024

    def to_json(self) -> str:
        data = asdict(self)
        data["layout"] = [b.to_json() for b in self.layout]
        data["regions"] = list(self.regions)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FaceXConfig":
        data = json.loads(text)
        data["layout"] = [BlockSpec.from_json(b) for b in data["layout"]]
        data["regions"] = tuple(data["regions"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FaceX config fields {sorted(unknown)}: the checkpoint is newer than this FaceX")
        return cls(**data)

    @classmethod
    def for_family(cls, family: str, **overrides) -> "FaceXConfig":
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        fam = FAMILIES[family]
        overrides.setdefault("layout", family_layout(family))
        overrides.setdefault("token_dim", fam.context_dim)
        return cls(family=family, **overrides)


# The production FORD backends the paper's model reads (ArcFace, BiSeNet, Deep3DFaceRecon, L2CS,
# CLIP ViT-L/14). Backend names are "<backend>[:<model>]..."; a checkpoint that records a bare
# backend accepts any of its models, one that records "<backend>:<model>" (what training on a
# cache records) accepts only that model. A representation from other backends is refused.
DEFAULT_BACKENDS: dict[str, str] = {
    "identity": "insightface_arcface",
    "parse": "bisenet_celebamask19",
    "motion": "deep3dfacerecon_bfm",
    "texture": "deep3dfacerecon_bfm",
    "lighting": "deep3dfacerecon_bfm",
    "gaze": "l2cs_gaze360",
    "region_features": "clip_region_pool",
}

# The offline extractors (mediapipe, dlib), for checkpoints trained on them.
EMBEDDED_BACKENDS: dict[str, str] = {
    "identity": "dlib_resnet",
    "parse": "mediapipe_mesh",
    "motion": "mesh_pnp",
    "gaze": "iris",
    "region_features": "clip_region_pool",
}


def backend_matches(expected: str, actual: str) -> bool:
    return actual == expected or actual.startswith(expected + ":")


@dataclass(frozen=True)
class TokenGroup:
    name: str
    fields: tuple[str, ...]
    required: bool  # missing -> error; otherwise the group's null tokens stand in


TOKEN_GROUPS: tuple[TokenGroup, ...] = (
    TokenGroup("identity", ("identity",), True),
    TokenGroup("identity_map", ("identity_map",), False),
    TokenGroup("motion", ("pose", "expression", "gaze"), False),
    TokenGroup("appearance", ("texture", "lighting"), False),
    TokenGroup("regions", ("region_masks", "region_features"), False),
    TokenGroup("reference", (), False),  # fed by the reference image, not the representation
)


class RepresentationAdapter(nn.Module):
    """Paper Sec. 3.4: a linear map per representation into the token width."""

    def __init__(self, cfg: FaceXConfig):
        super().__init__()
        d = cfg.token_dim
        self.cfg = cfg
        self.identity = nn.Linear(cfg.identity_dim, cfg.identity_tokens * d)
        self.identity_map = nn.Linear(cfg.identity_map_channels, d) if cfg.identity_map_channels else None
        self.motion = nn.Linear(3 + cfg.expression_dim + 2, d)
        self.appearance = nn.Linear(cfg.texture_dim + cfg.lighting_dim, d) if cfg.texture_dim + cfg.lighting_dim else None

    def tokens(self, group: str, rep: FaceRepresentation) -> torch.Tensor:
        b, d = rep.batch_size, self.cfg.token_dim
        if group == "identity":
            return self.identity(rep.identity).view(b, self.cfg.identity_tokens, d)
        if group == "identity_map":
            side = int(self.cfg.identity_map_tokens ** 0.5)
            pooled = F.adaptive_avg_pool2d(rep.identity_map, side).flatten(2).transpose(1, 2)
            return self.identity_map(pooled)
        if group == "motion":
            return self.motion(torch.cat([rep.pose, rep.expression, rep.gaze], dim=1)).unsqueeze(1)
        if group == "appearance":
            return self.appearance(torch.cat([rep.texture, rep.lighting], dim=1)).unsqueeze(1)
        raise KeyError(group)


class FPNAdapter(nn.Module):
    """Region tokens from CLIP patch tokens: a small top-down feature pyramid over the patch grid,
    mask-pooled per region, plus the FORD mask-pooled region features and a learned region embedding."""

    def __init__(self, cfg: FaceXConfig):
        super().__init__()
        d = cfg.token_dim
        self.grid = cfg.fpn_grid
        self.proj = nn.Linear(cfg.clip_dim, d)
        self.lateral = nn.ModuleList([nn.Conv2d(d, d, 1) for _ in range(3)])
        self.region_feature = nn.Linear(cfg.clip_dim, d)
        self.region_embedding = nn.Parameter(torch.randn(len(cfg.regions), d) * 0.02)

    def forward(self, clip_tokens: torch.Tensor, region_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        b, n, _ = clip_tokens.shape
        g = int(round(n ** 0.5))
        if g * g != n:
            raise RepresentationError(f"clip_tokens has {n} patch tokens, not a square grid")
        x = self.proj(clip_tokens).transpose(1, 2).reshape(b, -1, g, g)
        # Three pyramid levels, fused top-down (coarse context added to fine detail).
        levels = [x, F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)]
        fused = self.lateral[2](levels[2])
        for i in (1, 0):
            fused = self.lateral[i](levels[i]) + F.interpolate(fused, size=levels[i].shape[-2:], mode="nearest")
        weights = F.adaptive_avg_pool2d(masks, g)  # (b, R, g, g)
        area = weights.flatten(2).sum(-1, keepdim=True).clamp_min(1e-6)
        pooled = torch.einsum("brhw,bdhw->brd", weights, fused) / area
        return pooled + self.region_feature(region_features) + self.region_embedding


class ReferenceEncoder(nn.Module):
    """The inpainting reference image (region-assembled) -> a 4x4 grid of tokens."""

    def __init__(self, cfg: FaceXConfig):
        super().__init__()
        d = cfg.token_dim
        chans = (3, 32, 64, 128, 256)
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.side = int(cfg.reference_tokens ** 0.5)
        self.proj = nn.Linear(chans[-1], d)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image * 2 - 1, size=(128, 128), mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d(self.convs(x), self.side)
        return self.proj(x.flatten(2).transpose(1, 2))


class SDAdapter(nn.Module):
    """Mixes the token groups into f_SD: type embedding, then a residual MLP per token."""

    def __init__(self, cfg: FaceXConfig, n_groups: int):
        super().__init__()
        d = cfg.token_dim
        self.group_embedding = nn.Parameter(torch.zeros(n_groups, d))
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.adapter_hidden), nn.GELU(), nn.Linear(cfg.adapter_hidden, d))
        self.out_norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        x = tokens + self.group_embedding[group_ids]
        return self.out_norm(x + self.mlp(self.norm(x)))


class FaceXModel(nn.Module):
    def __init__(self, cfg: FaceXConfig):
        super().__init__()
        self.cfg = cfg
        self.representation_adapter = RepresentationAdapter(cfg)
        self.fpn_adapter = FPNAdapter(cfg) if cfg.clip_dim else None
        self.reference_encoder = ReferenceEncoder(cfg)
        self.groups = [g for g in TOKEN_GROUPS if self.group_size(g.name) > 0]
        self.sd_adapter = SDAdapter(cfg, len(self.groups))
        self.null_tokens = nn.Parameter(torch.zeros(self.num_tokens, cfg.token_dim))
        self.frc = FRCBank(cfg.layout, cfg.token_dim)

    # ---- token bookkeeping --------------------------------------------------------------
    def group_size(self, name: str) -> int:
        c = self.cfg
        sizes = {
            "identity": c.identity_tokens,
            "identity_map": c.identity_map_tokens if c.identity_map_channels else 0,
            "motion": 1,
            "appearance": 1 if c.texture_dim + c.lighting_dim else 0,
            "regions": len(c.regions) if c.clip_dim else 0,
            "reference": c.reference_tokens,
        }
        return sizes[name]

    @property
    def num_tokens(self) -> int:
        return sum(self.group_size(g.name) for g in self.groups)

    # ---- checks -------------------------------------------------------------------------
    def expected_dims(self) -> dict[str, tuple[int, int]]:
        """field -> (axis, size) the adapters are built for; size 0 = field not read."""
        c = self.cfg
        return {
            "identity": (1, c.identity_dim), "identity_map": (1, c.identity_map_channels), "expression": (1, c.expression_dim),
            "texture": (1, c.texture_dim), "lighting": (1, c.lighting_dim),
            "region_features": (-1, c.clip_dim), "clip_tokens": (-1, c.clip_dim),
        }

    def check_representation(self, rep: FaceRepresentation) -> None:
        """Refuse a representation this model was not trained on, naming what differs."""
        from .representation import FIELDS

        for name, (axis, want) in self.expected_dims().items():
            t = getattr(rep, name)
            if t is None or want == 0:
                continue
            got = t.shape[axis]
            if got != want:
                part = FIELDS[name].part
                raise RepresentationError(
                    f"representation field {name!r} is {got}-d (made by backend {rep.backends.get(part, 'unknown')!r}) "
                    f"but this FaceX checkpoint expects {want}-d from backend {self.cfg.backends.get(part, 'unknown')!r}; "
                    f"decompose the faces with the backends the checkpoint was trained with"
                )
        for part, want in self.cfg.backends.items():
            got = rep.backends.get(part)
            if got is not None and not backend_matches(want, got):
                raise RepresentationError(
                    f"the representation's {part} comes from backend {got!r}, this FaceX checkpoint was trained with {want!r}; "
                    f"decompose the faces with {want!r} or use a checkpoint trained on {got!r}"
                )
        for g in self.groups:
            if g.required and any(getattr(rep, f) is None for f in g.fields):
                rep.require(*g.fields, purpose=f"FaceX ({g.name} tokens)")

    # ---- f_SD ---------------------------------------------------------------------------
    def encode(self, rep: FaceRepresentation, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        """f_SD tokens (B, T, D) for an assembled representation and optional reference (B,3,H,W in [0,1])."""
        self.check_representation(rep)
        b = rep.batch_size
        dtype = self.null_tokens.dtype
        rep = rep.to(device=self.null_tokens.device, dtype=dtype)
        if reference is not None:
            reference = reference.to(self.null_tokens.device, dtype)
            if reference.shape[0] not in (1, b):
                raise RepresentationError(f"reference image batch {reference.shape[0]} does not match the representation batch {b}")
            reference = reference.expand(b, *reference.shape[1:])
        chunks, start = [], 0
        for g in self.groups:
            size = self.group_size(g.name)
            null = self.null_tokens[start:start + size].unsqueeze(0).expand(b, -1, -1)
            if g.name == "reference":
                tokens = self.reference_encoder(reference) if reference is not None else null
            elif any(getattr(rep, f) is None for f in g.fields) or (g.name == "regions" and rep.clip_tokens is None):
                tokens = null
            elif g.name == "regions":
                tokens = self.fpn_adapter(rep.clip_tokens, rep.region_features, rep.region_masks)
            else:
                tokens = self.representation_adapter.tokens(g.name, rep)
            chunks.append(tokens)
            start += size
        return self.sd_adapter(torch.cat(chunks, dim=1), self.group_ids())

    def null_encoding(self) -> torch.Tensor:
        """f_SD of the null representation (1, T, D): what unconditional guidance and the 10% of
        condition-dropped training samples see."""
        return self.sd_adapter(self.null_tokens.unsqueeze(0), self.group_ids())

    def group_ids(self) -> torch.Tensor:
        ids = [torch.full((self.group_size(g.name),), i, dtype=torch.long) for i, g in enumerate(self.groups)]
        return torch.cat(ids).to(self.null_tokens.device)

    def adapter_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("frc.")]
