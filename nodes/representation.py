"""Saved faces: a decomposed (or assembled) representation stored in models/facex/faces/ and
reused across workflows without running FORD again."""

import os
import re

import folder_paths
from comfy_api.latest import io

from ..facex_core.representation import FaceRepresentation, RepresentationError
from . import paths
from .types import FaceXRepresentation


def saved_faces() -> list[str]:
    paths.register_model_folders()
    return folder_paths.get_filename_list("facex_faces")


class FaceXSaveRepresentation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXSaveRepresentation",
            display_name="FaceX Save Face",
            category="FaceX/representation",
            description="Saves a face representation to models/facex/faces/<name>.safetensors.",
            inputs=[
                FaceXRepresentation.Input("representation", tooltip="the face to save"),
                io.String.Input("name", default="face", tooltip="file name (letters, digits, - and _); an existing file is replaced"),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, representation, name) -> io.NodeOutput:
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,100}", name):
            raise ValueError(f"FaceXSaveRepresentation: name {name!r} may only use letters, digits, '-' and '_' (1-100 characters)")
        paths.register_model_folders()
        folder = folder_paths.get_folder_paths("facex_faces")[0]
        path = os.path.join(folder, name + ".safetensors")
        representation.save(path)
        return io.NodeOutput(path, ui={"text": (path,)})


class FaceXLoadRepresentation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXLoadRepresentation",
            display_name="FaceX Load Face",
            category="FaceX/representation",
            description="Loads a face saved with FaceX Save Face from models/facex/faces/.",
            inputs=[io.Combo.Input("face", options=saved_faces(), tooltip="a saved face in models/facex/faces/")],
            outputs=[FaceXRepresentation.Output(display_name="representation")],
        )

    @classmethod
    def validate_inputs(cls, face):
        return paths.missing_file_message("facex_faces", face) or True

    @classmethod
    def execute(cls, face) -> io.NodeOutput:
        try:
            return io.NodeOutput(FaceRepresentation.load(paths.resolve("facex_faces", face)))
        except RepresentationError as e:
            raise ValueError(f"FaceXLoadRepresentation: {e}") from e


NODES = [FaceXSaveRepresentation, FaceXLoadRepresentation]
