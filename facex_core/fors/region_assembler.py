"""Region assembler (paper Sec. 3.4, Fig. 4): the inpainting reference image and generate mask.

Works in the aligned-crop frame of FORD: both faces' crops are (B, 3, S, S) float in [0, 1]
(BCHW, the FORD convention) and their ``region_masks`` are (B, R, S, S) in the same frame.
Returns ``RegionAssembly(reference, mask, preview)``:
- ``reference`` (B, 3, S, S): the image the sampler starts from (the canvas crop, with the other
  face's regions laid in, per the task's ``ReferenceRecipe``);
- ``mask`` (B, S, S) in [0, 1]: where to generate; 1 over the regions' union, dilated by
  ``dilation_px`` (square structuring element) and feathered over ``feather_px`` pixels;
- ``preview`` (B, 3, S, 2S): the reference beside the reference with the mask drawn in red.

Outside the dilated mask the reference equals the canvas crop exactly (pixels are selected, not
blended), so un-generated pixels never change.

Empty regions (no pixel of the mask above 0.5):
- the face that is pasted (source face / head for the swaps) must not be empty: error naming the
  batch item (the parser found no face in that crop);
- attribute editing: every chosen region must exist in the donor (target) face, else an error
  names the region and the item ("take hair from a bald face" has nothing to take; choose another
  face, or set the region to "none" in the representation assembler to have it removed);
- a region missing on the canvas face is fine (a bald target in a face swap keeps its scalp);
- a mask that is empty as a whole is an error (nothing would be generated).

Morphology is plain torch (separable max-pooling for dilation, separable Gaussian for feathering).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from ..regions import REGIONS, region_indices
from ..representation import FaceRepresentation
from .representation_assembler import EMPTY_THRESHOLD, _common_batch
from .tasks import FORSError, ReferenceRecipe, get_task

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for the grayscale head
NEUTRAL_GREY = 0.5
PREVIEW_COLOUR = (1.0, 0.0, 0.0)
PREVIEW_ALPHA = 0.5


class RegionAssemblyError(FORSError):
    """Crops, masks or region choices the region assembler cannot use; the message says the fix."""


class RegionAssembly(NamedTuple):
    reference: torch.Tensor  # (B, 3, S, S)
    mask: torch.Tensor  # (B, S, S)
    preview: torch.Tensor  # (B, 3, S, 2S)


# ---- morphology -------------------------------------------------------------------------


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Max filter with a (2px+1)^2 square window on (B, H, W); separable, so O(px) per pixel."""
    if px <= 0:
        return mask
    k = 2 * px + 1
    x = mask[:, None]
    x = F.max_pool2d(x, kernel_size=(1, k), stride=1, padding=(0, px))
    x = F.max_pool2d(x, kernel_size=(k, 1), stride=1, padding=(px, 0))
    return x[:, 0]


def gaussian_kernel(px: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D Gaussian of radius px with sigma px/3 (the soft edge spans about px pixels each way)."""
    sigma = px / 3.0
    x = torch.arange(-px, px + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def feather(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) with replicated borders."""
    if px <= 0:
        return mask
    k = gaussian_kernel(px, mask.dtype, mask.device)
    x = mask[:, None]
    x = F.conv2d(F.pad(x, (px, px, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, px, px), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> luma replicated on three channels."""
    w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True).expand_as(images).contiguous()


def region_union(masks: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Soft union (max) of the named regions: (B, R, S, S) -> (B, S, S)."""
    return masks[:, region_indices(names)].amax(dim=1)


def mean_colour(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean RGB of each image over mask > 0.5, (B, 3, 1, 1); neutral grey where the mask is empty."""
    sel = (mask > EMPTY_THRESHOLD).to(images.dtype)[:, None]
    count = sel.sum((2, 3), keepdim=True)
    total = (images * sel).sum((2, 3), keepdim=True)
    grey = torch.full_like(total, NEUTRAL_GREY)
    return torch.where(count > 0, total / count.clamp(min=1), grey)


def preview(reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Side by side: the reference | the reference with the mask overlaid in red."""
    colour = torch.tensor(PREVIEW_COLOUR, dtype=reference.dtype, device=reference.device).view(1, 3, 1, 1)
    a = PREVIEW_ALPHA * mask[:, None]
    overlay = reference * (1 - a) + colour * a
    return torch.cat([reference, overlay], dim=3)


# ---- input checks -----------------------------------------------------------------------


def _check_face(name: str, crops: torch.Tensor, rep: FaceRepresentation) -> None:
    if not isinstance(crops, torch.Tensor) or crops.dim() != 4 or crops.shape[1] != 3:
        shape = tuple(crops.shape) if isinstance(crops, torch.Tensor) else type(crops).__name__
        raise RegionAssemblyError(f"{name} crops must be a (batch, 3, S, S) image tensor, got {shape}")
    rep.require("region_masks", purpose=f"the region assembler ({name} face)")
    s = rep.crop_size
    if tuple(crops.shape[2:]) != (s, s):
        raise RegionAssemblyError(
            f"{name} crops are {crops.shape[3]}x{crops.shape[2]} but its representation was made on "
            f"{s}x{s} crops; use the aligned crops from the same FORD node as the representation"
        )
    if crops.shape[0] != rep.batch_size:
        raise RegionAssemblyError(
            f"{name} has {crops.shape[0]} crop(s) but its representation holds {rep.batch_size} face(s); "
            f"use the aligned crops from the same FORD node as the representation"
        )


def _check_pixels(px: int, name: str, size: int) -> int:
    if not isinstance(px, int) or isinstance(px, bool) or px < 0 or px >= size:
        raise RegionAssemblyError(f"{name} must be a whole number of pixels from 0 to {size - 1}, got {px!r}")
    return px


def _chosen_regions(recipe: ReferenceRecipe, task: str, regions: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    if regions is None:
        if recipe.needs_regions:
            raise RegionAssemblyError(
                f"{task} needs the regions to take from the target face (e.g. 'hair' or 'eyes, eyebrows'); "
                f"known regions: {', '.join(REGIONS)}"
            )
        return recipe.regions
    chosen = tuple(dict.fromkeys(regions))
    if not chosen:
        raise RegionAssemblyError(
            f"the region selection for {task} is empty; name at least one of: {', '.join(REGIONS)}"
        )
    region_indices(chosen)  # unknown names -> error listing the vocabulary
    return chosen


def _empty_items(union: torch.Tensor) -> list[int]:
    return (union.flatten(1).amax(1) <= EMPTY_THRESHOLD).nonzero().flatten().tolist()


# ---- the assembler ----------------------------------------------------------------------


def assemble_regions(
    source_crops: torch.Tensor,
    source_rep: FaceRepresentation,
    target_crops: torch.Tensor,
    target_rep: FaceRepresentation,
    task: str,
    dilation_px: int = 12,
    feather_px: int = 8,
    regions: Optional[Sequence[str]] = None,
) -> RegionAssembly:
    """Build (reference, mask, preview) for ``task``; ``regions`` replaces the task's regions
    (required for attribute editing; narrows the mask for reenactment, animation, inpainting)."""
    recipe = get_task(task).reference
    _check_face("source", source_crops, source_rep)
    _check_face("target", target_crops, target_rep)
    if source_rep.crop_size != target_rep.crop_size:
        s, t = source_rep.crop_size, target_rep.crop_size
        raise RegionAssemblyError(
            f"source crops are {s}x{s} and target crops are {t}x{t}; align both faces to the same crop size"
        )
    size = source_rep.crop_size
    dilation_px = _check_pixels(dilation_px, "dilation_px", size)
    feather_px = _check_pixels(feather_px, "feather_px", size)
    chosen = _chosen_regions(recipe, task, regions)

    batch = _common_batch({"source": source_rep.batch_size, "target": target_rep.batch_size}, f"{task} region assembly", RegionAssemblyError)
    dtype, device = target_crops.dtype, target_crops.device
    crops = {
        "source": source_crops.to(device=device, dtype=dtype).expand(batch, -1, -1, -1),
        "target": target_crops.expand(batch, -1, -1, -1),
    }
    masks = {
        "source": source_rep.region_masks.to(device=device, dtype=dtype).expand(batch, -1, -1, -1),
        "target": target_rep.region_masks.to(device=device, dtype=dtype).expand(batch, -1, -1, -1),
    }
    canvas = crops[recipe.canvas]

    # Generate mask: union over the recipe's faces of the chosen regions (everything if None).
    if chosen is None:
        union_bin = torch.ones(batch, size, size, dtype=dtype, device=device)
    else:
        union_bin = torch.zeros(batch, size, size, dtype=dtype, device=device)
        for side in recipe.mask_sides:
            union_bin = torch.maximum(union_bin, (region_union(masks[side], chosen) > EMPTY_THRESHOLD).to(dtype))
        empty = _empty_items(union_bin)
        if empty:
            raise RegionAssemblyError(
                f"{task}: regions {', '.join(chosen)} are empty in batch item(s) {empty} (0-based) of "
                f"the {' and '.join(recipe.mask_sides)} face(s): nothing to generate; choose regions "
                f"the parser found (see the FORD parse preview)"
            )
    dilated = dilate(union_bin, dilation_px)
    inside = dilated > 0

    blended = canvas
    if recipe.paste_from is not None and chosen is not None:
        donor = recipe.paste_from
        if recipe.needs_regions:
            for region in chosen:  # explicit requests: each region must exist in the donor
                missing = _empty_items(region_union(masks[donor], (region,)))
                if missing:
                    raise RegionAssemblyError(
                        f"{task}: region {region!r} is empty in the {donor} face, batch item(s) {missing} "
                        f"(0-based), so there is nothing to take; use a {donor} face that has it, or set "
                        f"{region}=none in the representation assembler to remove it instead"
                    )
        alpha = region_union(masks[donor], chosen)
        missing = _empty_items(alpha)
        if missing:
            raise RegionAssemblyError(
                f"{task}: the {donor} face has no {'/'.join(chosen)} pixels in batch item(s) {missing} "
                f"(0-based); the parser found no face there, check that {donor} crop"
            )
        if recipe.fill is not None:
            fill_side, fill_region = recipe.fill
            colour = mean_colour(crops[fill_side], region_union(masks[fill_side], (fill_region,)))
            own = region_union(masks[recipe.canvas], chosen)[:, None]
            blended = blended * (1 - own) + colour * own
        pasted = grayscale(crops[donor]) if recipe.grayscale else crops[donor]
        a = alpha[:, None]
        blended = blended * (1 - a) + pasted * a

    # Select, not blend, so pixels outside the dilated mask are the canvas bit for bit.
    reference = torch.where(inside[:, None], blended.clamp(0, 1), canvas)
    mask = torch.maximum(feather(dilated, feather_px), union_bin).clamp(0, 1)
    return RegionAssembly(reference=reference, mask=mask, preview=preview(reference, mask))
