"""Embedded FORD detection and the all-in-one decomposition, on real photos with the real models:
MediaPipe (BlazeFace + FaceMesh with iris) and dlib (HOG + shape predictors from
face_recognition_models). No mocks: every number below comes from running the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facex_core import align
from facex_core.ford import REGISTRY, decompose as ford_decompose, dlib_detect, mediapipe_detect
from facex_core.ford.base import Detection, Detector
from facex_core.ford.decompose import DecomposeError, decompose, decompose_faces, default_extractors, make_detector
from facex_core.ford.preview import decomposition_preview, head_axes, region_colour_map
from facex_core.regions import REGION_COLOURS, REGIONS
from facex_core.representation import FaceRepresentation
from support import faces

DETECTORS = ("mediapipe", "dlib")


@pytest.fixture(scope="module")
def detectors() -> dict[str, Detector]:
    return {name: make_detector(name) for name in DETECTORS}


@pytest.fixture(scope="module")
def found(detectors):
    """Detections of both detectors on the astronaut, Grace Hopper and the mirrored astronaut."""
    photos = {"astronaut": faces.astronaut(), "hopper": faces.grace_hopper(), "mirrored": faces.flip(faces.astronaut())}
    return {(d, p): detectors[d].detect(img) for d in DETECTORS for p, img in photos.items()}


@pytest.fixture(scope="module")
def decomposed():
    """The full embedded decomposition of [astronaut, mirrored astronaut] at 256 px (one run for many tests)."""
    images = faces.to_image_batch(faces.astronaut(), faces.flip(faces.astronaut()))
    return decompose_faces(images, "mediapipe", crop_size=256)


def iod(five) -> float:
    return float(np.linalg.norm(np.asarray(five)[0] - np.asarray(five)[1]))


# ---- registry ---------------------------------------------------------------------------------------


def test_embedded_backends_are_registered():
    for family, name in [("detect", "mediapipe"), ("detect", "dlib"), ("landmarks", "mediapipe_mesh")]:
        info = REGISTRY[family][name]
        assert info.embedded and info.licence
    assert "non-commercial" in REGISTRY["detect"]["dlib"].licence
    assert "Apache-2.0" in REGISTRY["detect"]["mediapipe"].licence
    extractors = default_extractors("embedded")
    assert [(e.family, e.name) for e in extractors] == [(f, n) for f, n in ford_decompose.EMBEDDED_EXTRACTORS.items()]
    assert default_extractors("detect") == []
    with pytest.raises(DecomposeError, match="unknown FORD backend set 'everything'"):
        default_extractors("everything")
    with pytest.raises(DecomposeError, match="no FORD detect backend named 'retinaface'"):
        make_detector("retinaface")


# ---- detectors on real photos ------------------------------------------------------------------------


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("photo,box", [("astronaut", faces.ASTRONAUT_FACE_BOX), ("hopper", faces.GRACE_HOPPER_FACE_BOX)])
def test_one_face_with_landmarks_inside_its_box(found, detector, photo, box):
    dets = found[(detector, photo)]
    assert len(dets) == 1, f"{detector} on {photo}: {[d.box for d in dets]}"
    d = dets[0]
    assert isinstance(d, Detection) and d.landmarks5.shape == (5, 2) and d.box.shape == (4,)
    assert faces.box_contains(d.box, d.landmarks5), f"five points {d.landmarks5} outside the detected box {d.box}"
    assert faces.box_contains(box, d.box, margin=10), "the detected box is on the face"
    five = d.landmarks5
    assert five[0, 0] > five[1, 0] and five[3, 0] > five[4, 0], "subject's left (image right) first"
    assert five[0, 1] < five[2, 1] < five[3, 1], "eyes above the nose tip above the mouth"
    assert 0.25 < iod(five) / (d.box[2] - d.box[0]) < 0.75


@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_the_two_detectors_agree(found, photo):
    """Two independent models (MediaPipe's mesh, dlib's 68-point iBUG predictor) give the same five points."""
    a, b = found[("mediapipe", photo)][0].landmarks5, found[("dlib", photo)][0].landmarks5
    dist = np.linalg.norm(a - b, axis=1) / iod(a)
    assert dist[:2].max() < 0.08, f"eye centres differ by {dist[:2]} eye distances"
    assert dist.max() < 0.2, f"five points differ by {dist} eye distances"


@pytest.mark.parametrize("detector", DETECTORS)
def test_mirrored_photo_gives_mirrored_landmarks(found, detector):
    w = faces.astronaut().shape[1]
    orig = found[(detector, "astronaut")][0].landmarks5
    mirrored = found[(detector, "mirrored")][0].landmarks5
    # mirror x -> W - 1 - x and swap left/right: the subject's left eye of the mirror image is the right eye here
    expected = orig[[1, 0, 2, 4, 3]] * [-1, 1] + [w - 1, 0]
    err = np.linalg.norm(mirrored - expected, axis=1)
    assert err.max() < 0.06 * iod(orig), f"{detector}: mirrored landmarks off by {err.round(2)} px"


def test_mediapipe_five_points_are_the_mesh_iris_nose_and_mouth(found):
    img = faces.astronaut()
    d = found[("mediapipe", "astronaut")][0]
    mesh = mediapipe_detect.mesh_in_box(img, d.box)
    assert mesh.shape == (mediapipe_detect.MESH_POINTS, 2)
    np.testing.assert_allclose(mediapipe_detect.five_from_mesh(mesh), d.landmarks5, atol=1e-4)
    # the iris centre sits inside the eye contour (outer/inner corners 263/362 and 33/133)
    for iris, outer, inner in [(473, 263, 362), (468, 33, 133)]:
        lo, hi = sorted([mesh[outer, 0], mesh[inner, 0]])
        assert lo < mesh[iris, 0] < hi
    # whole-image FaceMesh (the shared, cached runner) finds the same face
    meshes = mediapipe_detect.face_mesh_points(img)
    assert len(meshes) == 1 and np.abs(meshes[0] - mesh).max() < 3.0
    again = mediapipe_detect.face_mesh_points(img)
    assert np.array_equal(again[0], meshes[0]) and again[0] is not meshes[0], "cached, and callers get copies"


def test_mediapipe_keypoint_fallback_is_close_to_the_mesh(found):
    """When FaceMesh fails on a face the five points come from BlazeFace's keypoints (mouth corners estimated)."""
    img = faces.astronaut()
    [(box, score, kps)] = mediapipe_detect._detect_boxes(img, 0.5)
    five = mediapipe_detect.five_from_keypoints(kps)
    ref = found[("mediapipe", "astronaut")][0].landmarks5
    assert np.linalg.norm(five - ref, axis=1).max() < 0.25 * iod(ref)


def test_dlib_five_point_model_estimates_nose_and_mouth(found):
    """points=5 (CC0 model, no nose tip or mouth corners) stays close to the 68-point answer."""
    det5 = dlib_detect.DlibDetector(points=5)
    assert det5.name == "dlib:5pt"
    for photo, img in [("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())]:
        [d5] = det5.detect(img)
        ref = found[("dlib", photo)][0].landmarks5
        err = np.linalg.norm(d5.landmarks5 - ref, axis=1) / iod(ref)
        assert err[:2].max() < 0.05, f"{photo}: eye centres {err[:2]}"
        assert err.max() < 0.2, f"{photo}: estimated points off by {err} eye distances"


@pytest.mark.parametrize("detector", DETECTORS)
def test_blank_and_non_face_images_give_no_detection(detectors, detector):
    assert detectors[detector].detect(faces.blank()) == []
    assert detectors[detector].detect(faces.coffee()) == []


# ---- decompose --------------------------------------------------------------------------------------


def test_decompose_fills_every_embedded_part(decomposed):
    rep, crops = decomposed.rep, decomposed.crops
    assert isinstance(rep, FaceRepresentation) and rep.batch_size == 2 and rep.crop_size == 256
    assert crops.shape == (2, 3, 256, 256)
    assert set(rep.present()) >= {"affine", "image_hw", "landmarks5", "landmarks", "identity", "region_masks", "pose", "expression", "gaze"}
    assert rep.backends == {
        "detect": "mediapipe",
        "landmarks": "mediapipe_mesh",
        "parse": "mediapipe_mesh",
        "identity": "dlib_resnet",
        "motion": "mesh_pnp",
        "gaze": "iris",
    }
    assert rep.landmarks.shape == (2, 478, 2)
    # the mesh run on the crop agrees with the five points from the detector's mesh
    five_from_crop_mesh = rep.landmarks[:, list(mediapipe_detect.MESH_FIVE)]
    assert (five_from_crop_mesh - rep.landmarks5).norm(dim=-1).max() < 0.05 * 256 * 0.246
    assert decomposed.image_index == [0, 1]


def test_decompose_of_a_mirrored_photo_is_mirrored(decomposed):
    rep = decomposed.rep
    s = rep.crop_size
    five, five_m = rep.landmarks5[0], rep.landmarks5[1]
    expected = five[[1, 0, 2, 4, 3]] * torch.tensor([-1.0, 1.0]) + torch.tensor([s - 1.0, 0.0])
    assert (five_m - expected).norm(dim=-1).max() < 0.05 * iod(five), "the template is symmetric: mirrored crops hold mirrored points"
    assert float(rep.pose[0, 0]) * float(rep.pose[1, 0]) < 0 or abs(float(rep.pose[0, 0])) < 0.02, "yaw flips sign"
    same_person = float(rep.identity[0] @ rep.identity[1])
    assert same_person > 0.9, "a mirror image is the same person to the identity model"


def test_decompose_returns_comfy_crops_and_takes_numpy():
    rep, crops = decompose(faces.astronaut()[None], "dlib", extractors=[], crop_size=256, backends="detect")
    assert crops.shape == (1, 256, 256, 3), "crops come back BHWC like a ComfyUI IMAGE"
    assert rep.present() == ["affine", "image_hw", "landmarks5"] and rep.backends == {"detect": "dlib"}


def test_left_to_right_and_index_on_a_photo_with_two_faces():
    pair = faces.side_by_side(faces.astronaut(), faces.grace_hopper())
    batch = faces.to_image_batch(pair)
    both = decompose_faces(batch, "mediapipe", extractors=[], crop_size=256, face_choice="left_to_right", landmarks=False)
    assert both.rep.batch_size == 2 and both.image_index == [0, 0]
    xs = [float(d.landmarks5[:, 0].mean()) for d in both.detections]
    assert xs[0] < 512 < xs[1], "astronaut (left half) first, then Grace Hopper"
    second = decompose_faces(batch, "mediapipe", extractors=[], crop_size=256, face_choice="index", index=1, landmarks=False)
    assert torch.allclose(second.rep.affine[0], both.rep.affine[1])
    with pytest.raises(align.AlignError, match=r"image 1 of 1 in the batch \(0-based index 0\) has 2 face\(s\).*face index 2"):
        decompose_faces(batch, "mediapipe", extractors=[], face_choice="index", index=2, landmarks=False)


@pytest.mark.parametrize("detector", DETECTORS)
def test_no_face_error_names_the_batch_index(detector):
    batch = faces.to_image_batch(faces.astronaut(), faces.blank(), faces.astronaut())
    with pytest.raises(align.NoFaceError, match=r"no face found in image 2 of 3 in the batch \(0-based index 1\)"):
        decompose(batch, detector, backends="detect")
    coffee = faces.to_image_batch(faces.resize_to(faces.coffee(), 512, 512))
    with pytest.raises(align.NoFaceError, match=r"no face found in image 1 of 1 in the batch \(0-based index 0\)"):
        decompose(coffee, detector, backends="detect")


def test_face_smaller_than_the_minimum_is_refused_clearly():
    batch = faces.to_image_batch(faces.astronaut())
    with pytest.raises(align.NoFaceError, match=r"index 0\): 1 face\(s\) found but all are smaller than min_face_size=300 px"):
        decompose(batch, "mediapipe", backends="detect", min_face=300)
    rep, _ = decompose(batch, "mediapipe", backends="detect", min_face=60)
    assert rep.batch_size == 1


def test_tiny_face_is_found_or_refused_with_the_image_named():
    """A 40-px face on a 512 canvas: mediapipe's full-range model still finds it; dlib's HOG cannot."""
    tiny = faces.to_image_batch(faces.shrink_into(faces.astronaut(), 0.4, at=(200, 150)))
    rep, _ = decompose(tiny, "mediapipe", backends="detect")
    assert rep.batch_size == 1
    with pytest.raises(align.NoFaceError, match=r"image 1 of 1 in the batch \(0-based index 0\)"):
        decompose(faces.to_image_batch(faces.shrink_into(faces.astronaut(), 0.15)), "dlib", backends="detect")


def test_extractor_failure_names_the_face_that_failed(decomposed):
    """The dense-landmark backend fails on a crop with no face: the error names that image and the backend."""
    from facex_core.ford.decompose import run_extractor

    crops = decomposed.crops.clone()
    crops[1] = 0.5  # image 2's crop is a grey square
    rep = decomposed.rep.replace(landmarks=None)
    mesh = REGISTRY["landmarks"]["mediapipe_mesh"].factory()
    with pytest.raises(DecomposeError) as e:
        run_extractor(mesh, crops, rep, decomposed.image_index, 2)
    msg = str(e.value)
    assert "landmarks backend 'mediapipe_mesh' failed on image 2 of 2 in the batch (0-based index 1)" in msg
    assert "FaceMesh found no face" in msg


def test_decomposed_face_saved_and_loaded_is_unchanged(decomposed, tmp_path):
    rep = decomposed.rep
    path = tmp_path / "astronaut_pair.safetensors"
    rep.save(path)
    back = FaceRepresentation.load(path)
    assert back.present() == rep.present() and back.backends == rep.backends and back.crop_size == rep.crop_size
    for name, t in rep.tensors().items():
        assert torch.equal(getattr(back, name), t), name


@pytest.mark.parametrize("variant", ["jpeg", "grayscale", "rescaled"])
def test_degraded_photos_decompose_to_nearby_landmarks(decomposed, variant):
    img = faces.astronaut()
    photo, scale = {
        "jpeg": (faces.jpeg(img, 25), 1.0),
        "grayscale": (faces.grayscale(img), 1.0),
        "rescaled": (faces.rescale(img, 1.7), 1.7),
    }[variant]
    d = decompose_faces(faces.to_image_batch(photo), "mediapipe", extractors=[], crop_size=256)
    ref = decomposed.detections[0].landmarks5
    got = (np.asarray(d.detections[0].landmarks5) + 0.5) / scale - 0.5
    assert np.linalg.norm(got - ref, axis=1).max() < 0.08 * iod(ref)
    assert d.rep.landmarks.shape == (1, 478, 2)


# ---- previews ----------------------------------------------------------------------------------------


def test_region_colour_map_uses_the_region_colours():
    masks = torch.zeros(1, len(REGIONS), 8, 8)
    for r in range(len(REGIONS)):
        masks[0, r, :, r % 8] = 1.0  # column r % 8 belongs to region r (later regions overwrite nothing: sums mix)
    masks[0, :, :, :] = 0
    masks[0, REGIONS.index("lips"), :4] = 1.0
    masks[0, REGIONS.index("hair"), 4:] = 0.5
    masks[0, REGIONS.index("skin"), 4:] = 0.5
    rgb = region_colour_map(masks)[0]
    lips = torch.tensor(REGION_COLOURS[REGIONS.index("lips")]) / 255
    mix = (torch.tensor(REGION_COLOURS[REGIONS.index("hair")]) + torch.tensor(REGION_COLOURS[REGIONS.index("skin")])) / 510
    assert torch.allclose(rgb[0, 0], lips) and torch.allclose(rgb[7, 7], mix)


def test_pose_axes_follow_the_pose_convention():
    straight = head_axes(0.0, 0.0, 0.0)
    assert torch.allclose(straight, torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]), atol=1e-6)
    assert head_axes(0.5, 0.0, 0.0)[2, 0] > 0, "yaw > 0: the face (forward axis) turns toward image right"
    assert head_axes(0.0, 0.5, 0.0)[2, 1] < 0, "pitch > 0: the face turns up (image y points down)"
    assert head_axes(0.0, 0.0, 0.5)[0, 1] < 0, "roll > 0: counter-clockwise, the right axis tilts up"


def test_decomposition_preview(decomposed):
    prev = decomposition_preview(decomposed.crops, decomposed.rep)
    assert prev.shape == (2, 256, 512, 3) and 0 <= float(prev.min()) and float(prev.max()) <= 1
    left, right = prev[:, :, :256], prev[:, :, 256:]
    crops = decomposed.crops.permute(0, 2, 3, 1)
    assert not torch.equal(left, crops), "landmarks are drawn"
    five = decomposed.rep.landmarks5[0].round().long()
    assert torch.allclose(left[0, five[0, 1], five[0, 0]], torch.tensor([1.0, 0.85, 0.0])), "five points in yellow"
    assert float((right - crops).abs().mean()) > 0.02, "regions are coloured in"
