"""Where the FRC layers go: the transformer blocks of a Stable Diffusion UNet.

A block is keyed the way ComfyUI's hooks see it: (section, block id, index inside the
SpatialTransformer), e.g. ("input", 1, 0), ("middle", 0, 0), ("output", 11, 0). A layout is the
ordered list of blocks with their width and head count. Layouts come from three places, all
tested to agree: the family table (for `facex init` without a UNet at hand), a UNet state dict
(walking its attn2 weights), and a live UNet module (ComfyUI's or diffusers').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True, order=True)
class BlockSpec:
    section: str  # "input" | "middle" | "output"
    block: int  # ComfyUI's input_blocks / output_blocks index (0 for middle)
    index: int  # transformer index inside that block's SpatialTransformer
    dim: int  # hidden width of the transformer block
    heads: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.section, self.block, self.index)

    @property
    def name(self) -> str:
        """Module-safe name used in state dicts: input_1_0."""
        return f"{self.section}_{self.block}_{self.index}"

    def to_json(self) -> list:
        return [self.section, self.block, self.index, self.dim, self.heads]

    @classmethod
    def from_json(cls, data) -> "BlockSpec":
        section, block, index, dim, heads = data
        return cls(str(section), int(block), int(index), int(dim), int(heads))


SECTION_ORDER = {"input": 0, "middle": 1, "output": 2}


def sort_layout(blocks: Iterable[BlockSpec]) -> list[BlockSpec]:
    return sorted(blocks, key=lambda b: (SECTION_ORDER[b.section], b.block, b.index))


@dataclass(frozen=True)
class UNetFamily:
    """The UNet shape of a base-model family, as in ComfyUI's supported_models."""

    name: str
    display: str
    context_dim: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]  # per level, input side
    transformer_depth_middle: int
    transformer_depth_output: tuple[int, ...]  # per output block
    num_heads: int  # fixed head count (SD1.x), or -1 when num_head_channels decides
    num_head_channels: int  # width per head (SD2.x, SDXL), or -1

    def heads_for(self, dim: int) -> int:
        return self.num_heads if self.num_heads > 0 else dim // self.num_head_channels


# Base-model families FaceX checkpoints are made for (tables from ComfyUI 0.3.75 supported_models
# and the original configs). The FRC token width equals the family's cross-attention context dim.
FAMILIES: dict[str, UNetFamily] = {
    "sd15": UNetFamily("sd15", "SD1.x", 768, 320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1,
                       (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1), 8, -1),
    "sd2": UNetFamily("sd2", "SD2.x", 1024, 320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1,
                      (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1), -1, 64),
    "sdxl": UNetFamily("sdxl", "SDXL", 2048, 320, (1, 2, 4), 2, (0, 2, 10), 10,
                       (10, 10, 10, 2, 2, 2, 0, 0, 0), -1, 64),
}

# The family is told apart by the cross-attention context width, the one number every
# checkpoint of a family shares (LoRA-merged or fine-tuned community models included).
FAMILY_BY_CONTEXT_DIM: dict[int, str] = {f.context_dim: f.name for f in FAMILIES.values()}

# ComfyUI model_config class names -> family (for messages and a second opinion).
FAMILY_BY_COMFY_CONFIG: dict[str, str] = {
    "SD15": "sd15", "SD15_instructpix2pix": "sd15",
    "SD20": "sd2", "SD21UnclipL": "sd2", "SD21UnclipH": "sd2",
    "SDXL": "sdxl", "SDXL_instructpix2pix": "sdxl", "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl", "KOALA_1B": "sdxl",
}


def family_layout(family: str, model_channels: Optional[int] = None) -> list[BlockSpec]:
    """The transformer blocks of a family's UNet, numbered as ComfyUI numbers them."""
    fam = FAMILIES[family]
    ch = model_channels or fam.model_channels
    blocks = []
    block_id = 0
    for level, mult in enumerate(fam.channel_mult):
        dim = ch * mult
        for _ in range(fam.num_res_blocks):
            block_id += 1
            for i in range(fam.transformer_depth[level]):
                blocks.append(BlockSpec("input", block_id, i, dim, fam.heads_for(dim)))
        if level != len(fam.channel_mult) - 1:
            block_id += 1  # downsample block
    mid = ch * fam.channel_mult[-1]
    for i in range(fam.transformer_depth_middle):
        blocks.append(BlockSpec("middle", 0, i, mid, fam.heads_for(mid)))
    out_id = 0
    for level, mult in reversed(list(enumerate(fam.channel_mult))):
        dim = ch * mult
        for _ in range(fam.num_res_blocks + 1):
            for i in range(fam.transformer_depth_output[out_id]):
                blocks.append(BlockSpec("output", out_id, i, dim, fam.heads_for(dim)))
            out_id += 1
    return blocks


# ComfyUI UNet module / state-dict names of a transformer block.
_COMFY_BLOCK = re.compile(
    r"(?:^|\.)(?:(input_blocks|output_blocks)\.(\d+)|middle_block)\.\d+\.transformer_blocks\.(\d+)(?:\.|$)"
)
_SECTION = {"input_blocks": "input", "output_blocks": "output", None: "middle"}


def comfy_block_key(name: str) -> Optional[tuple[str, int, int]]:
    m = _COMFY_BLOCK.search(name)
    if not m:
        return None
    section = _SECTION[m.group(1)]
    block = 0 if section == "middle" else int(m.group(2))
    return (section, block, int(m.group(3)))


def layout_from_state_dict(sd: dict, heads_rule: Optional[UNetFamily] = None) -> tuple[str, list[BlockSpec]]:
    """(family, layout) from a ComfyUI / original-SD UNet state dict (keys with attn2 weights)."""
    dims: dict[tuple[str, int, int], int] = {}
    context_dim = None
    for key, tensor in sd.items():
        if not key.endswith("attn2.to_k.weight"):
            continue
        bkey = comfy_block_key(key)
        if bkey is None:
            continue
        dims[bkey] = int(tensor.shape[0])
        context_dim = int(tensor.shape[1])
    if not dims:
        raise ValueError("no cross-attention (attn2) weights found: this is not a Stable Diffusion UNet state dict")
    family = FAMILY_BY_CONTEXT_DIM.get(context_dim)
    if family is None:
        raise ValueError(f"cross-attention context width {context_dim} matches no supported family ({describe_families()})")
    fam = heads_rule or FAMILIES[family]
    return family, sort_layout(BlockSpec(s, b, i, d, fam.heads_for(d)) for (s, b, i), d in dims.items())


def layout_from_module(unet) -> tuple[Optional[int], list[BlockSpec]]:
    """(context_dim, layout) from a live ComfyUI UNetModel by walking its transformer blocks."""
    blocks = []
    context_dim = None
    for name, module in unet.named_modules():
        if not (hasattr(module, "attn2") and hasattr(module, "norm2") and hasattr(module, "n_heads")):
            continue
        if module.attn2 is None:
            continue
        key = comfy_block_key(name + ".")
        if key is None:
            continue
        dim = module.norm2.normalized_shape[0]
        blocks.append(BlockSpec(*key, dim, int(module.n_heads)))
        context_dim = module.attn2.to_k.in_features
    return context_dim, sort_layout(blocks)


def describe_families() -> str:
    return ", ".join(f"{f.name} ({f.display}, context {f.context_dim})" for f in FAMILIES.values())


# ---- diffusers <-> ComfyUI block map ----------------------------------------------------------
# diffusers groups the UNet as down_blocks[d].attentions[a], mid_block.attentions[0],
# up_blocks[u].attentions[a]; ComfyUI numbers the flat input_blocks / output_blocks. With
# n = layers_per_block: input block = d * (n + 1) + a + 1 (block 0 is conv_in),
# output block = u * (n + 1) + a (up blocks have n + 1 resnets each).
_DIFFUSERS_BLOCK = re.compile(
    r"(?:^|\.)(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)$|(?:^|\.)mid_block\.attentions\.0\.transformer_blocks\.(\d+)$"
)


def diffusers_block_key(name: str, layers_per_block: int) -> Optional[tuple[str, int, int]]:
    m = _DIFFUSERS_BLOCK.search(name)
    if not m:
        return None
    if m.group(5) is not None:
        return ("middle", 0, int(m.group(5)))
    group, outer, attn, index = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    if group == "down_blocks":
        return ("input", outer * (layers_per_block + 1) + attn + 1, index)
    return ("output", outer * (layers_per_block + 1) + attn, index)


def layout_from_diffusers(unet) -> tuple[int, list[BlockSpec]]:
    """(context_dim, layout) from a diffusers UNet2DConditionModel, keyed the ComfyUI way."""
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError("per-level layers_per_block is not supported by the block map")
    blocks, context_dim = [], None
    for name, module in unet.named_modules():
        key = diffusers_block_key(name, per_block)
        if key is None or getattr(module, "attn2", None) is None:
            continue
        dim = module.norm2.normalized_shape[0]
        blocks.append(BlockSpec(*key, dim, int(module.attn2.heads)))
        context_dim = module.attn2.to_k.in_features
    return context_dim, sort_layout(blocks)
