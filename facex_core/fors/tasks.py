"""The FORS task table (paper Sec. 3.3-3.5, Fig. 4), as data.

Every task says, for each representation component (``representation.COMPONENTS``) and each
region (``regions.REGIONS``), which face it comes from:

- ``"source"``: the face that gives the identity (the "who"),
- ``"target"``: the other face: the image being edited for the swaps, the driving face for
  reenactment / animation, the donor of new parts for attribute editing,
- ``"none"``: masked out (zeros: the null the model sees for an absent condition),
- ``"third"``: only through overrides: a third face, for mixture editing ("this face, that
  person's hair").

Each task also carries the recipe the *region assembler* follows to build the inpainting
reference image and the generate mask (``ReferenceRecipe``), and its ``canvas``: the face whose
image is edited, which gives the output's geometry (affine, image size) so paste-back lands the
result in that image.

The paper's rules are cited next to each entry. The authors published no code, so these are our
reading of Sec. 3.4 / Fig. 4; where the paper is silent (texture, lighting, dense landmarks, the
fill colour of uncovered pixels) the comment says "ours" and why.

``effective_plan(task, overrides)`` turns a task plus user overrides into a ``Plan``, which is what
the assemblers read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from ..regions import FACE_REGIONS, HEAD_REGIONS, REGIONS
from ..representation import COMPONENTS


class FORSError(ValueError):
    """A task, override or region selection the assemblers cannot follow; the message says why."""


# Where a part may come from. "third" is never a task default, only an override.
SIDES: tuple[str, ...] = ("source", "target", "none", "third")
FACE_SIDES: tuple[str, ...] = ("source", "target", "third")  # sides that are actual faces
# Override values meaning "leave the task's choice" (the node's combo offers "task default").
DEFAULT_WORDS: frozenset[str] = frozenset({"", "task default", "default", "task"})

MOTION: tuple[str, ...] = ("pose", "expression", "gaze")

# Shorthand override keys: one key sets several components / regions (mixture editing).
ALIASES: dict[str, tuple[str, ...]] = {
    "motion": MOTION,
    "face": FACE_REGIONS,
    "head": HEAD_REGIONS,
    "regions": REGIONS,
}


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the region assembler builds (reference image, generate mask) for a task.

    reference = the ``canvas`` crop; inside the (dilated) mask, the ``paste_from`` face's pixels of
    ``regions`` are laid over it (grey if ``grayscale``); the canvas face's own pixels of
    ``regions`` that the paste does not cover are painted with ``fill`` (mean colour of
    (side, region)) so the canvas face does not leak into the reference.
    mask = union over ``mask_sides`` of the faces' ``regions`` (all pixels if regions is None),
    dilated, then feathered. Outside the dilated mask the reference is the canvas, exactly.
    """

    canvas: str
    regions: Optional[tuple[str, ...]]  # None: the whole crop
    paste_from: Optional[str]
    mask_sides: tuple[str, ...]
    grayscale: bool = False
    fill: Optional[tuple[str, str]] = None
    needs_regions: bool = False  # the user must choose the regions (attribute editing)
    rule: str = ""  # the paper sentence this recipe follows


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    canvas: str  # face whose image is edited: gives affine / image_hw (paste-back target)
    components: Mapping[str, str]  # COMPONENTS -> side
    regions: Mapping[str, str]  # REGIONS -> side
    reference: ReferenceRecipe
    rules: tuple[str, ...] = field(default_factory=tuple)  # paper sentences the entry follows


def _task(
    name: str,
    description: str,
    *,
    canvas: str,
    components: dict[str, str],
    source_regions: tuple[str, ...],
    target_regions: tuple[str, ...] = (),
    reference: ReferenceRecipe,
    rules: tuple[str, ...],
) -> Task:
    """Build a table entry, checking it names every component and every region exactly once."""
    if set(components) != set(COMPONENTS):
        raise AssertionError(f"task {name}: components {sorted(components)} != {sorted(COMPONENTS)}")
    both = set(source_regions) & set(target_regions)
    if both:
        raise AssertionError(f"task {name}: regions {sorted(both)} listed for both sides")
    regions = {r: "none" for r in REGIONS}
    regions.update({r: "source" for r in source_regions})
    regions.update({r: "target" for r in target_regions})
    for value in (*components.values(), canvas):
        if value not in SIDES[:3]:
            raise AssertionError(f"task {name}: bad side {value!r}")
    return Task(
        name=name,
        description=description,
        canvas=canvas,
        components=MappingProxyType(dict(components)),
        regions=MappingProxyType(regions),
        reference=reference,
        rules=rules,
    )


# Components of a face-swap style task: who from the source, how the face moves from the target.
_SWAP_COMPONENTS = {
    "identity": "source",
    "pose": "target",
    "expression": "target",
    "gaze": "target",
    "texture": "source",  # ours: albedo is the skin's own colour, it belongs to the pasted face
    "lighting": "target",  # ours: illumination belongs to the scene being edited
    "landmarks": "target",  # ours: dense landmarks place the face in the target crop (motion)
}

# Reenactment / animation: everything of the source, the motion of the driving (target) face.
_DRIVEN_COMPONENTS = {
    "identity": "source",
    "pose": "target",
    "expression": "target",
    "gaze": "target",
    "texture": "source",
    "lighting": "source",  # ours: the source image is the canvas; its light stays
    "landmarks": "target",
}

_ALL_SOURCE = {c: "source" for c in COMPONENTS}
_NOT_FACE = tuple(r for r in REGIONS if r not in FACE_REGIONS)
_NOT_HEAD = tuple(r for r in REGIONS if r not in HEAD_REGIONS)

_IDENTITY_RULE = "Sec. 3.4: the identity always comes from the source face (every task of Fig. 4)."
_MOTION_RULE = "Sec. 3.4 / Fig. 4: the motion (pose, expression, gaze) comes from the target for reenactment and for both swaps."

TASKS: dict[str, Task] = {
    "face_swap": _task(
        "face_swap",
        "the source person's face on the target image: target pose, expression, hair, ears, background",
        canvas="target",
        components=_SWAP_COMPONENTS,
        # Fig. 4, face swapping: the source gives eyebrows, eyes, nose, lips and skin; the target
        # gives background, ears and hair. Neck and cloth are part of the target picture as well.
        source_regions=FACE_REGIONS,
        target_regions=_NOT_FACE,
        reference=ReferenceRecipe(
            canvas="target",
            regions=FACE_REGIONS,
            paste_from="source",
            mask_sides=("source", "target"),
            # ours: target-face pixels the source face does not cover would leak the target's
            # identity into the reference; paint them with the source's mean skin colour.
            fill=("source", "skin"),
            rule="Sec. 3.4, region assembler (face swapping): the source face is recombined with the "
            "target's hair, ears and background; the area to generate is the union of the two faces.",
        ),
        rules=(_IDENTITY_RULE, _MOTION_RULE, "Fig. 4: inner-face regions from the source, the rest from the target."),
    ),
    "head_swap": _task(
        "head_swap",
        "the source person's whole head (hair and ears too) on the target's body and background",
        canvas="target",
        components=_SWAP_COMPONENTS,
        # Fig. 4, head swapping: eyebrows, eyes, nose, lips, hair, ears and skin from the source;
        # background, neck and cloth from the target.
        source_regions=HEAD_REGIONS,
        target_regions=_NOT_HEAD,
        reference=ReferenceRecipe(
            canvas="target",
            regions=HEAD_REGIONS,
            paste_from="source",
            mask_sides=("source", "target"),
            # Sec. 3.4: the source head goes in as a grayscale image (its colours are re-generated
            # to match the target's light), and the union of both heads, dilated, is generated so
            # the seam at the head boundary is left to the model ("edges cut by dilation").
            grayscale=True,
            # ours: target-head pixels the source head does not cover become the target's mean
            # background colour (that is what lies behind a head).
            fill=("target", "background"),
            rule="Sec. 3.4, region assembler (head swapping): the source head is turned grayscale and "
            "placed on the target background; the union of the two heads, dilated, is generated.",
        ),
        rules=(_IDENTITY_RULE, _MOTION_RULE, "Fig. 4: the whole head from the source, background/neck/cloth from the target."),
    ),
    "reenactment": _task(
        "reenactment",
        "the source face re-posed and re-expressed by the target (driving) face",
        canvas="source",
        components=_DRIVEN_COMPONENTS,
        source_regions=REGIONS,  # Fig. 4: every region of the source
        reference=ReferenceRecipe(
            canvas="source",
            regions=None,
            paste_from=None,
            mask_sides=("source",),
            rule="Sec. 3.4, region assembler (reenactment): the source image is the reference and "
            "the whole crop is generated (the face moves, so every pixel may change).",
        ),
        rules=(_IDENTITY_RULE, _MOTION_RULE, "Fig. 4: all regions from the source."),
    ),
    "animation": _task(
        "animation",
        "the source face animated by another person's motion (pose, expression, gaze)",
        canvas="source",
        # As reenactment (Fig. 4), but the driving face is another person: its dense landmarks
        # carry that person's face shape, so (ours) they are masked out and only the
        # identity-free 3DMM pose / expression and the gaze drive the source.
        components={**_DRIVEN_COMPONENTS, "landmarks": "none"},
        source_regions=REGIONS,
        reference=ReferenceRecipe(
            canvas="source",
            regions=None,
            paste_from=None,
            mask_sides=("source",),
            rule="Sec. 3.4 (animation as reenactment): the source image is the reference, all of it generated.",
        ),
        rules=(_IDENTITY_RULE, "Fig. 4: motion from the driving face, all regions from the source."),
    ),
    "inpainting": _task(
        "inpainting",
        "regenerate chosen regions of the source face, everything conditioned on the source itself",
        canvas="source",
        components=_ALL_SOURCE,
        source_regions=REGIONS,  # Fig. 4, inpainting: every component and region from the source
        reference=ReferenceRecipe(
            canvas="source",
            regions=None,  # default: everything; the user's region selection narrows it
            paste_from=None,
            mask_sides=("source",),
            rule="Sec. 3.4, inpainting: the source image is the reference; the masked regions are generated.",
        ),
        rules=(_IDENTITY_RULE, "Fig. 4: everything from the source."),
    ),
    "attribute_editing": _task(
        "attribute_editing",
        "add a part of another face (hairstyle, glasses, beard...) to the source, or remove one",
        canvas="source",
        components=_ALL_SOURCE,
        # Fig. 4, attribute editing: by default everything comes from the source; the chosen
        # regions come from the target ("add new") or are masked out ("none"), through overrides.
        source_regions=REGIONS,
        reference=ReferenceRecipe(
            canvas="source",
            regions=None,
            paste_from="target",
            mask_sides=("source", "target"),
            needs_regions=True,
            rule="Sec. 3.4, attribute editing: the chosen regions of the target are pasted on the "
            "source; the union of the chosen regions of both faces, dilated, is generated.",
        ),
        rules=(_IDENTITY_RULE, "Fig. 4: everything from the source except the chosen regions."),
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise FORSError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


# ---- plans: a task plus the user's overrides ----------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The effective choice for one assembly: what the assemblers actually follow."""

    task: str
    canvas: str
    components: Mapping[str, str]
    regions: Mapping[str, str]
    overrides: Mapping[str, str]  # the overrides applied (expanded aliases), for the record

    def sides_used(self) -> set[str]:
        return {s for s in (*self.components.values(), *self.regions.values(), self.canvas) if s != "none"}

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "canvas": self.canvas,
            "components": dict(self.components),
            "regions": dict(self.regions),
            "overrides": dict(self.overrides),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def summary(self) -> str:
        """Human-readable plan for the node's STRING output."""
        lines = [f"task: {self.task} (image edited: {self.canvas})"]
        for comp, side in self.components.items():
            mark = " (override)" if comp in self.overrides else ""
            lines.append(f"{comp}: {side}{mark}")
        by_side: dict[str, list[str]] = {}
        for region, side in self.regions.items():
            by_side.setdefault(side, []).append(region + ("*" if region in self.overrides else ""))
        for side in SIDES:
            if side in by_side:
                lines.append(f"regions from {side}: {', '.join(by_side[side])}")
        if any(r in self.overrides for r in self.regions):
            lines.append("(* = override)")
        return "\n".join(lines)


def _normalise_side(key: str, value: str) -> Optional[str]:
    v = str(value).strip().lower()
    if v in DEFAULT_WORDS:
        return None
    if v not in SIDES:
        raise FORSError(f"override {key}={value!r}: the side must be one of {', '.join(SIDES)} (or 'task default')")
    return v


def effective_plan(task: str, overrides: Optional[Mapping[str, str]] = None) -> Plan:
    """The task's table entry with ``overrides`` applied, in the order given (later keys win).

    Keys: a component ("gaze"), a region ("hair") or an alias (``ALIASES``: "motion", "face",
    "head", "regions"). Values: "source", "target", "none", "third", or "task default" (ignored).
    """
    entry = get_task(task)
    components = dict(entry.components)
    regions = dict(entry.regions)
    applied: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        k = str(key).strip().lower()
        side = _normalise_side(k, value)
        if side is None:
            continue
        names = ALIASES.get(k, (k,))
        for name in names:
            if name in components:
                components[name] = side
            elif name in regions:
                regions[name] = side
            else:
                raise FORSError(
                    f"unknown override key {key!r}; use a component ({', '.join(COMPONENTS)}), "
                    f"a region ({', '.join(REGIONS)}) or a group ({', '.join(ALIASES)})"
                )
            applied[name] = side
    return Plan(
        task=entry.name,
        canvas=entry.canvas,
        components=MappingProxyType(components),
        regions=MappingProxyType(regions),
        overrides=MappingProxyType(applied),
    )


_OVERRIDE_ITEM = re.compile(r"^\s*([A-Za-z_ ]+?)\s*[=:]\s*([A-Za-z_ ]*?)\s*$")


def parse_overrides(text: str) -> dict[str, str]:
    """Parse "hair=third, eyes=target" (commas, semicolons or new lines; '#' starts a comment)."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0]
        for item in re.split(r"[,;]", line):
            if not item.strip():
                continue
            m = _OVERRIDE_ITEM.match(item)
            if not m:
                raise FORSError(
                    f"cannot read override {item.strip()!r}; write name=side, e.g. 'hair=third, eyes=target'"
                )
            out[m.group(1).strip().lower()] = m.group(2).strip().lower()
    return out


def parse_region_list(text: str) -> Optional[list[str]]:
    """Parse "hair, eyes" into region names (aliases expanded); None for an empty text."""
    names: list[str] = []
    for item in re.split(r"[,;\s]+", (text or "").strip().lower()):
        if not item:
            continue
        for name in ALIASES.get(item, (item,)):
            if name not in REGIONS:
                raise FORSError(f"unknown region {item!r}; known regions: {', '.join(REGIONS)} (or face, head)")
            if name not in names:
                names.append(name)
    return names or None
