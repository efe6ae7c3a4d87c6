"""Loader nodes: model files -> ready FORD extractors.

Each output is an object with the Extractor protocol of facex_core/ford/base.py (``name``, ``family``,
``__call__(crops, rep) -> fields``), so the FORD nodes just call it; FACE_ANALYSIS is the core socket
type other packs use (an insightface FaceAnalysis or FaceX's onnxruntime twin of it).
Files come from models/insightface/models/<pack>/ and models/facex/extractors/ (nodes/paths.py).
Torch models are built on ComfyUI's offload device; the FORD nodes have ComfyUI load them onto its
torch device before each run (nodes/memory.py). onnxruntime models use the provider picked (auto:
the one for ComfyUI's device).
"""

from __future__ import annotations

import os

import comfy.model_management
import folder_paths
from comfy_api.latest import io

from ..facex_core.ford import bisenet, deep3d, insightface_onnx, l2cs
from ..facex_core.ford.onnx_session import PROVIDERS, providers_for_device
from . import paths
from .types import FaceXGazeModel, FaceXIdentityModel, FaceXMotionModel, FaceXParser

CATEGORY = "FaceX/loaders"
AUTO_PROVIDER = "auto"
PROVIDER_CHOICES = [AUTO_PROVIDER] + list(PROVIDERS)  # unavailable providers fall back to CPU (logged)
FROM_FACE_ANALYSIS = "(ArcFace of the face_analysis input)"
TORCH_EXTENSIONS = (".pth", ".pt", ".pkl", ".safetensors")


def _provider_input() -> io.Combo.Input:
    return io.Combo.Input(
        "provider",
        options=PROVIDER_CHOICES,
        default=AUTO_PROVIDER,
        tooltip="onnxruntime execution provider. auto: the one for the device ComfyUI runs on (CUDA, ROCm, CoreML, "
        "DirectML, OpenVINO) when this onnxruntime has it, else CPU. A provider not available here falls back to CPU (logged)",
    )


def _providers(choice: str) -> list[str]:
    if choice == AUTO_PROVIDER:
        return providers_for_device(comfy.model_management.get_torch_device())
    return [choice]


def insightface_pack_roots() -> list[str]:
    """<insightface folder>/models for every registered insightface folder (shared with other packs)."""
    try:
        roots = folder_paths.get_folder_paths("insightface")
    except KeyError:
        roots = [os.path.join(folder_paths.models_dir, "insightface")]
    return [os.path.join(r, "models") for r in roots]


def insightface_packs() -> dict[str, str]:
    """pack name -> folder, for every folder of .onnx files under <insightface>/models/."""
    packs = {}
    for root in insightface_pack_roots():
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if os.path.isdir(folder) and name not in packs and any(f.endswith(".onnx") for f in os.listdir(folder)):
                packs[name] = folder
    return packs


def extractor_files(extensions, preferred=()) -> list[str]:
    """Files in models/facex/extractors/ (every registered folder, recursively) with these extensions;
    expected file names first. Listed here rather than with get_filename_list so the extension set
    is this loader's own (L2CS ships as .pkl)."""
    try:
        folders = folder_paths.get_folder_paths("facex_extractors")
    except KeyError:
        folders = [os.path.join(folder_paths.models_dir, "facex", "extractors")]
    names: list[str] = []
    for folder in folders:
        found, _ = folder_paths.recursive_search(folder, excluded_dir_names=[".git"])
        names += [n for n in found if n.lower().endswith(tuple(extensions)) and n not in names]
    return sorted(names, key=lambda n: (os.path.basename(n) not in preferred, n.lower()))


def _file_input(tooltip: str, extensions, preferred) -> io.Combo.Input:
    return io.Combo.Input("model_file", options=extractor_files(extensions, preferred), tooltip=tooltip)


class FaceXInsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        packs = list(insightface_packs())
        preferred = [p for p in ("antelopev2", "buffalo_l") if p in packs]
        return io.Schema(
            node_id="FaceXInsightFaceLoader",
            display_name="FaceX InsightFace Loader",
            category=CATEGORY,
            description=(
                "Loads an insightface model pack (antelopev2 or buffalo_l) from models/insightface/models/ and runs its face "
                "detector (SCRFD) and ArcFace recogniser on onnxruntime, without the insightface package. The output works as "
                "FACE_ANALYSIS in other packs' nodes too. insightface packs are for non-commercial research use only."
            ),
            inputs=[
                io.Combo.Input(
                    "pack",
                    options=packs,
                    default=preferred[0] if preferred else None,
                    tooltip="folder under models/insightface/models/: antelopev2 (scrfd_10g_bnkps.onnx, glintr100.onnx) or buffalo_l (det_10g.onnx, w600k_r50.onnx)",
                ),
                _provider_input(),
            ],
            outputs=[io.FaceAnalysis.Output(display_name="face_analysis", tooltip="detector + ArcFace, usable wherever FACE_ANALYSIS is accepted")],
        )

    @classmethod
    def execute(cls, pack, provider) -> io.NodeOutput:
        packs = insightface_packs()
        if pack not in packs:
            raise FileNotFoundError(
                f"insightface model pack {pack!r} not found; FaceX looked in: {', '.join(insightface_pack_roots())}. Put the pack "
                f"folder (antelopev2 or buffalo_l, a folder of .onnx files) there."
            )
        return io.NodeOutput(insightface_onnx.load_face_analysis(packs[pack], providers=_providers(provider)))


class FaceXIdentityModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = extractor_files((".onnx",), insightface_onnx.RECOGNITION_FILES)
        return io.Schema(
            node_id="FaceXIdentityModelLoader",
            display_name="FaceX Identity Model Loader (ArcFace)",
            category=CATEGORY,
            description=(
                "ArcFace identity extractor: the 512-d embedding and the 512x7x7 feature map before it (the paper's identity "
                "feature). Takes the recogniser of a FACE_ANALYSIS input (FaceX's or another pack's insightface loader) or an "
                "ArcFace .onnx file from models/facex/extractors/. Non-commercial research use only (insightface models)."
            ),
            inputs=[
                io.Combo.Input(
                    "model_file",
                    options=[FROM_FACE_ANALYSIS] + files,
                    default=FROM_FACE_ANALYSIS,
                    tooltip="where the ArcFace model comes from: the face_analysis input, or an .onnx file (glintr100.onnx, w600k_r50.onnx) in models/facex/extractors/",
                ),
                _provider_input(),
                io.FaceAnalysis.Input("face_analysis", optional=True, tooltip="an insightface pack loader's output; used when model_file is the face_analysis entry"),
            ],
            outputs=[FaceXIdentityModel.Output(display_name="identity_model", tooltip="identity extractor for the FORD nodes")],
        )

    @classmethod
    def execute(cls, model_file, provider, face_analysis=None) -> io.NodeOutput:
        if model_file == FROM_FACE_ANALYSIS:
            if face_analysis is None:
                raise ValueError(
                    "FaceX Identity Model Loader: model_file says to use the face_analysis input, but nothing is connected to "
                    "face_analysis; connect a FaceX InsightFace Loader (or another pack's insightface loader) or pick an .onnx file"
                )
            return io.NodeOutput(insightface_onnx.identity_from_face_analysis(face_analysis))
        path = paths.resolve("facex_extractors", model_file)
        return io.NodeOutput(insightface_onnx.make_identity(path=path, providers=_providers(provider)))


def _torch_loader(node_id: str, display_name: str, description: str, file_tooltip: str, module, make,
                  socket, output_name: str, output_tooltip: str) -> type[io.ComfyNode]:
    """A loader node for one torch-weights FORD backend: a file from models/facex/extractors/ ->
    its extractor, on the offload device until a FORD node runs it. The three torch backends differ
    only in this data."""

    class TorchExtractorLoader(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=node_id,
                display_name=display_name,
                category=CATEGORY,
                description=description,
                inputs=[_file_input(file_tooltip, TORCH_EXTENSIONS, module.FILES)],
                outputs=[socket.Output(display_name=output_name, tooltip=output_tooltip)],
            )

        @classmethod
        def execute(cls, model_file) -> io.NodeOutput:
            path = paths.resolve("facex_extractors", model_file)
            return io.NodeOutput(make(path=path, device=comfy.model_management.unet_offload_device()))

    TorchExtractorLoader.__name__ = TorchExtractorLoader.__qualname__ = node_id
    return TorchExtractorLoader


FaceXParserLoader = _torch_loader(
    "FaceXParserLoader", "FaceX Face Parser Loader (BiSeNet)",
    "BiSeNet face parser (19 CelebAMask-HQ classes -> FaceX regions) from models/facex/extractors/: 79999_iter.pth "
    "(face-parsing.PyTorch) or parsing_bisenet.pth (facexlib). Code MIT; CelebAMask-HQ data non-commercial.",
    "BiSeNet weights: 79999_iter.pth or parsing_bisenet.pth", bisenet, bisenet.make_parser,
    FaceXParser, "parser", "face parser for the FORD nodes (region masks)",
)
FaceXMotionModelLoader = _torch_loader(
    "FaceXMotionModelLoader", "FaceX Motion Model Loader (Deep3DFaceRecon)",
    "Deep3DFaceRecon 3DMM regressor (epoch_20.pth) from models/facex/extractors/: pose, expression, texture and "
    "lighting coefficients. Code MIT; the weights were trained with the Basel Face Model, which needs its own licence.",
    "Deep3DFaceRecon_pytorch checkpoint: epoch_20.pth", deep3d, deep3d.make_motion,
    FaceXMotionModel, "motion_model", "motion/texture/lighting extractor for the FORD nodes",
)
FaceXGazeModelLoader = _torch_loader(
    "FaceXGazeModelLoader", "FaceX Gaze Model Loader (L2CS-Net)",
    "L2CS-Net gaze estimator (L2CSNet_gaze360.pkl) from models/facex/extractors/: gaze pitch and yaw. MIT.",
    "L2CS-Net weights: L2CSNet_gaze360.pkl", l2cs, l2cs.make_gaze,
    FaceXGazeModel, "gaze_model", "gaze extractor for the FORD nodes",
)


NODES = [
    FaceXInsightFaceLoader,
    FaceXIdentityModelLoader,
    FaceXParserLoader,
    FaceXMotionModelLoader,
    FaceXGazeModelLoader,
]
