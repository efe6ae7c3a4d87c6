"""Representation assembler (paper Sec. 3.4, Fig. 4): one FaceRepresentation from two (or three).

Each component (``representation.COMPONENTS``) and each region's mask and feature is taken from
the face the plan names (``tasks.effective_plan``); "none" gives zeros (the null condition).

Rules beyond the table, and why:
- Geometry (``affine``, ``image_hw``, ``crop_size``) comes from the plan's canvas: the face whose
  image is being edited, so paste-back puts the result into that image (target for the swaps,
  source for reenactment, animation, inpainting and attribute editing).
- ``landmarks5`` travels with the "landmarks" component (the contract groups them). When that
  component is "none" the canvas's five points are kept, because the field is required.
- ``clip_tokens`` (whole-crop CLIP tokens) carry the look of the whole face, so they follow the
  identity component.
- An empty region (no pixel of its mask above 0.5, e.g. the hair of a bald target) is treated as
  masked out: mask and feature become zero for that face. "Hair from a bald target" thus means
  "no hair", which is what the target looks like; the plan record lists such regions.
- A FORD part (``FIELDS[...].part``) whose fields come from faces made by different backends is
  refused: a model trained on one backend's features cannot read a mixture. Parts taken from one
  face only are never compared (the unused face's backend does not matter).
- Batches broadcast: every face has batch N or 1.

The output is an ordinary FaceRepresentation (chaining works: feed it to another assembler). Its
``backends`` keeps the FORD backend per part and adds ``fors.plan``: the plan as JSON, with the
plans of any assembled inputs nested under "inputs" (the editing history).
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

import torch

from ..regions import REGIONS
from ..representation import COMPONENTS, FIELDS, FaceRepresentation, RepresentationError
from .tasks import FACE_SIDES, FORSError, Plan, effective_plan

PLAN_KEY = "fors.plan"
EMPTY_THRESHOLD = 0.5  # a region is empty when no pixel of its soft mask exceeds this


class AssemblyError(FORSError, RepresentationError):
    """Inputs the representation assembler cannot combine; the message names them and the fix."""


def _common_batch(sizes: Mapping[str, int], what: str, error: type[Exception] = AssemblyError) -> int:
    batch = max(sizes.values())
    bad = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if bad:
        listed = ", ".join(f"{name} has {n}" for name, n in sizes.items())
        raise error(
            f"{what}: batch sizes do not match ({listed}); each input must hold the same number of faces, "
            f"or exactly one face (which is then used for every item)"
        )
    return batch


def _check_crop_sizes(faces: Mapping[str, FaceRepresentation]) -> int:
    sizes = {name: rep.crop_size for name, rep in faces.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {s}x{s}" for name, s in sizes.items())
        raise AssemblyError(
            f"the faces were aligned to different crop sizes ({listed}); run every face through the "
            f"same alignment (same crop size) before assembling"
        )
    return next(iter(sizes.values()))


def _field_sides(plan: Plan) -> dict[str, set[str]]:
    """Field name -> the face sides it is drawn from (for the backend-mixing check)."""
    sides: dict[str, set[str]] = {"affine": {plan.canvas}, "image_hw": {plan.canvas}}
    for comp, fields in COMPONENTS.items():
        side = plan.components[comp]
        for f in fields:
            sides.setdefault(f, set())
            if side != "none":
                sides[f].add(side)
    if plan.components.get("landmarks") == "none":
        sides["landmarks5"] = {plan.canvas}
    region_sides = {s for s in plan.regions.values() if s != "none"}
    sides["region_masks"] = set(region_sides)
    sides["region_features"] = set(region_sides)
    sides["clip_tokens"] = {plan.components["identity"]} - {"none"}
    return sides


def _check_backends(plan: Plan, faces: Mapping[str, FaceRepresentation], field_sides: dict[str, set[str]]) -> dict[str, str]:
    """Refuse a FORD part mixed from faces made by different backends; return part -> backend."""
    part_sides: dict[str, set[str]] = {}
    for name, sides in field_sides.items():
        present = {s for s in sides if getattr(faces[s], name) is not None}
        part_sides.setdefault(FIELDS[name].part, set()).update(present)
    chosen: dict[str, str] = {}
    for part, sides in part_sides.items():
        names = {s: faces[s].backends[part] for s in sorted(sides) if part in faces[s].backends}
        if len(set(names.values())) > 1:
            listed = ", ".join(f"{s} by {b!r}" for s, b in names.items())
            raise AssemblyError(
                f"task {plan.task}: the {part!r} part would mix faces made by different FORD backends "
                f"({listed}); a FaceX model cannot read a mixture. Extract every face with the same "
                f"{part} backend, or change the overrides so this part comes from one face"
            )
        if names:
            chosen[part] = next(iter(names.values()))
    return chosen


def _shape_donor(name: str, faces: Mapping[str, FaceRepresentation], order: list[str]) -> Optional[torch.Tensor]:
    for side in order:
        t = getattr(faces[side], name)
        if t is not None:
            return t
    return None


def _region_stack(
    name: str,
    plan: Plan,
    faces: Mapping[str, FaceRepresentation],
    order: list[str],
) -> Optional[torch.Tensor]:
    """Per-region pick of region_masks / region_features; None when no face has the field."""
    donor = _shape_donor(name, faces, order)
    if donor is None:
        return None
    needed = {side for side in plan.regions.values() if side != "none"}
    for side in sorted(needed):
        t = getattr(faces[side], name)
        if t is None:
            regions = [r for r, s in plan.regions.items() if s == side]
            raise AssemblyError(
                f"task {plan.task} takes {', '.join(regions)} from the {side} face, which has no {name}; "
                f"run the FORD {FIELDS[name].part} extractor on the {side} face too"
            )
        if t.shape[1:] != donor.shape[1:]:
            raise AssemblyError(
                f"{name} of the {side} face has shape {tuple(t.shape[1:])}, another face has "
                f"{tuple(donor.shape[1:])}; extract both faces with the same {FIELDS[name].part} backend"
            )
    out = torch.zeros_like(donor)
    for r, region in enumerate(REGIONS):
        side = plan.regions[region]
        if side != "none":
            out[:, r] = getattr(faces[side], name)[:, r]
    return out


def assemble(
    source: FaceRepresentation,
    target: FaceRepresentation,
    task: str,
    overrides: Optional[Mapping[str, str]] = None,
    third: Optional[FaceRepresentation] = None,
) -> FaceRepresentation:
    """Assemble the representation for ``task`` (see the module doc for every rule)."""
    plan = effective_plan(task, overrides)
    if "third" in plan.sides_used() and third is None:
        used = [k for k, v in (*plan.components.items(), *plan.regions.items()) if v == "third"]
        raise AssemblyError(f"the overrides take {', '.join(used)} from a third face, but no third face was given")
    faces = {"source": source, "target": target}
    if third is not None:
        faces["third"] = third
    for name, rep in faces.items():
        # Duck-typed: the class may come from `facex_core` or `<pack>.facex_core` (two import names).
        if not (hasattr(rep, "crop_size") and all(hasattr(rep, f) for f in FIELDS)):
            raise AssemblyError(f"{name} must be a FaceRepresentation, got {type(rep).__name__}")
    _check_crop_sizes(faces)
    batch = _common_batch({name: rep.batch_size for name, rep in faces.items()}, f"task {plan.task}")
    device = faces[plan.canvas].affine.device
    faces = {name: rep.expand(batch) for name, rep in faces.items()}
    # .to() re-validates every tensor: only pay for it when a face is elsewhere.
    faces = {name: rep if rep.affine.device == device else rep.to(device) for name, rep in faces.items()}

    field_sides = _field_sides(plan)
    part_backends = _check_backends(plan, faces, field_sides)

    canvas = faces[plan.canvas]
    # Zeros for "none" take their shape from the canvas first, then the other faces.
    order = [plan.canvas] + [s for s in FACE_SIDES if s in faces and s != plan.canvas]
    out: dict[str, Optional[torch.Tensor]] = {"affine": canvas.affine, "image_hw": canvas.image_hw}

    for comp, fields in COMPONENTS.items():
        side = plan.components[comp]
        for name in fields:
            if side == "none":
                donor = _shape_donor(name, faces, order)
                out[name] = None if donor is None else torch.zeros_like(donor)
            else:
                out[name] = getattr(faces[side], name)
    if plan.components["landmarks"] == "none" or out.get("landmarks5") is None:
        out["landmarks5"] = canvas.landmarks5  # required geometry: never zeros, never absent

    id_side = plan.components["identity"]
    if id_side == "none":
        donor = _shape_donor("clip_tokens", faces, order)
        out["clip_tokens"] = None if donor is None else torch.zeros_like(donor)
    else:
        out["clip_tokens"] = getattr(faces[id_side], "clip_tokens")

    masks = _region_stack("region_masks", plan, faces, order)
    features = _region_stack("region_features", plan, faces, order)
    empty_regions: dict[str, list[int]] = {}
    if masks is not None:
        empty = masks.flatten(2).amax(-1) <= EMPTY_THRESHOLD  # (B, R): no pixel above the threshold
        masks = masks.masked_fill(empty[:, :, None, None], 0.0)
        if features is not None:
            if features.shape[1] != masks.shape[1]:
                raise AssemblyError("region_features and region_masks disagree on the number of regions")
            features = features.masked_fill(empty[:, :, None], 0.0)
        for r, region in enumerate(REGIONS):
            if plan.regions[region] != "none" and empty[:, r].any():
                empty_regions[region] = empty[:, r].nonzero().flatten().tolist()
    out["region_masks"] = masks
    out["region_features"] = features

    # Parts filled only with "none" zeros keep the backend that gave the zeros their shape.
    for name, t in out.items():
        part = FIELDS[name].part
        if t is not None and part not in part_backends:
            for side in order:
                if part in faces[side].backends:
                    part_backends[part] = faces[side].backends[part]
                    break

    record = plan.to_dict()
    record["empty_regions"] = empty_regions
    record["inputs"] = {
        name: json.loads(rep.backends[PLAN_KEY]) for name, rep in faces.items() if PLAN_KEY in rep.backends
    }
    backends = {**part_backends, PLAN_KEY: json.dumps(record, sort_keys=True)}
    return FaceRepresentation(crop_size=canvas.crop_size, backends=backends, **out)


def plan_summary(rep: FaceRepresentation) -> str:
    """The plan an assembled representation was made with, as text (empty if not assembled)."""
    if PLAN_KEY not in rep.backends:
        return ""
    record = json.loads(rep.backends[PLAN_KEY])
    plan = Plan(
        task=record["task"],
        canvas=record["canvas"],
        # JSON sorted the keys: restore the table's order for reading
        components={c: record["components"][c] for c in COMPONENTS if c in record["components"]},
        regions={r: record["regions"][r] for r in REGIONS if r in record["regions"]},
        overrides=record["overrides"],
    )
    text = plan.summary()
    if record.get("empty_regions"):
        empties = "; ".join(f"{r} in batch item(s) {idx}" for r, idx in record["empty_regions"].items())
        text += f"\nempty regions (treated as masked out): {empties}"
    return text
