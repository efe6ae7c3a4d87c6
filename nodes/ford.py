"""FORD nodes: photos -> aligned head crops -> FaceRepresentation, the region masks and previews of
a decomposition, and paste-back of generated crops into the photo.

Thin skin over facex_core.align and facex_core.ford: converts ComfyUI IMAGE (BHWC) to the core's
BCHW crops and back, picks the embedded backend when a model input is unconnected, and prefixes
core errors with the node and input they concern. No math here.

Memory: every node here asks ComfyUI to load the models it is about to run (nodes/memory.py), so
ComfyUI's own memory management moves the torch networks off the GPU and drops the other FORD caches
(MediaPipe graphs, dlib models, onnxruntime sessions) when it frees memory.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..facex_core.align import CROP_SIZES, FACE_CHOICES, paste_back
from ..facex_core.ford import REGISTRY, BackendUnavailable, clip_regions, insightface_onnx
from ..facex_core.ford.decompose import (
    EMBEDDED_EXTRACTORS,
    LANDMARKS_BACKEND,
    decompose_faces,
    make_detector,
    run_extractor,
)
from ..facex_core.ford.preview import annotate, decomposition_preview, region_colour_map
from ..facex_core.regions import FACE_REGIONS, HEAD_REGIONS, REGIONS, region_indices
from ..facex_core.representation import FaceRepresentation
from . import memory
from .types import FaceXGazeModel, FaceXIdentityModel, FaceXMotionModel, FaceXParser, FaceXRepresentation

CATEGORY = "FaceX/FORD"

# detector combo entry -> registry backend (insightface comes from the face_analysis input)
DETECTORS: dict[str, str] = {"mediapipe": "mediapipe", "dlib": "dlib", "insightface": "insightface_scrfd"}
REGION_GROUPS: dict[str, tuple[str, ...]] = {"face": FACE_REGIONS, "head": HEAD_REGIONS, **{r: (r,) for r in REGIONS}}

# The optional model input of each extractor family: (input name, socket type, what it is, loader node).
MODEL_INPUTS: dict[str, tuple[str, object, str, str]] = {
    "identity": ("identity_model", FaceXIdentityModel, "identity model (ArcFace)", "FaceX Identity Model Loader"),
    "parse": ("parser", FaceXParser, "face parser (BiSeNet)", "FaceX Face Parser Loader"),
    "motion": ("motion_model", FaceXMotionModel, "motion model (Deep3DFaceRecon)", "FaceX Motion Model Loader"),
    "gaze": ("gaze_model", FaceXGazeModel, "gaze model (L2CS-Net)", "FaceX Gaze Model Loader"),
}


class FaceXNodeError(ValueError):
    pass


def _fail(node: str, e: Exception, input_name: str = ""):
    where = f" (input '{input_name}')" if input_name else ""
    if isinstance(e, BackendUnavailable):
        return RuntimeError(f"{node}{where}: {e}")
    return FaceXNodeError(f"{node}{where}: {e}")


# ---- shared inputs ---------------------------------------------------------------------------------


def _image_input(tooltip: str = "the photo(s); every image of the batch is decomposed") -> io.Image.Input:
    return io.Image.Input("image", tooltip=tooltip)


def _detect_inputs() -> list:
    return [
        io.Combo.Input(
            "backend",
            options=list(DETECTORS),
            default="mediapipe",
            tooltip="face detector: mediapipe (embedded, Apache-2.0), dlib (embedded; its 68-point landmark model is "
            "non-commercial), insightface (SCRFD of the face_analysis input; non-commercial models)",
        ),
        io.Combo.Input(
            "crop_size",
            options=[str(s) for s in CROP_SIZES],
            default=str(CROP_SIZES[0]),
            tooltip="side of the aligned head crop in px (FFHQ-like framing with hair, ears and some neck); 512 for SD1.5 "
            "at 512, 256 for speed",
        ),
        io.Combo.Input(
            "face_choice",
            options=list(FACE_CHOICES),
            default="largest",
            tooltip="; ".join(f"{k}: {v}" for k, v in FACE_CHOICES.items()),
        ),
        io.Int.Input("index", default=0, min=0, max=63, tooltip="with face_choice 'index': which face, counting from 0 left to right"),
        io.Int.Input(
            "min_face_size",
            default=0,
            min=0,
            max=8192,
            tooltip="ignore faces whose detection box is narrower than this many px of the photo (0 = keep all)",
        ),
        io.FaceAnalysis.Input(
            "face_analysis",
            optional=True,
            tooltip="an insightface pack (FaceX InsightFace Loader or another pack's loader); its SCRFD detector is used "
            "when backend is 'insightface'",
        ),
    ]


def _detector(node: str, backend: str, face_analysis):
    if backend not in DETECTORS:
        raise FaceXNodeError(f"{node} (input 'backend'): unknown detector {backend!r}; choose one of {', '.join(DETECTORS)}")
    if backend == "insightface":
        if face_analysis is None:
            raise FaceXNodeError(
                f"{node} (input 'face_analysis'): backend 'insightface' needs a FACE_ANALYSIS connected (FaceX InsightFace "
                f"Loader, antelopev2 or buffalo_l); or pick backend mediapipe or dlib, which need no model files"
            )
        try:
            return insightface_onnx.detector_from_face_analysis(face_analysis)
        except ValueError as e:
            raise _fail(node, e, "face_analysis") from e
    try:
        return make_detector(DETECTORS[backend])
    except Exception as e:
        raise _fail(node, e, "backend") from e


def _crop_size(node: str, value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 16:
        raise FaceXNodeError(f"{node} (input 'crop_size'): {value!r} is not a crop size; use one of {', '.join(map(str, CROP_SIZES))}")
    return size


def crops_for(node: str, crops: torch.Tensor, rep: FaceRepresentation, input_name: str = "crops") -> torch.Tensor:
    """ComfyUI IMAGE crops (B, S, S, 3) -> (B, 3, S, S) checked against the representation."""
    if not isinstance(crops, torch.Tensor) or crops.dim() != 4 or crops.shape[-1] not in (1, 3, 4):
        raise FaceXNodeError(f"{node} (input '{input_name}'): expected an IMAGE batch (B, H, W, C), got {getattr(crops, 'shape', type(crops).__name__)}")
    x = crops[..., :3] if crops.shape[-1] != 1 else crops.expand(-1, -1, -1, 3)
    x = x.permute(0, 3, 1, 2).float().cpu().contiguous()
    if x.shape[0] != rep.batch_size:
        raise FaceXNodeError(
            f"{node} (input '{input_name}'): {x.shape[0]} crop image(s) but the representation holds {rep.batch_size} face(s); "
            f"connect the crops output of the same FaceX Detect & Align / FaceX Decompose node as the representation"
        )
    if tuple(x.shape[-2:]) != (rep.crop_size, rep.crop_size):
        raise FaceXNodeError(
            f"{node} (input '{input_name}'): the crops are {x.shape[-1]}x{x.shape[-2]} px but the representation was aligned at "
            f"{rep.crop_size}x{rep.crop_size}; connect the aligned crops themselves (not a resized copy)"
        )
    return x


def _representation(node: str, rep) -> FaceRepresentation:
    if not isinstance(rep, FaceRepresentation):
        raise FaceXNodeError(f"{node} (input 'representation'): expected a FaceX face representation, got {type(rep).__name__}")
    return rep


def extractor_for(node: str, family: str, model):
    """The connected model (checked to be of ``family``) or the embedded backend of that family."""
    input_name, _, what, loader = MODEL_INPUTS[family]
    if model is None:
        name = EMBEDDED_EXTRACTORS[family]
        try:
            return REGISTRY[family][name].factory()
        except Exception as e:
            raise _fail(node, e, input_name) from e
    got = getattr(model, "family", None)
    if got != family or not callable(model):
        raise FaceXNodeError(
            f"{node} (input '{input_name}'): the connected object ({getattr(model, 'name', type(model).__name__)}) is a "
            f"{got or 'non-FaceX'} model, not a {what}; connect a {loader}"
        )
    return model


def _run(node: str, extractor, crops: torch.Tensor, rep: FaceRepresentation, input_name: str = "") -> FaceRepresentation:
    memory.load(extractor)
    try:
        return run_extractor(extractor, crops, rep, list(range(rep.batch_size)), rep.batch_size)
    except Exception as e:
        raise _fail(node, e, input_name) from e


# ---- detection / all-in-one -----------------------------------------------------------------------


class FaceXDetectAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXDetectAlign",
            display_name="FaceX Detect & Align",
            category=CATEGORY,
            description=(
                "Finds the faces, aligns each to a canonical head crop (FFHQ-like: hair, ears, some neck) and starts a face "
                "representation with the crop transform, five landmarks and the 478-point MediaPipe mesh. Connect the "
                "Identity / Parse / Motion / Gaze nodes after it, or use FaceX Decompose for everything at once."
            ),
            inputs=[
                _image_input(),
                *_detect_inputs(),
                io.Boolean.Input(
                    "dense_landmarks",
                    default=True,
                    optional=True,
                    tooltip="also run the 478-point MediaPipe mesh on each crop (the embedded parse, motion and gaze backends "
                    "read it); off: detection and alignment only",
                ),
            ],
            outputs=[
                FaceXRepresentation.Output(display_name="representation", tooltip="one entry per chosen face"),
                io.Image.Output(display_name="crops", tooltip="the aligned head crops, one per face"),
            ],
        )

    @classmethod
    def execute(cls, image, backend, crop_size, face_choice, index, min_face_size, face_analysis=None,
                dense_landmarks=True) -> io.NodeOutput:
        node = "FaceX Detect & Align"
        det = _detector(node, backend, face_analysis)
        memory.load(det)
        try:
            result = decompose_faces(image, det, extractors=[], crop_size=_crop_size(node, crop_size), face_choice=face_choice,
                                     index=index, min_face=min_face_size, landmarks=bool(dense_landmarks))
        except Exception as e:
            raise _fail(node, e, "image") from e
        return io.NodeOutput(result.rep, result.crops_bhwc)


class FaceXDecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        model_inputs = [
            sock.Input(name, optional=True, tooltip=f"optional {what} from the {loader}; unconnected: the embedded "
                       f"{EMBEDDED_EXTRACTORS[family]} backend")
            for family, (name, sock, what, loader) in MODEL_INPUTS.items()
        ]
        return io.Schema(
            node_id="FaceXDecompose",
            display_name="FaceX Decompose",
            category=CATEGORY,
            description=(
                "FORD in one node: detect and align the faces, then read identity, region masks, pose/expression and gaze "
                "(and region CLIP features when a CLIP vision model is connected). Without model inputs it runs the embedded "
                "backends, which need no downloads."
            ),
            inputs=[
                _image_input(),
                *_detect_inputs(),
                *model_inputs,
                io.ClipVision.Input("clip_vision", optional=True, tooltip="CLIP vision model (ViT-L/14 in the paper) for region "
                                    "appearance features; unconnected: no region features"),
            ],
            outputs=[
                FaceXRepresentation.Output(display_name="representation", tooltip="the decomposed faces"),
                io.Image.Output(display_name="crops", tooltip="the aligned head crops, one per face"),
                io.Image.Output(display_name="preview", tooltip="landmarks and pose axes | region colours, per face"),
            ],
        )

    @classmethod
    def execute(cls, image, backend, crop_size, face_choice, index, min_face_size, face_analysis=None, identity_model=None,
                parser=None, motion_model=None, gaze_model=None, clip_vision=None) -> io.NodeOutput:
        node = "FaceX Decompose"
        det = _detector(node, backend, face_analysis)
        given = {"identity": identity_model, "parse": parser, "motion": motion_model, "gaze": gaze_model}
        extractors = [extractor_for(node, family, given[family]) for family in EMBEDDED_EXTRACTORS]
        if clip_vision is not None:
            extractors.append(_clip_extractor(clip_vision))  # ComfyUI's CLIP vision loads itself
        memory.load(det, *extractors)
        try:
            result = decompose_faces(image, det, extractors=extractors, crop_size=_crop_size(node, crop_size),
                                     face_choice=face_choice, index=index, min_face=min_face_size)
        except Exception as e:
            raise _fail(node, e, "image") from e
        preview = decomposition_preview(result.crops, result.rep)
        return io.NodeOutput(result.rep, result.crops_bhwc, preview)


# ---- one family at a time ------------------------------------------------------------------------


def _family_node(family: str, node_id: str, display: str, description: str):
    input_name, sock, what, loader = MODEL_INPUTS[family]

    class _Node(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=node_id,
                display_name=display,
                category=CATEGORY,
                description=description,
                inputs=[
                    FaceXRepresentation.Input("representation", tooltip="faces from FaceX Detect & Align (or any FORD node)"),
                    io.Image.Input("crops", tooltip="the aligned crops that came with the representation"),
                    sock.Input(input_name, optional=True, tooltip=f"optional {what} from the {loader}; unconnected: the "
                               f"embedded {EMBEDDED_EXTRACTORS[family]} backend (no downloads)"),
                ],
                outputs=[FaceXRepresentation.Output(display_name="representation", tooltip=f"the input faces plus their {family} part")],
            )

        @classmethod
        def execute(cls, representation, crops, **models) -> io.NodeOutput:
            rep = _representation(display, representation)
            x = crops_for(display, crops, rep)
            extractor = extractor_for(display, family, models.get(input_name))
            if rep.landmarks is None and getattr(extractor, "name", "") == EMBEDDED_EXTRACTORS[family] and family != "identity":
                # the embedded parse / motion / gaze backends read the dense mesh
                rep = _run(display, REGISTRY["landmarks"][LANDMARKS_BACKEND].factory(), x, rep, "crops")
            return io.NodeOutput(_run(display, extractor, x, rep, input_name))

    _Node.__name__ = _Node.__qualname__ = node_id
    return _Node


FaceXIdentity = _family_node(
    "identity", "FaceXIdentity", "FaceX Identity",
    "Adds the identity embedding (and, with ArcFace, the feature map before it) to each face. Embedded: dlib's ResNet (128-d).",
)
FaceXParse = _family_node(
    "parse", "FaceXParse", "FaceX Parse Regions",
    "Adds soft region masks (skin, brows, eyes, nose, lips, ears, hair, neck, cloth, background) in crop space. "
    "Embedded: polygons of the MediaPipe mesh plus person segmentation; BiSeNet with the parser input.",
)
FaceXMotion = _family_node(
    "motion", "FaceXMotion", "FaceX Motion",
    "Adds head pose (yaw, pitch, roll) and expression; with Deep3DFaceRecon also texture and lighting. Embedded: PnP of a "
    "generic head on the MediaPipe mesh and a mesh expression descriptor.",
)
FaceXGaze = _family_node(
    "gaze", "FaceXGaze", "FaceX Gaze",
    "Adds gaze (pitch, yaw). Embedded: iris position within the eye from the MediaPipe mesh; L2CS-Net with the gaze model input.",
)


def _clip_extractor(clip_vision):
    return clip_regions.make_region_extractor(lambda c: clip_vision.encode_image(c.permute(0, 2, 3, 1)), "clip_vision")


class FaceXRegionFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXRegionFeatures",
            display_name="FaceX Region Features (CLIP)",
            category=CATEGORY,
            description="Adds the paper's region appearance: CLIP vision patch tokens of each crop, pooled under each region "
            "mask. Needs region masks (FaceX Parse Regions or FaceX Decompose first).",
            inputs=[
                FaceXRepresentation.Input("representation", tooltip="faces with region masks"),
                io.Image.Input("crops", tooltip="the aligned crops that came with the representation"),
                io.ClipVision.Input("clip_vision", tooltip="a CLIP vision model (Load CLIP Vision); the paper uses ViT-L/14"),
            ],
            outputs=[FaceXRepresentation.Output(display_name="representation", tooltip="the input faces plus region features and CLIP tokens")],
        )

    @classmethod
    def execute(cls, representation, crops, clip_vision) -> io.NodeOutput:
        node = "FaceX Region Features"
        rep = _representation(node, representation)
        x = crops_for(node, crops, rep)
        if clip_vision is None or not callable(getattr(clip_vision, "encode_image", None)):
            raise FaceXNodeError(f"{node} (input 'clip_vision'): connect a CLIP vision model (Load CLIP Vision)")
        return io.NodeOutput(_run(node, _clip_extractor(clip_vision), x, rep, "clip_vision"))


# ---- looking at a representation -----------------------------------------------------------------


class FaceXRegionMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXRegionMasks",
            display_name="FaceX Region Masks",
            category=CATEGORY,
            description="The region mask of each face in crop space (use with the aligned crops, e.g. for inpainting), and a "
            "colour picture of all regions.",
            inputs=[
                FaceXRepresentation.Input("representation", tooltip="faces with region masks (FaceX Decompose or FaceX Parse Regions)"),
                io.Combo.Input(
                    "region",
                    options=list(REGION_GROUPS),
                    default="face",
                    tooltip=f"which region: face = {' + '.join(FACE_REGIONS)}; head = face + ears + hair; or a single region",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="(faces, S, S) soft mask in crop space"),
                io.Image.Output(display_name="preview", tooltip="every region in its own colour"),
            ],
        )

    @classmethod
    def execute(cls, representation, region) -> io.NodeOutput:
        node = "FaceX Region Masks"
        rep = _representation(node, representation)
        if rep.region_masks is None:
            raise FaceXNodeError(f"{node} (input 'representation'): it has no region masks; run FaceX Parse Regions or FaceX Decompose first")
        if region not in REGION_GROUPS:
            raise FaceXNodeError(f"{node} (input 'region'): unknown region {region!r}; choose one of {', '.join(REGION_GROUPS)}")
        idx = region_indices(REGION_GROUPS[region])
        mask = rep.region_masks[:, idx].float().sum(1).clamp(0, 1).cpu()
        return io.NodeOutput(mask, region_colour_map(rep.region_masks.cpu()))


class FaceXPreviewFace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXPreviewFace",
            display_name="FaceX Preview Face",
            category=CATEGORY,
            description="Draws the landmarks (dense mesh grey, five alignment points yellow) and the head pose axes (red right, "
            "green up, blue forward) on the crops; with region masks the regions are shown beside them.",
            inputs=[
                io.Image.Input("crops", tooltip="the aligned crops (or generated crops of the same faces)"),
                FaceXRepresentation.Input("representation", tooltip="the faces to draw"),
            ],
            outputs=[io.Image.Output(display_name="preview", tooltip="annotated crops")],
        )

    @classmethod
    def execute(cls, crops, representation) -> io.NodeOutput:
        node = "FaceX Preview Face"
        rep = _representation(node, representation)
        x = crops_for(node, crops, rep)
        return io.NodeOutput(decomposition_preview(x, rep) if rep.region_masks is not None else annotate(x, rep))


# ---- paste-back ------------------------------------------------------------------------------------


class FaceXPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FaceXPasteBack",
            display_name="FaceX Paste Back",
            category=CATEGORY,
            description="Puts generated crops back into the photo, undoing the alignment, with a feathered edge; only the area "
            "the crop covers changes. One crop per face, or several crops of one face (each into its own copy of the photo).",
            inputs=[
                io.Image.Input("image", tooltip="the photo the representation was decomposed from"),
                io.Image.Input("crops", tooltip="generated crops (any square size; rescaled to the alignment)"),
                FaceXRepresentation.Input("representation", tooltip="the decomposition of 'image' (its crop transforms)"),
                io.Int.Input("feather", default=16, min=0, max=256, tooltip="soft edge width in crop px (of the aligned crop size)"),
                io.Boolean.Input("colour_match", default=False, tooltip="match the generated face's mean/std colour to the photo's "
                                 "inside the face (region masks when present, else an ellipse from the landmarks)"),
                io.Mask.Input("mask", optional=True, tooltip="optional crop-space mask of what to paste (e.g. FaceX Region Masks "
                              "'head'); unconnected: the whole crop"),
            ],
            outputs=[io.Image.Output(tooltip="the photo(s) with the crops pasted in")],
        )

    @classmethod
    def execute(cls, image, crops, representation, feather, colour_match, mask=None) -> io.NodeOutput:
        node = "FaceX Paste Back"
        rep = _representation(node, representation)
        if not isinstance(crops, torch.Tensor) or crops.dim() != 4:
            raise FaceXNodeError(f"{node} (input 'crops'): expected an IMAGE batch, got {getattr(crops, 'shape', type(crops).__name__)}")
        if tuple(int(v) for v in rep.image_hw[0]) != tuple(image.shape[1:3]):
            h, w = (int(v) for v in rep.image_hw[0])
            raise FaceXNodeError(
                f"{node} (input 'image'): the photo is {image.shape[2]}x{image.shape[1]} px but the representation was decomposed "
                f"from a {w}x{h} photo; connect the same photo"
            )
        face_mask = None
        if rep.region_masks is not None:
            face_mask = rep.region_masks[:, region_indices(FACE_REGIONS)].sum(1).clamp(0, 1)
        try:
            out = paste_back(image, crops, rep.affine, feather_px=float(feather), colour_match=bool(colour_match), mask=mask,
                             face_mask=face_mask, landmarks5=rep.landmarks5, crop_size=rep.crop_size)
        except Exception as e:
            raise _fail(node, e, "crops") from e
        return io.NodeOutput(out)


NODES = [
    FaceXDetectAlign,
    FaceXDecompose,
    FaceXIdentity,
    FaceXParse,
    FaceXMotion,
    FaceXGaze,
    FaceXRegionFeatures,
    FaceXRegionMasks,
    FaceXPreviewFace,
    FaceXPasteBack,
]
