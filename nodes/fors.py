"""FORS nodes: the representation assembler and the region assembler (paper Fig. 4).

Thin skin over facex_core.fors: converts ComfyUI IMAGE (BHWC) / MASK (BHW) to the core's BCHW
crops and back, and turns widget strings into the core's override dicts. No math here.
"""

from comfy_api.latest import io

from ..facex_core.fors import (
    TASKS,
    assemble,
    assemble_regions,
    parse_overrides,
    parse_region_list,
    plan_summary,
)
from ..facex_core.fors.tasks import SIDES
from ..facex_core.representation import COMPONENTS
from .types import FaceXRepresentation

CATEGORY = "FaceX/FORS"
TASK_DEFAULT = "task default"
COMPONENT_CHOICES = [TASK_DEFAULT, *SIDES]  # task default, source, target, none, third

_TASK_TOOLTIP = "Which FaceX task to assemble for: " + "; ".join(f"{t.name}: {t.description}" for t in TASKS.values())

_COMPONENT_TOOLTIPS = {
    "identity": "Whose identity (who the person is). The task takes it from the source.",
    "pose": "Whose head pose (yaw, pitch, roll).",
    "expression": "Whose facial expression.",
    "gaze": "Whose gaze direction (e.g. swap the face but keep the source's gaze).",
    "texture": "Whose skin texture / albedo.",
    "lighting": "Whose lighting (spherical harmonics).",
    "landmarks": "Whose dense landmarks (face outline and placement in the crop).",
}


class FaceXRepresentationAssembler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        component_inputs = [
            io.Combo.Input(
                name,
                options=COMPONENT_CHOICES,
                default=TASK_DEFAULT,
                tooltip=_COMPONENT_TOOLTIPS[name]
                + " 'task default' follows the task; 'none' masks it out; 'third' takes it from the third face.",
            )
            for name in COMPONENTS
        ]
        return io.Schema(
            node_id="FaceXRepresentationAssembler",
            display_name="FaceX Representation Assembler",
            category=CATEGORY,
            description="Builds the face representation for a task by taking each part (identity, motion, "
            "lighting, each facial region) from the source, the target or a third face (FaceX FORS, Fig. 4). "
            "Overrides mix tasks, e.g. swap the face but keep the source's gaze.",
            inputs=[
                FaceXRepresentation.Input("source", tooltip="The face that gives the identity (whose face you want to see)."),
                FaceXRepresentation.Input(
                    "target",
                    tooltip="The other face: the image being edited for face / head swap, the driving face for "
                    "reenactment / animation, the donor of new parts for attribute editing.",
                ),
                io.Combo.Input("task", options=list(TASKS), default="face_swap", tooltip=_TASK_TOOLTIP),
                *component_inputs,
                io.String.Input(
                    "region_overrides",
                    multiline=True,
                    default="",
                    placeholder="hair=third, eyes=target",
                    tooltip="Per-region sources as name=side, separated by commas or new lines. Regions: "
                    "skin, eyebrows, eyes, nose, lips, ears, hair, neck, cloth, background; groups: face, head, "
                    "regions, motion. Sides: source, target, none (masked out), third.",
                ),
                FaceXRepresentation.Input(
                    "third",
                    optional=True,
                    tooltip="Optional third face for mixture editing: anything set to 'third' comes from here.",
                ),
            ],
            outputs=[
                FaceXRepresentation.Output("representation", display_name="representation"),
                io.String.Output("plan", display_name="plan"),
            ],
        )

    @classmethod
    def execute(cls, source, target, task, region_overrides="", third=None, **components) -> io.NodeOutput:
        overrides = parse_overrides(region_overrides)
        # The component widgets come after the text so they win over a same-named text entry.
        overrides.update({name: side for name, side in components.items() if side != TASK_DEFAULT})
        rep = assemble(source, target, task, overrides, third=third)
        return io.NodeOutput(rep, plan_summary(rep))


class FaceXRegionAssembler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXRegionAssembler",
            display_name="FaceX Region Assembler",
            category=CATEGORY,
            description="Builds the inpainting reference image and the mask to generate for a task (FaceX FORS, "
            "Fig. 4): e.g. the source face on the target's hair and background for a face swap, the grey source "
            "head on the target background for a head swap. Works on the aligned crops.",
            inputs=[
                io.Image.Input("source_image", tooltip="Aligned crops of the source face (the crops output of the FORD node that made source_representation)."),
                FaceXRepresentation.Input("source_representation", tooltip="Representation of the source face; needs region masks (run the face parser)."),
                io.Image.Input("target_image", tooltip="Aligned crops of the target face, same crop size as the source."),
                FaceXRepresentation.Input("target_representation", tooltip="Representation of the target face; needs region masks (run the face parser)."),
                io.Combo.Input("task", options=list(TASKS), default="face_swap", tooltip=_TASK_TOOLTIP),
                io.Int.Input(
                    "dilation",
                    default=12,
                    min=0,
                    max=256,
                    step=1,
                    tooltip="Grow the mask by this many pixels (crop pixels) so the seam around the regions is regenerated too.",
                ),
                io.Int.Input(
                    "feather",
                    default=8,
                    min=0,
                    max=256,
                    step=1,
                    tooltip="Soften the mask edge over about this many pixels.",
                ),
                io.String.Input(
                    "regions",
                    default="",
                    placeholder="hair, eyes",
                    tooltip="Regions to use, comma separated (skin, eyebrows, eyes, nose, lips, ears, hair, neck, cloth, "
                    "background; groups: face, head). Required for attribute_editing (taken from the target); for "
                    "inpainting / reenactment it narrows the mask; for the swaps it replaces the swapped regions. "
                    "Empty = the task's default.",
                ),
            ],
            outputs=[
                io.Image.Output("reference", display_name="reference"),
                io.Mask.Output("mask", display_name="mask"),
                io.Image.Output("preview", display_name="preview"),
            ],
        )

    @classmethod
    def execute(
        cls, source_image, source_representation, target_image, target_representation, task, dilation, feather, regions=""
    ) -> io.NodeOutput:
        result = assemble_regions(
            source_image.movedim(-1, 1),
            source_representation,
            target_image.movedim(-1, 1),
            target_representation,
            task,
            dilation_px=int(dilation),
            feather_px=int(feather),
            regions=parse_region_list(regions),
        )
        return io.NodeOutput(result.reference.movedim(1, -1), result.mask, result.preview.movedim(1, -1))


NODES = [FaceXRepresentationAssembler, FaceXRegionAssembler]
