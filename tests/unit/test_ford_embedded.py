"""Embedded (offline) FORD extractors on real photos: dlib identity, mediapipe parse / motion / gaze.

Photos (tests/support/faces.py): the astronaut (Eileen Collins, NASA, public domain) and Grace Hopper
(US Navy, public domain). Only these two real people are available offline, so "other people" in the
identity test is exactly one other person (each photo is the impostor for the other).

Faces go through the real embedded pipeline, ``facex_core.ford.decompose`` with the "embedded" set:
mediapipe detection -> alignment (facex_core.align) -> 478-point FaceMesh on the crop -> the
extractors under test.

Controlled edits of real photos (documented helpers below) stand in for photos we do not have:
- ``turn_features``: the eyes, nose and mouth pushed toward image right inside a fixed face outline
  (how a head turned toward image right looks in 2D);
- ``shift_irises``: both irises pushed sideways inside their eyes, corners fixed;
- ``open_mouth``: the lower face moved down from the lip line, the gap painted as a dark mouth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facex_core.ford import base as ford_base
from facex_core.ford import dlib_identity as DI
from facex_core.ford import mediapipe_extractors as ME
from facex_core.regions import REGION_INDEX, REGIONS
from facex_core.representation import RepresentationError
from support import faces

CROP = 512


# ---- the pipeline under test ------------------------------------------------------------------------


def analyse(name: str, image: np.ndarray) -> dict:
    """The embedded decomposition of one photo (largest face), cached per test session by name:
    facex_core.ford.decompose with its "embedded" backend set (mediapipe detection, alignment,
    FaceMesh landmarks, then parse / identity / motion / gaze — the extractors under test)."""
    if name not in _RUNS:
        from facex_core.ford.decompose import decompose_faces

        result = decompose_faces(image, detector="mediapipe", backends="embedded", crop_size=CROP)
        assert result.rep.batch_size == 1
        _RUNS[name] = {"crops": result.crops, "rep": result.rep}
    return _RUNS[name]


_RUNS: dict[str, dict] = {}


# ---- controlled edits of real photos ----------------------------------------------------------------


def _mesh(image: np.ndarray) -> np.ndarray:
    from facex_core.ford.mediapipe_detect import face_mesh_points

    meshes = face_mesh_points(image)
    assert meshes, "FaceMesh found no face in the test photo"
    return meshes[0].astype(np.float64)


def _bump(shape, centre, rx, ry):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    r2 = np.minimum(((xs - centre[0]) / rx) ** 2 + ((ys - centre[1]) / ry) ** 2, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * np.sqrt(r2)))).astype(np.float32), xs, ys


def _remap(image, map_x, map_y):
    import cv2

    return cv2.remap(image, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def turn_features(image: np.ndarray, fraction: float) -> np.ndarray:
    """Eyes, nose and mouth pushed toward image right by ``fraction`` of the face width (outline fixed)."""
    p = _mesh(image)
    centre = p[[33, 263, 1, 61, 291]].mean(0)
    rx, ry = (p[454, 0] - p[234, 0]) / 2 * 0.95, (p[152, 1] - p[10, 1]) / 2 * 0.95
    w, xs, ys = _bump(image.shape, centre, rx, ry)
    return _remap(image, xs - fraction * 2 * rx * w, ys)


def shift_irises(image: np.ndarray, fraction: float) -> np.ndarray:
    """Both irises pushed toward image right by ``fraction`` of the half eye width (eye corners fixed)."""
    p = _mesh(image)
    shift = np.zeros(image.shape[:2], np.float32)
    for outer, inner, iris in ((33, 133, 468), (263, 362, 473)):
        half = abs(p[inner, 0] - p[outer, 0]) / 2
        w, xs, ys = _bump(image.shape, p[iris], half * 0.85, half * 0.7)
        shift += fraction * half * w
    return _remap(image, xs - shift, ys)


def open_mouth(image: np.ndarray, gap_per_mouth_width: float = 0.5) -> np.ndarray:
    """The lower face moved down from the lip line by a gap, painted as a dark mouth interior."""
    p = _mesh(image)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    width = p[291, 0] - p[61, 0]
    gap = gap_per_mouth_width * width
    y_split, cx = (p[13, 1] + p[14, 1]) / 2, (p[291, 0] + p[61, 0]) / 2
    wx = np.clip(1.5 - np.abs(xs - cx) / (1.1 * width), 0, 1)
    out = _remap(image, xs, ys - gap * wx * np.clip((ys - y_split) / gap, 0, 1))
    inside = ((xs - cx) / (0.45 * width)) ** 2 + ((ys - y_split - gap / 2) / (gap / 2)) ** 2 <= 1
    out[inside] = (0.2 * out[inside] + np.array([25, 8, 8])).astype(np.uint8)
    return out


# ---- registry -------------------------------------------------------------------------------------


def test_backends_registered_as_embedded():
    expected = {("identity", "dlib_resnet"), ("parse", "mediapipe_mesh"), ("motion", "mesh_pnp"), ("gaze", "iris")}
    for family, name in expected:
        info = ford_base.REGISTRY[family].get(name)
        assert info is not None, f"{family}/{name} is not registered"
        assert info.embedded, f"{family}/{name} must be marked embedded"
        assert info.licence
    assert "non-commercial" in ford_base.REGISTRY["identity"]["dlib_resnet"].licence  # says why the 68-point model is not used
    assert isinstance(ME.EXPRESSION_DIM, int) and ME.EXPRESSION_DIM == len(ME.EXPRESSION_NAMES) >= 8


# ---- identity ---------------------------------------------------------------------------------------


def test_identity_unit_128_and_separates_the_two_people():
    a = faces.astronaut()
    h = faces.grace_hopper()
    runs = {
        "astronaut": analyse("astronaut", a),
        "astronaut_flip": analyse("astronaut_flip", faces.flip(a)),
        "astronaut_half": analyse("astronaut_half", faces.rescale(a, 0.5)),
        "astronaut_jpeg20": analyse("astronaut_jpeg20", faces.jpeg(a, 20)),
        "hopper": analyse("hopper", h),
        "hopper_flip": analyse("hopper_flip", faces.flip(h)),
        "hopper_jpeg20": analyse("hopper_jpeg20", faces.jpeg(h, 20)),
    }
    emb = {k: v["rep"].identity[0] for k, v in runs.items()}
    for k, e in emb.items():
        assert e.shape == (128,) and e.dtype == torch.float32
        assert abs(float(e.norm()) - 1.0) < 1e-4, f"{k}: identity not L2-normalised"
        assert runs[k]["rep"].backends["identity"] == "dlib_resnet"
    same = [float(emb[k] @ emb[person]) for person in ("astronaut", "hopper") for k in emb if k.startswith(person) and k != person]
    other = [float(emb[k] @ emb[j]) for k in emb for j in emb if k.startswith("astronaut") and j.startswith("hopper")]
    # Same person under flip / half size / JPEG q20: >= 0.97; the other person: clearly lower.
    assert min(same) > 0.97, same
    assert max(other) < min(same) - 0.05, (same, other)


@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_identity_chip_matches_dlibs_own_detector_pipeline(photo):
    """Our face box from landmarks5 gives the descriptor dlib's own pipeline (HOG detector + 5-point
    predictor on the full photo) gives: the box formula does not move the chip (measured 0.997-0.999)."""
    import dlib

    image = faces.astronaut() if photo == "astronaut" else faces.grace_hopper()
    ours = analyse(photo, image)["rep"].identity[0]
    recogniser, predictor = DI._models()
    rect = max(dlib.get_frontal_face_detector()(image, 1), key=lambda r: r.width() * r.height())
    ref = torch.nn.functional.normalize(torch.tensor(list(recogniser.compute_face_descriptor(image, predictor(image, rect), 0, 0.25))), dim=0)
    assert float(ours @ ref.float()) > 0.99


# ---- parse ------------------------------------------------------------------------------------------


def _centroid(mask: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(mask.shape[0], dtype=torch.float32), torch.arange(mask.shape[1], dtype=torch.float32), indexing="ij")
    m = mask.sum()
    return float((mask * xs).sum() / m), float((mask * ys).sum() / m)


PHOTOS = {
    "astronaut": faces.astronaut,
    "hopper": faces.grace_hopper,
    "astronaut_gray": lambda: faces.grayscale(faces.astronaut()),  # no chroma: the skin-colour cue is void
}


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_region_masks_layout(photo):
    image = PHOTOS[photo]()
    rep = analyse(photo, image)["rep"]
    masks = rep.region_masks[0]
    assert masks.shape == (len(REGIONS), CROP, CROP)
    assert rep.backends["parse"] == "mediapipe_mesh"
    total = masks.sum(0)
    assert float((total - 1).abs().max()) < 1e-4, "masks must sum to 1 at every pixel"
    assert float(masks.min()) >= 0.0
    area = {r: float(masks[REGION_INDEX[r]].sum()) for r in REGIONS}
    for r in ("skin", "eyebrows", "eyes", "nose", "lips", "hair", "background"):
        assert area[r] > 100, f"{r} is (almost) empty: {area[r]:.0f} px"
    y = {r: _centroid(masks[REGION_INDEX[r]])[1] for r in ("eyebrows", "eyes", "nose", "lips", "skin", "hair")}
    assert y["eyebrows"] < y["eyes"] < y["nose"] < y["lips"], y
    assert y["hair"] < y["eyes"], "hair (or headwear) sits above the eyes"
    # Every face part lies inside the skin region: its centroid, and nearly all its mass, within the
    # rows and columns the skin spans, and the skin surrounds it (skin left and right of its centroid).
    skin = masks[REGION_INDEX["skin"]] > 0.5
    rows, cols = skin.any(1).nonzero(), skin.any(0).nonzero()
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    for r in ("eyebrows", "eyes", "nose", "lips"):
        m = masks[REGION_INDEX[r]]
        cx, cy = _centroid(m)
        assert x0 < cx < x1 and y0 < cy < y1, f"{r} centroid ({cx:.0f}, {cy:.0f}) outside the skin box {x0, y0, x1, y1}"
        inside = float(m[y0 : y1 + 1, x0 : x1 + 1].sum() / m.sum())
        assert inside > 0.97, f"only {inside:.0%} of {r} lies within the skin's extent"
        row = skin[int(round(cy))]
        assert bool(row[: int(cx)].any()) and bool(row[int(cx) :].any()), f"no skin on both sides of {r}"
    # The region masks land on the mesh: eye mask covers the iris centres, lips cover the lip centre.
    lm = rep.landmarks[0]
    for idx, region in ((468, "eyes"), (473, "eyes"), (13, "lips"), (1, "nose")):
        x, yy = (int(round(float(v))) for v in lm[idx])
        assert float(masks[REGION_INDEX[region], yy, x]) > 0.5, f"mesh point {idx} is not in {region}"
    # The top corners of these portraits are background (wall; flag and sky behind Grace Hopper).
    assert float(masks[REGION_INDEX["background"], 5, 5] + masks[REGION_INDEX["background"], 5, CROP - 6]) > 1.5
    chin = lm[152]  # below the chin is neck or cloth
    below = masks[:, min(CROP - 1, int(chin[1]) + 40), int(chin[0])]
    assert float(below[REGION_INDEX["neck"]] + below[REGION_INDEX["cloth"]]) > 0.5


# IoU a region must keep between the masks of a photo and the mirrored masks of the mirrored photo. Thin
# regions (brows, 5-10 px tall) lose IoU fast to the 1-2 px left/right inconsistency of FaceMesh itself.
MIRROR_IOU = {"skin": 0.85, "nose": 0.85, "lips": 0.75, "eyes": 0.7, "eyebrows": 0.45, "hair": 0.6, "neck": 0.75, "cloth": 0.75, "background": 0.8}


@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_region_masks_follow_a_mirror(photo):
    """Parsing the mirrored photo gives the mirrored masks."""
    image = faces.astronaut() if photo == "astronaut" else faces.grace_hopper()
    a = analyse(photo, image)["rep"].region_masks[0]
    b = analyse(f"{photo}_flip", faces.flip(image))["rep"].region_masks[0].flip(-1)
    for r, want in MIRROR_IOU.items():
        i = REGION_INDEX[r]
        iou = float(torch.minimum(a[i], b[i]).sum() / torch.maximum(a[i], b[i]).sum())
        assert iou > want, f"{r}: IoU {iou:.2f} between the masks and the mirrored photo's masks (want > {want})"


# ---- motion -----------------------------------------------------------------------------------------


def test_pose_convention_on_exact_projections():
    """Project the generic head with known angles; the solver recovers them, and the angles mean what the
    contract says in image terms (independent of our own Euler helpers)."""
    K = np.array([[800.0, 0, 256], [0, 800.0, 256], [0, 0, 1]])
    t = np.array([0.0, 0.0, 600.0])

    def image_of(yaw, pitch, roll):
        pts = np.zeros((ME.MESH_POINTS, 2))
        for i, uv in ME.project_generic_head(ME.view_rotation_from_euler(yaw, pitch, roll), t, K).items():
            pts[i] = uv
        return pts

    for yaw, pitch, roll in [(0.3, 0.0, 0.0), (-0.4, 0.2, 0.1), (0.1, -0.25, -0.2), (0.6, 0.1, 0.0)]:
        R, _ = ME.solve_head_pose(image_of(yaw, pitch, roll), K)
        got = ME.euler_from_view_rotation(R)
        assert np.allclose(got, (yaw, pitch, roll), atol=1e-3), (got, (yaw, pitch, roll))
    front = image_of(0, 0, 0)
    eyes_mid = lambda p: (p[33] + p[263]) / 2  # noqa: E731
    # yaw > 0: the nose tip moves toward image right relative to the eyes.
    assert (image_of(0.3, 0, 0)[1] - eyes_mid(image_of(0.3, 0, 0)))[0] > (front[1] - eyes_mid(front))[0] + 5
    # pitch > 0: the nose tip rises toward the eye line (face turned up).
    assert (image_of(0, 0.3, 0)[1] - eyes_mid(image_of(0, 0.3, 0)))[1] < (front[1] - eyes_mid(front))[1] - 5
    # roll > 0: counter-clockwise in the image, so the image-right eye (263) is higher than the image-left one.
    rolled = image_of(0, 0, 0.2)
    assert rolled[263, 1] < rolled[33, 1] - 5


@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_pose_yaw_sign_turns_and_mirrors(photo):
    """A face turned toward image right has yaw > 0; its mirror image has yaw < 0, of the same size up to
    the left/right bias FaceMesh itself shows on the unturned photo and its mirror."""
    image = faces.astronaut() if photo == "astronaut" else faces.grace_hopper()
    turned = turn_features(image, 0.08)
    deg = lambda rep: [math.degrees(float(v)) for v in rep.pose[0]]  # noqa: E731
    base = deg(analyse(photo, image)["rep"])
    base_m = deg(analyse(f"{photo}_flip", faces.flip(image))["rep"])
    right = deg(analyse(f"{photo}_turned", turned)["rep"])
    right_m = deg(analyse(f"{photo}_turned_flip", faces.flip(turned))["rep"])
    for p in (base, base_m):
        assert abs(p[0]) < 5 and abs(p[2]) < 5, f"a frontal portrait: yaw/pitch/roll {p} deg"
    assert right[0] > 2 and right[0] > base[0] + 2.5, f"turned toward image right: yaw {base[0]:.1f} -> {right[0]:.1f} deg"
    assert right_m[0] < -2 and right_m[0] < base_m[0] - 2.5, f"the mirrored turn: yaw {base_m[0]:.1f} -> {right_m[0]:.1f} deg"
    bias = base[0] + base_m[0]
    assert abs(right[0] + right_m[0] - bias) < 2, f"mirror symmetry: {right[0]:.1f} vs {right_m[0]:.1f} deg (bias {bias:.1f})"
    assert abs(right_m[1] - right[1]) < 3 and abs(base_m[1] - base[1]) < 3, "a mirror keeps pitch"


def test_expression_descriptor_sees_an_open_mouth():
    names = ME.EXPRESSION_NAMES
    for photo, image in (("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())):
        closed = analyse(photo, image)["rep"]
        opened = analyse(f"{photo}_mouth_open", open_mouth(image))["rep"]
        e0, e1 = closed.expression[0], opened.expression[0]
        assert e0.shape == (ME.EXPRESSION_DIM,) and torch.isfinite(e0).all()
        assert closed.backends["motion"] == "mesh_pnp"
        d = {n: float(e1[i] - e0[i]) for i, n in enumerate(names)}
        assert d["mouth_open"] > 0.15, f"{photo}: mouth_open grew by {d['mouth_open']:.3f} IOD only"
        assert d["jaw_drop"] > 0.05, f"{photo}: jaw_drop grew by {d['jaw_drop']:.3f} IOD only"
        for untouched in ("eye_open_left", "eye_open_right", "brow_raise_left", "brow_raise_right"):
            assert abs(d[untouched]) < 0.05, f"{photo}: {untouched} moved by {d[untouched]:.3f} although only the mouth changed"


def test_expression_is_stable_across_photo_variants():
    """Half size and JPEG q20 move no entry by more than 0.05 IOD; a mirror keeps the symmetric entries.
    (The open-mouth change above is 0.15+ IOD, so the descriptor's signal is well above this noise.)"""
    names = ME.EXPRESSION_NAMES
    symmetric = ("mouth_open", "mouth_width", "lip_pucker", "upper_lip_raise", "brow_furrow", "jaw_drop")
    for photo, image in (("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())):
        e = analyse(photo, image)["rep"].expression[0]
        variants = {"half": (faces.rescale(image, 0.5), names), "jpeg20": (faces.jpeg(image, 20), names), "flip": (faces.flip(image), symmetric)}
        for label, (img, entries) in variants.items():
            f = analyse(f"{photo}_{label}", img)["rep"].expression[0]
            for n in entries:
                i = names.index(n)
                assert abs(float(f[i] - e[i])) < 0.05, f"{photo} {label}: {n} moved {float(f[i] - e[i]):+.3f} IOD"


# ---- gaze -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_gaze_follows_the_irises_and_mirrors(photo):
    image = faces.astronaut() if photo == "astronaut" else faces.grace_hopper()
    deg = math.degrees
    base = analyse(photo, image)["rep"]
    assert base.backends["gaze"] == "iris" and base.gaze.shape == (1, 2)
    right = analyse(f"{photo}_iris_right", shift_irises(image, 0.45))["rep"].gaze[0]
    left = analyse(f"{photo}_iris_left", shift_irises(image, -0.45))["rep"].gaze[0]
    mirrored = analyse(f"{photo}_iris_right_flip", faces.flip(shift_irises(image, 0.45)))["rep"].gaze[0]
    g0 = base.gaze[0]
    assert deg(right[1]) > deg(g0[1]) + 4, f"irises moved toward image right: gaze yaw {deg(g0[1]):.1f} -> {deg(right[1]):.1f} deg"
    assert deg(left[1]) < deg(g0[1]) - 4, f"irises moved toward image left: gaze yaw {deg(g0[1]):.1f} -> {deg(left[1]):.1f} deg"
    assert deg(mirrored[1]) < -2, f"mirrored: gaze yaw {deg(mirrored[1]):.1f} deg should be negative"
    assert abs(deg(mirrored[1]) + deg(right[1])) < 4, "a mirror flips gaze yaw's sign, about the same size"
    assert abs(deg(mirrored[0]) - deg(right[0])) < 4, "a mirror keeps gaze pitch"


# ---- errors and lifecycle ------------------------------------------------------------------------------


def test_clear_errors_without_mesh_landmarks():
    run = analyse("astronaut", faces.astronaut())
    crops, rep = run["crops"], run["rep"]
    for extractor in (ME.MeshParser(), ME.MeshPnPMotion(), ME.IrisGaze()):
        with pytest.raises(RepresentationError, match="landmarks"):
            extractor(crops, rep.replace(landmarks=None))
        with pytest.raises(ValueError, match=r"478 mediapipe FaceMesh points .* have 68 points"):
            extractor(crops, rep.replace(landmarks=rep.landmarks[:, :68]))
    with pytest.raises(ValueError, match="2 crops but the face representation holds 1"):
        DI.DlibIdentity()(crops.expand(2, -1, -1, -1), rep)


def test_release_all_then_reuse():
    run = analyse("astronaut", faces.astronaut())
    crops, rep = run["crops"], run["rep"]
    parser, identity = ME.MeshParser(), DI.DlibIdentity()
    before = parser(crops, rep)["region_masks"]
    ident = identity(crops, rep)["identity"]
    assert torch.allclose(before, rep.region_masks, atol=1e-5), "the parser is deterministic"
    assert ME.release_all() >= 1 and DI.release_all() >= 1
    # New extractors reload their models; ones made before the release (held by a node) keep working.
    for p in (ME.MeshParser(), parser):
        assert torch.allclose(p(crops, rep)["region_masks"], before, atol=1e-5)
    for i in (DI.DlibIdentity(), identity):
        assert torch.allclose(i(crops, rep)["identity"], ident, atol=1e-6)
