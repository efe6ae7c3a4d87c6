"""Synthetic FaceRepresentations with the production or embedded backends' dimensions, for tests
that exercise FaceX's model and FRC code without running FORD."""

from __future__ import annotations

import torch

from facex_core.model import FaceXConfig
from facex_core.regions import REGIONS
from facex_core.representation import FaceRepresentation


def synthetic_representation(cfg: FaceXConfig, batch: int = 1, crop_size: int = 64, seed: int = 0) -> FaceRepresentation:
    """A valid representation carrying every field the config's adapters read."""
    g = torch.Generator().manual_seed(seed)
    r = len(REGIONS)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    identity = torch.nn.functional.normalize(rand(batch, cfg.identity_dim), dim=1)
    masks = torch.rand(batch, r, crop_size, crop_size, generator=g)
    masks = masks / masks.sum(1, keepdim=True)
    fields = dict(
        crop_size=crop_size,
        affine=torch.eye(2, 3).expand(batch, 2, 3).clone(),
        image_hw=torch.tensor([[crop_size, crop_size]] * batch),
        landmarks5=torch.rand(batch, 5, 2, generator=g) * crop_size,
        identity=identity,
        region_masks=masks,
        pose=rand(batch, 3) * 0.3,
        expression=rand(batch, cfg.expression_dim),
        gaze=rand(batch, 2) * 0.2,
        backends={k: v for k, v in cfg.backends.items()},
    )
    if cfg.identity_map_channels:
        fields["identity_map"] = rand(batch, cfg.identity_map_channels, 7, 7)
    if cfg.texture_dim:
        fields["texture"] = rand(batch, cfg.texture_dim)
    if cfg.lighting_dim:
        fields["lighting"] = rand(batch, cfg.lighting_dim)
    if cfg.clip_dim:
        fields["clip_tokens"] = rand(batch, cfg.fpn_grid ** 2, cfg.clip_dim)
        fields["region_features"] = rand(batch, r, cfg.clip_dim)
    return FaceRepresentation(**fields)
