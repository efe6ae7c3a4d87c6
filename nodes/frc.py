"""FRC stage: load a FaceX checkpoint and patch a MODEL with it (FaceXApplyFRC)."""

import json
import os

import comfy.model_management
import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from ..facex_core.checkpoint import CheckpointError, load_checkpoint
from ..facex_core.frc.comfy_hooks import FRCPatch, FRCRuntime
from ..facex_core.frc.layout import FAMILIES, FAMILY_BY_COMFY_CONFIG, FAMILY_BY_CONTEXT_DIM, layout_from_module
from . import paths
from .types import FaceXModel, FaceXRepresentation

# Subfolders of models/facex/ that hold other things than FaceX checkpoints.
_NOT_CHECKPOINTS = ("faces/", "extractors/", "evaluate/")


def facex_checkpoints() -> list[str]:
    paths.register_model_folders()
    names = folder_paths.get_filename_list("facex")
    return [n for n in names if not n.replace(os.sep, "/").startswith(_NOT_CHECKPOINTS)]


class FaceXModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXModelLoader",
            display_name="FaceX Model Loader",
            category="FaceX/FRC",
            description="Loads a FaceX checkpoint (adapters + FRC bank) from models/facex/.",
            inputs=[
                io.Combo.Input("facex_name", options=facex_checkpoints(),
                               tooltip="FaceX checkpoint in models/facex/ (made by `facex init`, `facex train` or `facex export`)"),
            ],
            outputs=[FaceXModel.Output(display_name="facex_model")],
        )

    @classmethod
    def validate_inputs(cls, facex_name):
        return paths.missing_file_message("facex", facex_name) or True

    @classmethod
    def execute(cls, facex_name) -> io.NodeOutput:
        path = paths.resolve("facex", facex_name)
        try:
            model = load_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(f"FaceXModelLoader: {e}") from e
        patcher = comfy.model_patcher.ModelPatcher(
            model, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        return io.NodeOutput(patcher)


def _check_fits(model, facex) -> None:
    """Refuse a checkpoint made for another base family or another UNet layout."""
    cfg = facex.cfg
    unet = model.get_model_object("diffusion_model")
    context_dim, layout = layout_from_module(unet)
    config_name = type(model.model.model_config).__name__
    family = FAMILY_BY_CONTEXT_DIM.get(context_dim) or FAMILY_BY_COMFY_CONFIG.get(config_name)
    want = FAMILIES[cfg.family].display
    if not layout:
        raise ValueError(f"FaceXApplyFRC: the model ({config_name}) has no cross-attention transformer blocks; FaceX needs a Stable Diffusion UNet ({want})")
    if family != cfg.family:
        got = FAMILIES[family].display if family in FAMILIES else f"{config_name} (context width {context_dim})"
        raise ValueError(
            f"FaceXApplyFRC: this FaceX checkpoint was made for {want} but the model is {got}; "
            f"load a {want} checkpoint or a FaceX checkpoint made for {got}"
        )
    if layout != cfg.layout:
        mine = {b.key: b for b in cfg.layout}
        theirs = {b.key: b for b in layout}
        missing = sorted(set(theirs) - set(mine))[:4]
        extra = sorted(set(mine) - set(theirs))[:4]
        differ = [k for k in sorted(set(mine) & set(theirs)) if mine[k] != theirs[k]][:4]
        raise ValueError(
            f"FaceXApplyFRC: the checkpoint's FRC bank does not fit this {want} UNet's blocks "
            f"(blocks without a layer: {missing}, layers without a block: {extra}, width/heads differ: {differ}); "
            f"make the checkpoint with `facex init --unet <this checkpoint>`"
        )


class FaceXApplyFRC(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXApplyFRC",
            display_name="FaceX Apply FRC",
            category="FaceX/FRC",
            description="Adds FaceX's zero-initialised cross-attention after every attn2 of the UNet, "
                        "steered by an (assembled) face representation. Composes with LoRA, ControlNet and IPAdapter.",
            inputs=[
                io.Model.Input("model", tooltip="the Stable Diffusion MODEL to patch (from a checkpoint loader, after LoRA if any)"),
                FaceXModel.Input("facex_model", tooltip="from FaceX Model Loader; must be made for this model's family"),
                FaceXRepresentation.Input("representation", tooltip="the assembled representation (FaceX Representation Assembler or a decomposed face); one face for all latents or one per latent"),
                io.Image.Input("reference", optional=True, tooltip="inpainting reference from FaceX Region Assembler (optional)"),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.01, tooltip="scale of the FRC residual; 0 leaves the model exactly unchanged"),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, tooltip="first part of sampling where FRC acts (0 = from the first step)"),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, tooltip="last part of sampling where FRC acts (1 = to the last step)"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, facex_model, representation, strength, start_percent, end_percent, reference=None) -> io.NodeOutput:
        facex = facex_model.model
        _check_fits(model, facex)
        if start_percent > end_percent:
            raise ValueError(f"FaceXApplyFRC: start_percent {start_percent} is after end_percent {end_percent}")
        facex.check_representation(representation)
        if reference is not None and reference.shape[0] not in (1, representation.batch_size):
            raise ValueError(
                f"FaceXApplyFRC: the reference has {reference.shape[0]} images, the representation {representation.batch_size} faces; give one reference or one per face"
            )
        ref = None if reference is None else reference.movedim(-1, 1)
        sampling = model.get_model_object("model_sampling")
        runtime = FRCRuntime(
            facex, encode=lambda m: m.encode(representation, ref), strength=strength,
            sigma_start=sampling.percent_to_sigma(start_percent), sigma_end=sampling.percent_to_sigma(end_percent),
        )
        runtime.expected_blocks = [b.key for b in facex.cfg.layout]
        patch = FRCPatch(runtime, models=lambda: [facex_model])
        patched = model.clone()
        patched.set_model_patch(patch.middle, "middle_patch")
        patched.set_model_attn2_output_patch(patch.output)
        return io.NodeOutput(patched)


class FaceXInspectFRC(io.ComfyNode):
    """Reports what the FRC patches on a MODEL did in the sampling runs so far: which blocks fired,
    how often f_SD's k/v were projected. Connect `after` to the sampler's output so it runs last."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXInspectFRC",
            display_name="FaceX Inspect FRC",
            category="FaceX/FRC",
            description="Diagnostics of FaceX FRC patches on a model: blocks patched and fired, k/v projections.",
            inputs=[
                io.Model.Input("model", tooltip="a MODEL patched by FaceX Apply FRC"),
                io.AnyType.Input("after", optional=True, tooltip="connect the sampler's LATENT or decoded IMAGE so this runs after sampling"),
            ],
            outputs=[io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # always re-run: the counters change between runs

    @classmethod
    def execute(cls, model, after=None) -> io.NodeOutput:
        hooks = model.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_output_patch", [])
        reports = []
        for hook in hooks:
            rt = getattr(getattr(hook, "patch", None), "runtime", None)
            if rt is None:
                continue
            expected = getattr(rt, "expected_blocks", [])
            reports.append({
                "blocks": len(expected),
                "fired": len(rt.fired),
                "not_fired": [list(k) for k in expected if k not in rt.fired],
                "layer_calls": rt.calls,
                "kv_projections": rt.kv_projections,
                "strength": rt.strength,
            })
        text = json.dumps({"frc_patches": reports})
        return io.NodeOutput(text, ui={"text": (text,)})


NODES = [FaceXModelLoader, FaceXApplyFRC, FaceXInspectFRC]
