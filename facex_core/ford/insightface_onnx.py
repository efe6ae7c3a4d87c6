"""insightface model packs (antelopev2, buffalo_l) run on onnxruntime with FaceX's own thin code.

The `insightface` package is never imported: installed normally it drags a second onnxruntime and
an OpenCV without cascades into the user's ComfyUI (ARCHITECTURE.md, "One environment"). What this
module relies on in the real files (checked against insightface's model_zoo code):

SCRFD detectors (scrfd_10g_bnkps.onnx in antelopev2, det_10g.onnx in buffalo_l)
  - one input, 'input.1', shape (1, 3, H, W) with H, W fixed or dynamic (dynamic in det_10g;
    FaceX then uses det_size, 640x640 by default); RGB, (x - 127.5) / 128; the image is scaled to fit
    and pasted at the top-left of a zero canvas;
  - 9 outputs in this order: scores for strides 8, 16, 32 (rows x 1), box distances for 8, 16, 32
    (rows x 4), keypoint distances for 8, 16, 32 (rows x 10), rows = (H/s)*(W/s)*2 (two anchors per
    location, anchors of one location consecutive, locations row-major); det_10g names them
    '448', '471', '494' / '451', '474', '497' / '454', '477', '500', shapes (12800|3200|800, k) at
    640x640. Some exports add a leading batch dim (1, rows, k); 6 / 10 / 15-output variants (no
    keypoints, or strides up to 128 with one anchor) are decoded too. Output names are not relied on.
  - decode: centre = (col, row) * stride; box = centre -/+ distance * stride (left, top, right,
    bottom); keypoint k = centre + distance[2k:2k+2] * stride; score threshold 0.5, NMS IoU 0.4.
  - keypoints are listed image-left eye first; FaceX's Detection order starts with the subject's
    left eye, so they are swapped on the way out (resnet.SWAP_LEFT_RIGHT_5).
ArcFace recognisers (glintr100.onnx in antelopev2 = IResNet-100, w600k_r50.onnx in buffalo_l = IResNet-50)
  - one input (N, 3, 112, 112) (batch dynamic; 'input.1' in w600k_r50), RGB, (x - 127.5) / 127.5
    (graphs converted from MXNet normalise inside: their first nodes are named Sub*/Mul*, and they
    get raw 0..255 input);
  - one output (N, 512) ('683' in w600k_r50), the un-normalised embedding; FaceX L2-normalises it;
  - the crop is the standard ArcFace 112x112 5-point template (similarity fit);
  - the paper's identity feature is the map before the embedding: the graph ends with
    ... -> BatchNormalization (C=512, 7x7) -> Flatten -> [Dropout] -> Gemm ('fc') -> BatchNormalization
    ('features'). FaceX walks back from the output through those single-input tail ops to the
    Flatten/Reshape and exposes its input (N, 512, 7, 7) as a second graph output, edited in memory
    (``identity_map``). Without the ONNX protobuf classes (the `onnx` package) only the embedding is
    produced, and the backend name says ``embedding_only``.
Other files in the packs (1k3d68, 2d106det, genderage) are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..representation import FaceRepresentation
from .base import BackendInfo, Detection, register
from .onnx_session import (
    ModelFileError,
    ModelFileNotFound,
    cached,
    load_model_proto,
    onnx_proto,
    open_session,
    resolve_model_file,
)
from .resnet import (
    ARCFACE_TEMPLATE_112,
    ARCFACE_TEMPLATE_112_INSIGHTFACE_ORDER,
    SWAP_LEFT_RIGHT_5,
    check_crops,
    fit_transform,
    warp_crops,
    warp_to_template,
)

log = logging.getLogger("facex")

LICENCE = "insightface model packs: non-commercial research use only (insightface model licence); code here: the pack's licence"

# What each pack holds (file name -> insightface task name). Files not listed are routed by their graph.
PACK_FILES: dict[str, dict[str, str]] = {
    "antelopev2": {
        "scrfd_10g_bnkps.onnx": "detection",
        "glintr100.onnx": "recognition",
        "1k3d68.onnx": "landmark_3d_68",
        "2d106det.onnx": "landmark_2d_106",
        "genderage.onnx": "genderage",
    },
    "buffalo_l": {
        "det_10g.onnx": "detection",
        "w600k_r50.onnx": "recognition",
        "1k3d68.onnx": "landmark_3d_68",
        "2d106det.onnx": "landmark_2d_106",
        "genderage.onnx": "genderage",
    },
}
KNOWN_FILES: dict[str, str] = {name: task for pack in PACK_FILES.values() for name, task in pack.items()}
DETECTOR_FILES: tuple[str, ...] = tuple(n for n, t in KNOWN_FILES.items() if t == "detection")
RECOGNITION_FILES: tuple[str, ...] = tuple(n for n, t in KNOWN_FILES.items() if t == "recognition")

# number of SCRFD outputs -> (strides, anchors per location, has keypoints)
SCRFD_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
SCRFD_GROUP_WIDTH = (1, 4, 10)  # scores, box distances, keypoint distances

# ops an ArcFace graph may have between the pre-embedding feature map and its output
_ARCFACE_TAIL_OPS = {
    "BatchNormalization", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div", "Dropout", "Identity",
    "Cast", "Squeeze", "Unsqueeze", "Flatten", "Reshape",
}


def _dim_may_be(dim, value: int) -> bool:
    """An onnxruntime shape entry is an int, a symbolic name (str) or None; only an int can rule a value out."""
    return not isinstance(dim, int) or dim == value


def _describe_io(args) -> str:
    return ", ".join(f"{a.name!r} {list(a.shape)}" for a in args) or "none"


# =============================================================================================
# SCRFD detection
# =============================================================================================


class ScrfdOnnx:
    """An SCRFD detector; also usable where insightface's detection model is expected
    (``taskname``, ``input_size``, ``prepare``, ``detect(img_bgr) -> (dets, kpss)``)."""

    taskname = "detection"

    def __init__(self, model_file, providers=None, det_size=(640, 640), det_thresh: float = 0.5, nms_thresh: float = 0.4):
        path = Path(model_file)
        self.model_file = str(path)
        self.providers = providers
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        what = "it is not an SCRFD face detector (antelopev2 scrfd_10g_bnkps.onnx / buffalo_l det_10g.onnx)"
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or not _dim_may_be(inputs[0].shape[1], 3):
            raise ModelFileError(f"{path.name}: expected one image input (1, 3, H, W); this file has inputs {_describe_io(inputs)}; {what}")
        if len(outputs) not in SCRFD_LAYOUTS:
            raise ModelFileError(
                f"{path.name}: has {len(outputs)} outputs ({_describe_io(outputs[:4])}{' ...' if len(outputs) > 4 else ''}); SCRFD "
                f"detectors have 6, 9, 10 or 15 (scores, boxes[, keypoints] per stride); {what}"
            )
        self.strides, self.num_anchors, self.use_kps = SCRFD_LAYOUTS[len(outputs)]
        fmc = len(self.strides)
        for i, out in enumerate(outputs):
            want = SCRFD_GROUP_WIDTH[i // fmc]
            last = out.shape[-1] if out.shape else None
            if isinstance(last, int) and last != want:
                raise ModelFileError(f"{path.name}: output {i} ({out.name!r}) has shape {list(out.shape)}, expected (rows, {want}); {what}")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        shape = inputs[0].shape
        self.fixed_size = (shape[3], shape[2]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.input_size = self.fixed_size or tuple(det_size)  # (width, height), insightface's order
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        self.input_mean, self.input_std = 127.5, 128.0
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def session(self):
        """Looked up in the session cache on each use (not held), so ``release_all()`` really frees it."""
        return open_session(self.model_file, self.providers, what="an SCRFD face detector")

    # insightface-compatible API ----------------------------------------------------------
    def prepare(self, ctx_id=0, input_size=None, det_thresh=None, nms_thresh=None, **_):
        if input_size is not None and self.fixed_size is None:
            self.input_size = tuple(input_size)
        if det_thresh is not None:
            self.det_thresh = det_thresh
        if nms_thresh is not None:
            self.nms_thresh = nms_thresh

    def detect(self, img, threshold=None, input_size=None, max_num=0, metric="default"):
        """insightface's call: BGR uint8 image -> (dets (N,5) x0,y0,x1,y1,score; kpss (N,5,2) or None), image-left eye first."""
        return self.detect_rgb(np.ascontiguousarray(np.asarray(img)[..., ::-1]), threshold, input_size, max_num, metric)

    # FaceX API ---------------------------------------------------------------------------
    def detect_rgb(self, image: np.ndarray, threshold=None, input_size=None, max_num=0, metric="default"):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"face detection needs an RGB image (H, W, 3), got shape {image.shape}")
        threshold = self.det_thresh if threshold is None else threshold
        width, height = self.fixed_size or (tuple(input_size) if input_size is not None else self.input_size)
        ih, iw = image.shape[:2]
        if ih / iw > height / width:
            new_h, new_w = height, max(1, int(height * iw / ih))
        else:
            new_w, new_h = width, max(1, int(width * ih / iw))
        scale = new_h / ih
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        canvas = torch.zeros(1, 3, height, width)
        canvas[:, :, :new_h, :new_w] = x
        blob = ((canvas - self.input_mean) / self.input_std).numpy().astype(np.float32)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        outs = [o[0] if o.ndim == 3 else o for o in outs]

        scores, boxes, kpss = [], [], []
        fmc = len(self.strides)
        for i, stride in enumerate(self.strides):
            gh, gw = height // stride, width // stride
            rows = gh * gw * self.num_anchors
            for g in range(3 if self.use_kps else 2):
                got = outs[i + g * fmc]
                if got.shape[0] != rows or got.shape[-1] != SCRFD_GROUP_WIDTH[g]:
                    raise ModelFileError(
                        f"{Path(self.model_file).name}: output {self.output_names[i + g * fmc]!r} for stride {stride} has shape "
                        f"{list(got.shape)}, expected ({rows}, {SCRFD_GROUP_WIDTH[g]}) at input {width}x{height}; "
                        f"this is not an SCRFD detector with the antelopev2/buffalo_l output layout"
                    )
            centres = self._anchor_centres(gh, gw, stride)
            s = outs[i].reshape(-1)
            keep = np.where(s >= threshold)[0]
            if keep.size == 0:
                continue
            d = outs[i + fmc][keep] * stride
            c = centres[keep]
            scores.append(s[keep])
            boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=-1))
            if self.use_kps:
                k = outs[i + 2 * fmc][keep].reshape(-1, 5, 2) * stride
                kpss.append(c[:, None, :] + k)
        if not scores:
            return np.zeros((0, 5), np.float32), (np.zeros((0, 5, 2), np.float32) if self.use_kps else None)
        score = np.concatenate(scores)
        box = np.concatenate(boxes) / scale
        order = np.argsort(-score, kind="stable")
        keep = nms(box[order], score[order], self.nms_thresh)
        order = order[keep]
        det = np.concatenate([box[order], score[order, None]], axis=1).astype(np.float32)
        kps = (np.concatenate(kpss) / scale)[order].astype(np.float32) if self.use_kps else None
        if max_num and det.shape[0] > max_num:
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            offset = ((det[:, 0] + det[:, 2]) / 2 - iw / 2) ** 2 + ((det[:, 1] + det[:, 3]) / 2 - ih / 2) ** 2
            value = area if metric == "max" else area - 2.0 * offset  # insightface favours centred faces
            pick = np.argsort(-value, kind="stable")[:max_num]
            det = det[pick]
            kps = kps[pick] if kps is not None else None
        return det, kps

    def _anchor_centres(self, gh: int, gw: int, stride: int) -> np.ndarray:
        key = (gh, gw, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:gh, :gw]
            c = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            self._centres[key] = np.repeat(c, self.num_anchors, axis=0)
        return self._centres[key]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    """Greedy non-maximum suppression; indices into ``boxes`` in descending score order."""
    x0, y0, x1, y1 = boxes.T
    area = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_thresh]
    return keep


class InsightFaceDetector:
    """FaceX ``Detector`` over an insightface-style detection model (ours or insightface's own)."""

    def __init__(self, det_model, name: Optional[str] = None, face_analysis=None):
        self.det_model = det_model
        self.face_analysis = face_analysis
        file = getattr(det_model, "model_file", None) if det_model is not None else None
        self.name = name or f"insightface_scrfd:{Path(file).stem if file else type(det_model or face_analysis).__name__}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: detect() needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        if isinstance(self.det_model, ScrfdOnnx):
            det, kps = self.det_model.detect_rgb(image)
        elif self.det_model is not None:
            bgr = np.ascontiguousarray(image[..., ::-1])
            kwargs = {"max_num": 0}
            if getattr(self.det_model, "input_size", None) is None:  # insightface model never prepared
                kwargs["input_size"] = (640, 640)
            det, kps = self.det_model.detect(bgr, **kwargs)
        else:
            faces = self.face_analysis.get(np.ascontiguousarray(image[..., ::-1]))
            det = np.array([[*f.bbox[:4], f.det_score if f.det_score is not None else 1.0] for f in faces], np.float32).reshape(-1, 5)
            kps = np.array([f.kps for f in faces], np.float32).reshape(-1, 5, 2) if all(f.kps is not None for f in faces) else None
        if kps is None:
            raise ValueError(f"{self.name}: this detector gives no 5-point landmarks, which FaceX alignment needs; use an SCRFD *kps model (antelopev2 or buffalo_l)")
        return [
            Detection(box=np.asarray(det[i, :4], np.float32), score=float(det[i, 4]), landmarks5=np.asarray(kps[i], np.float32)[list(SWAP_LEFT_RIGHT_5)])
            for i in range(det.shape[0])
        ]


# =============================================================================================
# ArcFace recognition
# =============================================================================================


def find_pre_embedding_tensor(model) -> Optional[str]:
    """Name of the tensor feeding the Flatten/Reshape before the embedding FC, walking back from the output."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    name = graph.output[0].name
    for _ in range(16):
        node = producers.get(name)
        if node is None or node.op_type not in _ARCFACE_TAIL_OPS:
            return None
        data = [i for i in node.input if i and i not in constants]
        if node.op_type in ("Flatten", "Reshape"):
            return data[0] if data else None
        if len(data) != 1:
            return None
        name = data[0]
    return None


def _with_extra_output(model, tensor_name: str) -> bytes:
    proto = onnx_proto()
    edited = proto.ModelProto()
    edited.CopyFrom(model)
    out = edited.graph.output.add()
    out.name = tensor_name
    out.type.tensor_type.elem_type = model.graph.input[0].type.tensor_type.elem_type or 1  # same float type as the input
    return edited.SerializeToString()


def _arcface_normalisation(model) -> tuple[float, float]:
    """(mean, std) of the input: MXNet-converted graphs normalise inside (first nodes Sub*/Mul*)."""
    if model is None:
        return 127.5, 127.5
    names = [n.name for n in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if (has_sub and has_mul) else (127.5, 127.5)


class ArcFaceOnnx:
    """ArcFace recogniser: a FaceX identity ``Extractor`` and an insightface-style recognition model
    (``taskname``, ``input_size``, ``prepare``, ``get(img, face)``, ``get_feat(imgs)``)."""

    taskname = "recognition"
    family = "identity"

    def __init__(self, model_file, providers=None, identity_map: bool = True):
        path = Path(model_file)
        self.model_file = str(path)
        self.providers = providers
        what = "it is not an ArcFace recognition model (antelopev2 glintr100.onnx / buffalo_l w600k_r50.onnx)"
        model = load_model_proto(path)  # None without the ONNX protobuf classes
        self.input_mean, self.input_std = _arcface_normalisation(model)
        map_name, self.map_unavailable = None, None
        if not identity_map:
            self.map_unavailable = "identity_map not requested"
        elif model is None:
            self.map_unavailable = "the `onnx` package is not installed, so the graph cannot be edited to expose the pre-embedding map"
        else:
            map_name = find_pre_embedding_tensor(model)
            if map_name is None:
                self.map_unavailable = "no Flatten/Reshape before the embedding was found in the graph"
        self.map_output = map_name
        session = self._open(lambda: _with_extra_output(model, map_name))  # the graph parsed above, used once
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(inputs) != 1 or len(shape) != 4 or shape[2:] != [112, 112] or not _dim_may_be(shape[1], 3):
            raise ModelFileError(f"{path.name}: expected one (N, 3, 112, 112) face input; this file has inputs {_describe_io(inputs)}; {what}")
        if len(outputs[0].shape) != 2:
            raise ModelFileError(f"{path.name}: expected an (N, D) embedding output; this file's output is {_describe_io(outputs[:1])}; {what}")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        self.embedding_output = outputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_size = (112, 112)
        self.input_shape = shape
        self.name = f"insightface_arcface:{path.stem}" + ("" if map_name else ":embedding_only")
        if identity_map and map_name is None:
            log.warning("FaceX: %s gives the 512-d embedding only, no identity_map: %s", path.name, self.map_unavailable)

    @property
    def session(self):
        """Looked up in the session cache on each use (not held), so ``release_all()`` really frees it; a
        re-open parses the file again rather than keep the 250 MB edited graph in memory."""
        return self._open(lambda: _with_extra_output(load_model_proto(self.model_file), self.map_output))

    def _open(self, edited_graph):
        edited = self.map_output is not None
        return open_session(self.model_file, self.providers, model_bytes=edited_graph if edited else None,
                            variant=f"+{self.map_output}" if edited else "", what="an ArcFace recognition model")

    # FaceX API ---------------------------------------------------------------------------
    def embed(self, aligned: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """ArcFace-aligned RGB crops (B,3,112,112) in [0,1] -> (L2-normalised embedding (B,D), map (B,C,h,w) or None)."""
        x = ((aligned.detach().float().cpu() * 255.0 - self.input_mean) / self.input_std).numpy().astype(np.float32)
        names = [self.embedding_output] + ([self.map_output] if self.map_output else [])
        chunks = [x[i : i + 1] for i in range(x.shape[0])] if self.fixed_batch == 1 else [x]
        embs, maps = [], []
        session = self.session
        for chunk in chunks:
            outs = session.run(names, {self.input_name: chunk})
            embs.append(outs[0])
            if self.map_output:
                maps.append(outs[1])
        emb = torch.from_numpy(np.concatenate(embs)).float()
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
        fmap = None
        if maps:
            fmap = torch.from_numpy(np.concatenate(maps)).float()
            if fmap.dim() != 4:
                log.warning("FaceX: %s pre-embedding tensor %r has shape %s, not (N,C,h,w); identity_map skipped", Path(self.model_file).name, self.map_output, tuple(fmap.shape))
                fmap = None
        return emb, fmap

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        aligned = warp_to_template(crops.detach().float().cpu(), rep.landmarks5, ARCFACE_TEMPLATE_112, 112)
        emb, fmap = self.embed(aligned)
        out = {"identity": emb}
        if fmap is not None:
            out["identity_map"] = fmap
        return out

    # insightface-compatible API ----------------------------------------------------------
    def prepare(self, ctx_id=0, **_):
        pass

    def get_feat(self, imgs) -> np.ndarray:
        """Raw embeddings of ArcFace-aligned BGR uint8 112x112 crops (as insightface's get_feat)."""
        if not isinstance(imgs, (list, tuple)):
            imgs = [imgs]
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(np.asarray(im)[..., ::-1])).permute(2, 0, 1).float() / 255.0 for im in imgs])
        raw = ((x * 255.0 - self.input_mean) / self.input_std).numpy().astype(np.float32)
        chunks = [raw[i : i + 1] for i in range(raw.shape[0])] if self.fixed_batch == 1 else [raw]
        session = self.session
        return np.concatenate([session.run([self.embedding_output], {self.input_name: c})[0] for c in chunks])

    def get(self, img, face):
        aligned = align_arcface_bgr(img, face.kps)
        face.embedding = self.get_feat([aligned]).flatten()
        return face.embedding


def align_arcface_bgr(img: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """insightface's norm_crop: a 112x112 uint8 crop from 5 points in insightface order (image-left eye first)."""
    image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    template = torch.tensor(ARCFACE_TEMPLATE_112_INSIGHTFACE_ORDER, dtype=torch.float32)
    m = fit_transform(torch.as_tensor(np.asarray(kps, np.float32))[None], template)
    out = warp_crops(image, m, 112)[0].permute(1, 2, 0)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


class ForeignRecognitionExtractor:
    """Identity extractor over another pack's insightface recognition model that exposes only
    ``get_feat`` (no model file FaceX can open): embedding only."""

    family = "identity"

    def __init__(self, rec_model, name: str):
        self.rec_model = rec_model
        self.name = name

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        aligned = warp_to_template(crops.detach().float().cpu(), rep.landmarks5, ARCFACE_TEMPLATE_112, 112)
        bgr = [(a.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()[..., ::-1].copy() for a in aligned]
        emb = torch.from_numpy(np.asarray(self.rec_model.get_feat(bgr), np.float32)).reshape(len(bgr), -1)
        return {"identity": emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)}


# =============================================================================================
# FaceAnalysis-compatible pack
# =============================================================================================


class Face(dict):
    """A detected face as insightface returns it: dict and attribute access, missing keys read as None."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __setattr__(self, name, value):
        self[name] = value

    @property
    def embedding_norm(self):
        return None if self.get("embedding") is None else float(np.linalg.norm(self["embedding"]))

    @property
    def normed_embedding(self):
        emb = self.get("embedding")
        return None if emb is None else emb / max(np.linalg.norm(emb), 1e-12)


def _route_by_graph(path: Path, providers) -> Optional[str]:
    """insightface's routing for files with unknown names: many outputs = detector, 112x112 input = recogniser."""
    session = open_session(path, providers, what="an insightface model")
    shape = session.get_inputs()[0].shape
    if len(session.get_outputs()) >= 5:
        return "detection"
    if len(shape) == 4 and shape[2:] == [112, 112]:
        return "recognition"
    return None


class OnnxFaceAnalysis:
    """Runs an insightface model pack folder (detection + recognition) on onnxruntime.

    Usable where insightface's ``FaceAnalysis`` is expected: ``models``, ``det_model``,
    ``prepare(ctx_id, det_thresh, det_size)`` and ``get(img_bgr) -> [Face(bbox, kps, det_score,
    embedding, normed_embedding)]``. Landmark and gender/age models of the packs are not run.
    """

    def __init__(self, pack_dir, providers=None, det_size=(640, 640), det_thresh: float = 0.5, identity_map: bool = True):
        pack_dir = Path(pack_dir)
        if not pack_dir.is_dir():
            raise ModelFileNotFound(
                f"insightface model pack {pack_dir.name!r} not found; looked in: {pack_dir.parent}. Put the pack folder "
                f"(antelopev2: scrfd_10g_bnkps.onnx + glintr100.onnx; buffalo_l: det_10g.onnx + w600k_r50.onnx) there."
            )
        self.model_dir = str(pack_dir)
        self.name = pack_dir.name
        self.providers = providers
        self.models: dict[str, object] = {}
        self.ignored: dict[str, str] = {}
        for file in sorted(pack_dir.glob("*.onnx")):
            task = KNOWN_FILES.get(file.name) or _route_by_graph(file, providers) or "unrecognised"
            if task not in ("detection", "recognition") or task in self.models:
                self.ignored[file.name] = task if task not in self.models else f"second {task} model"
                continue
            if task == "detection":
                self.models[task] = ScrfdOnnx(file, providers, det_size=det_size, det_thresh=det_thresh)
            else:
                self.models[task] = arcface_model(file, providers, identity_map=identity_map)
        if "detection" not in self.models:
            present = ", ".join(sorted(p.name for p in pack_dir.glob("*.onnx"))) or "no .onnx files"
            raise ModelFileNotFound(
                f"insightface model pack {pack_dir.name!r}: no face detector ({' or '.join(DETECTOR_FILES)}) in {pack_dir} "
                f"(found: {present}); put the complete pack there"
            )
        self.det_model = self.models["detection"]
        self.det_thresh = det_thresh
        self.det_size = tuple(det_size)

    def prepare(self, ctx_id=0, det_thresh=0.5, det_size=(640, 640)):
        self.det_thresh, self.det_size = det_thresh, tuple(det_size)
        self.det_model.prepare(ctx_id, input_size=det_size, det_thresh=det_thresh)

    def get(self, img, max_num=0, metric="default") -> list[Face]:
        det, kpss = self.det_model.detect(img, max_num=max_num, metric=metric)
        faces = []
        rec = self.models.get("recognition")
        for i in range(det.shape[0]):
            face = Face(bbox=det[i, :4], kps=None if kpss is None else kpss[i], det_score=det[i, 4])
            if rec is not None and face.kps is not None:
                rec.get(img, face)
            faces.append(face)
        return faces

    def __repr__(self):
        return f"OnnxFaceAnalysis({self.model_dir!r}, models={sorted(self.models)})"


def load_face_analysis(pack_dir, providers=None, det_size=(640, 640), det_thresh: float = 0.5, identity_map: bool = True) -> OnnxFaceAnalysis:
    """A FACE_ANALYSIS value for a pack folder such as models/insightface/models/antelopev2."""
    return OnnxFaceAnalysis(pack_dir, providers, det_size=det_size, det_thresh=det_thresh, identity_map=identity_map)


def detector_from_face_analysis(obj) -> InsightFaceDetector:
    """FaceX Detector from our OnnxFaceAnalysis or any insightface FaceAnalysis (duck-typed)."""
    models = getattr(obj, "models", None)
    det = models.get("detection") if isinstance(models, dict) else None
    det = det if det is not None else getattr(obj, "det_model", None)
    if det is None and not callable(getattr(obj, "get", None)):
        raise ValueError(
            f"the FACE_ANALYSIS input ({type(obj).__name__}) has no detection model (models['detection']) and no get(); "
            f"connect an insightface loader's output"
        )
    pack = Path(getattr(obj, "model_dir", "") or "").name
    file = getattr(det, "model_file", None)
    name = f"insightface_scrfd:{Path(file).stem}" if file else f"insightface_face_analysis:{pack or type(obj).__name__}"
    return InsightFaceDetector(det, name=name, face_analysis=obj)


def identity_from_face_analysis(obj, providers=None, identity_map: bool = True):
    """FaceX identity Extractor (ArcFace) from our OnnxFaceAnalysis or any insightface FaceAnalysis.

    A foreign recogniser whose model file FaceX can open is re-opened by FaceX (same file, so the
    same embedding, plus the pre-embedding map); otherwise its ``get_feat`` gives the embedding only.
    """
    models = getattr(obj, "models", None)
    rec = models.get("recognition") if isinstance(models, dict) else None
    if rec is None:
        raise ValueError(
            f"the FACE_ANALYSIS input ({type(obj).__name__}) has no recognition model (models['recognition']); load a pack "
            f"with an ArcFace model: antelopev2 (glintr100.onnx) or buffalo_l (w600k_r50.onnx)"
        )
    if isinstance(rec, ArcFaceOnnx):
        return rec
    file = getattr(rec, "model_file", None)
    if file and Path(file).is_file():
        if providers is None:
            session = getattr(rec, "session", None)
            providers = session.get_providers() if session is not None and hasattr(session, "get_providers") else None
        return arcface_model(file, providers, identity_map=identity_map)
    if callable(getattr(rec, "get_feat", None)):
        stem = Path(file).stem if file else type(rec).__name__
        return ForeignRecognitionExtractor(rec, name=f"insightface_arcface:{stem}:embedding_only")
    raise ValueError(f"the FACE_ANALYSIS recognition model ({type(rec).__name__}) has neither a model file nor get_feat(); FaceX cannot use it")


# =============================================================================================
# Registry
# =============================================================================================


def make_detector(path=None, folders: Sequence = (), providers=None, det_size=(640, 640), det_thresh: float = 0.5) -> InsightFaceDetector:
    file = resolve_model_file(path, DETECTOR_FILES, folders, "SCRFD face detector")
    return InsightFaceDetector(ScrfdOnnx(file, providers, det_size=det_size, det_thresh=det_thresh))


def arcface_model(path, providers=None, identity_map: bool = True) -> ArcFaceOnnx:
    """One ArcFaceOnnx per (file, providers, identity_map): parsing a 250 MB graph once is enough."""
    key = (tuple(providers) if isinstance(providers, (list, tuple)) else providers, identity_map)
    return cached("arcface", path, key, lambda: ArcFaceOnnx(path, providers, identity_map=identity_map))


def make_identity(path=None, folders: Sequence = (), providers=None, identity_map: bool = True) -> ArcFaceOnnx:
    file = resolve_model_file(path, RECOGNITION_FILES, folders, "ArcFace identity model")
    return arcface_model(file, providers, identity_map=identity_map)


register(
    BackendInfo(
        family="detect",
        name="insightface_scrfd",
        factory=make_detector,
        embedded=False,
        licence=LICENCE,
        description="SCRFD-10G face detector with 5 keypoints from an insightface pack, on onnxruntime (no insightface package)",
        files=DETECTOR_FILES,
    )
)
register(
    BackendInfo(
        family="identity",
        name="insightface_arcface",
        factory=make_identity,
        embedded=False,
        licence=LICENCE,
        description="ArcFace (IResNet-100 glintr100 / IResNet-50 w600k_r50): 512-d embedding and the 512x7x7 map before it (the paper's identity feature)",
        files=RECOGNITION_FILES,
    )
)
