"""facex_core.align: similarity fit, the head template, warping, face choice, input formats
(grayscale, RGBA, 4K with bounded memory) and paste-back (round trip, footprint, pairing, colour
matching). Real photos (tests/support/faces.py) and the real MediaPipe detector where a detector is needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from facex_core import align
from facex_core.ford.base import Detection
from support import faces

TESTS_DIR = Path(__file__).resolve().parents[1]


def rotation(angle: float, scale: float = 1.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]]) * scale


# ---- similarity fit ------------------------------------------------------------------------------


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0, 0)), (0.4, 2.5, (12.0, -40.0)), (-2.8, 0.3, (300.5, 7.25))])
def test_similarity_recovers_a_known_transform(angle, scale, shift):
    rng = np.random.default_rng(0)
    src = rng.normal(size=(5, 2)) * 60 + 250
    lin = rotation(angle, scale)
    dst = src @ lin.T + np.array(shift)
    m = align.estimate_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], lin, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)
    np.testing.assert_allclose(align.apply_affine(align.invert_affine(m), dst), src, atol=1e-7)


def test_similarity_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 2)) * 50
    lin = rotation(0.7, 1.3)
    dst = src @ lin.T + 5 + rng.normal(size=(5, 2)) * 0.5  # noisy
    m = align.estimate_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    resid = np.linalg.norm(align.apply_affine(m, src) - dst, axis=1).mean()
    for d_angle in (-0.02, 0.02):  # a nudged transform fits worse
        nudged = m.copy()
        nudged[:, :2] = rotation(d_angle) @ m[:, :2]
        assert np.linalg.norm(align.apply_affine(nudged, src) - dst, axis=1).mean() > resid
    mirrored = src * [-1, 1]  # a mirror image cannot be fitted by a rotation: fit stays a rotation
    assert np.linalg.det(align.estimate_similarity(src, mirrored)[:, :2]) > 0
    with pytest.raises(align.AlignError, match="coincide"):
        align.estimate_similarity(np.ones((5, 2)), src)
    with pytest.raises(align.AlignError, match="NaN"):
        align.estimate_similarity(src * np.nan, src)


def test_head_template_is_symmetric_and_leaves_room_for_the_head():
    for size in (256, 512):
        t = align.head_template(size)
        centre = (size - 1) / 2
        np.testing.assert_allclose(t[0, 0] + t[1, 0], 2 * centre)  # eyes mirror each other
        np.testing.assert_allclose(t[3, 0] + t[4, 0], 2 * centre)
        assert t[2, 0] == pytest.approx(centre)
        assert t[0, 0] > t[1, 0] and t[3, 0] > t[4, 0], "subject's left (image right) first"
        iod = t[0, 0] - t[1, 0]
        assert 0.2 * size < iod < 0.3 * size, "FFHQ-like framing, not a tight ArcFace crop"
        assert t[0, 1] > 1.6 * iod, "room above the eyes for forehead and hair"
        assert size - t[3, 1] > 1.0 * iod, "room below the mouth for chin and neck"
    np.testing.assert_allclose(align.head_template(512), (align.head_template(256) + 0.5) * 2 - 0.5)
    with pytest.raises(align.AlignError, match="crop_size"):
        align.head_template(8)


def test_warp_follows_the_pixel_centre_convention():
    img = torch.zeros(1, 40, 40)
    img[0, 10, 20] = 1.0  # pixel x=20, y=10
    m = np.array([[2.0, 0, 5.0], [0, 2.0, -3.0]])  # x' = 2x + 5, y' = 2y - 3
    out = align.warp_region(img, m, (80, 80))[0]
    y, x = np.unravel_index(int(out.argmax()), out.shape)
    assert (x, y) == (45, 17)
    assert float(out[17, 45]) == pytest.approx(1.0, abs=1e-5)
    theta = torch.tensor([[0.9, -0.2, 0.1], [0.3, 1.1, -0.4]])
    ref = torch.nn.functional.affine_grid(theta[None], [1, 3, 24, 40], align_corners=False)[0]
    assert torch.allclose(align.affine_grid(theta, (24, 40)), ref, atol=1e-6)
    # identity warp of a random image is exact
    rnd = torch.rand(3, 32, 48)
    assert torch.allclose(align.warp_region(rnd, np.eye(2, 3), (32, 48)), rnd, atol=1e-5)


def test_shrinking_warp_is_antialiased():
    """A 1-px checkerboard shrunk 4x must come out grey, not a moire of black and white."""
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    checker = ((yy + xx) % 2).float()[None]
    out = align.warp_region(checker, np.array([[0.25, 0, 0], [0, 0.25, 0]]), (64, 64))
    inner = out[0, 4:-4, 4:-4]
    assert float((inner - 0.5).abs().max()) < 0.05


# ---- face choice ----------------------------------------------------------------------------------


def det(x0: float, width: float, score: float = 0.9) -> Detection:
    box = np.array([x0, 100, x0 + width, 100 + width], np.float32)
    cx, cy, d = x0 + width / 2, 100 + width / 2, width / 4
    lm = np.array([[cx + d, cy - d], [cx - d, cy - d], [cx, cy], [cx + d * 0.8, cy + d], [cx - d * 0.8, cy + d]], np.float32)
    return Detection(box=box, score=score, landmarks5=lm)


def test_face_choice_rules():
    dets = [det(300, 80), det(10, 120), det(150, 60)]
    assert align.choose_faces(dets, "largest", 0, 0, 1)[0] is dets[1]
    assert [d.box[0] for d in align.choose_faces(dets, "left_to_right", 0, 0, 1)] == [10, 150, 300]
    assert align.choose_faces(dets, "index", 1, 0, 1)[0] is dets[2]  # counted left to right
    assert align.choose_faces(dets, "index", 2, 0, 1)[0] is dets[0]
    # min_face_size drops small faces before choosing and counting
    assert [d.box[0] for d in align.choose_faces(dets, "left_to_right", 0, 0, 1, min_face_size=70)] == [10, 300]
    assert align.choose_faces(dets, "index", 1, 0, 1, min_face_size=70)[0] is dets[0]
    # equal sizes: the higher score wins
    tie = [det(10, 100, 0.2), det(300, 100, 0.95)]
    assert align.choose_faces(tie, "largest", 0, 0, 1)[0] is tie[1]


def test_face_choice_errors_name_the_image():
    dets = [det(10, 100)]
    with pytest.raises(align.AlignError) as e:
        align.choose_faces(dets, "index", 3, 1, 3)
    msg = str(e.value)
    assert "image 2 of 3 in the batch (0-based index 1) has 1 face(s)" in msg and "face index 3 was requested" in msg
    with pytest.raises(align.NoFaceError, match=r"no face found in image 3 of 3 in the batch \(0-based index 2\)"):
        align.choose_faces([], "largest", 0, 2, 3)
    with pytest.raises(align.NoFaceError, match=r"smaller than min_face_size=200 px \(the largest is 100 px wide\)"):
        align.choose_faces(dets, "largest", 0, 0, 1, min_face_size=200)
    with pytest.raises(align.AlignError, match="unknown face choice 'biggest'"):
        align.choose_faces(dets, "biggest", 0, 0, 1)


# ---- real photos: input formats ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mediapipe_detector():
    from facex_core.ford.decompose import make_detector

    return make_detector("mediapipe")


@pytest.fixture(scope="module")
def astronaut_aligned(mediapipe_detector):
    return align.detect_and_align(faces.to_image_batch(faces.astronaut()), mediapipe_detector, crop_size=512)


def test_alignment_puts_the_landmarks_on_the_template(astronaut_aligned):
    a = astronaut_aligned
    assert a.crops.shape == (1, 3, 512, 512) and a.crops.dtype == torch.float32
    assert 0 <= float(a.crops.min()) and float(a.crops.max()) <= 1
    t = align.head_template(512)
    err = np.linalg.norm(a.landmarks5[0].numpy() - t, axis=1)
    iod = t[0, 0] - t[1, 0]
    # a similarity cannot absorb face shape (this smile has a short nose-to-mouth distance): near, not on
    assert err.max() < 0.15 * iod and err.mean() < 0.1 * iod, f"five points land near the template (residual {err.round(1)} px)"
    np.testing.assert_allclose(align.apply_affine(a.affine[0].numpy(), a.detections[0].landmarks5), a.landmarks5[0].numpy(), atol=1e-3)
    assert a.image_hw.tolist() == [[512, 512]] and a.image_index == [0]


@pytest.mark.parametrize("variant", ["grayscale", "rgba", "uint8_numpy"])
def test_grayscale_and_rgba_inputs(variant, mediapipe_detector, astronaut_aligned):
    img = faces.astronaut()
    batch = {
        "grayscale": faces.to_image_batch(faces.grayscale(img)),  # (1, H, W, 1)
        "rgba": faces.to_image_batch(faces.rgba(img)),  # (1, H, W, 4)
        "uint8_numpy": faces.rgba(img)[None],  # uint8 numpy with alpha
    }[variant]
    a = align.detect_and_align(batch, mediapipe_detector, crop_size=256)
    assert a.crops.shape == (1, 3, 256, 256)
    ref = astronaut_aligned.detections[0].landmarks5
    assert np.abs(a.detections[0].landmarks5 - ref).max() < 4.0, "same face, same place, whatever the channels"
    if variant == "grayscale":
        c = a.crops[0]
        assert torch.allclose(c[0], c[1]) and torch.allclose(c[1], c[2])


def test_4k_photo_detects_on_a_small_copy_and_aligns_at_full_resolution(mediapipe_detector, astronaut_aligned):
    img = faces.astronaut()
    big = faces.upscale_4k(img)
    x0, scale = faces.upscale_4k_offset(img)
    a = align.detect_and_align(faces.to_image_batch(big), mediapipe_detector, crop_size=512, max_detect_side=1280)
    expected = (astronaut_aligned.detections[0].landmarks5 + 0.5) * scale - 0.5 + [x0, 0]
    iod = np.linalg.norm(expected[0] - expected[1])
    assert np.abs(a.detections[0].landmarks5 - expected).max() < 0.06 * iod
    assert a.image_hw.tolist() == [[2160, 3840]]
    # the crop cut from the 4K photo shows the same head as the crop of the small photo
    diff = (a.crops[0] - astronaut_aligned.crops[0]).abs().mean()
    assert float(diff) < 0.04


def test_4k_batch_memory_stays_bounded(figures):
    """Peak memory of aligning a batch of two 4K photos, measured in a fresh process: beyond the
    input batch itself (2 x 100 MB float) FaceX may use about one more image, never a float copy
    per face or a full-resolution warp."""
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import torch
        from facex_core import align
        from facex_core.ford.decompose import make_detector
        from support import faces
        det = make_detector("mediapipe")
        align.detect_and_align(faces.to_image_batch(faces.astronaut()), det)  # load the graphs
        big = faces.to_image_batch(faces.upscale_4k(faces.astronaut()), faces.upscale_4k(faces.flip(faces.astronaut())))
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # MiB
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        before = status("VmRSS")
        a = align.detect_and_align(big, det, crop_size=512)
        peak = status("VmHWM")
        print(json.dumps({{"faces": len(a.image_index), "extra_mib": peak - before, "input_mib": big.numel() * 4 / 2**20}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["faces"] == 2
    figures["align_4k_batch2_peak_extra_mib"] = round(report["extra_mib"], 1)
    assert report["extra_mib"] < 0.75 * report["input_mib"], report


# ---- paste-back ---------------------------------------------------------------------------------------


def test_paste_back_of_the_unmodified_crop_reproduces_the_photo(astronaut_aligned):
    a = astronaut_aligned
    img = faces.to_image_batch(faces.astronaut())
    out = align.paste_back(img, a.crops, a.affine, feather_px=16)  # BCHW crops
    out_hwc = align.paste_back(img, a.crops.permute(0, 2, 3, 1), a.affine, feather_px=16)  # BHWC crops
    assert torch.equal(out, out_hwc)
    assert out.shape == img.shape
    x0, y0, x1, y1 = faces.ASTRONAUT_FACE_BOX
    diff = (out - img).abs()[0, y0:y1, x0:x1]
    assert float(diff.mean()) < 0.02 and float(torch.quantile(diff.flatten(), 0.99)) < 0.15
    # outside the crop's footprint nothing changes at all
    inv = align.invert_affine(a.affine[0].numpy())
    corners = align.apply_affine(inv, [[-0.5, -0.5], [511.5, -0.5], [-0.5, 511.5], [511.5, 511.5]])
    changed = (out != img).any(-1)[0]
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert xs.min() >= corners[:, 0].min() - 1 and xs.max() <= corners[:, 0].max() + 1
    assert ys.min() >= corners[:, 1].min() - 1 and ys.max() <= corners[:, 1].max() + 1


def test_paste_back_blends_a_generated_crop_with_a_feathered_edge(astronaut_aligned):
    a = astronaut_aligned
    img = faces.to_image_batch(faces.astronaut())
    white = torch.ones_like(a.crops)
    out = align.paste_back(img, white, a.affine, feather_px=32)[0]
    centre = align.apply_affine(align.invert_affine(a.affine[0].numpy()), [[255.5, 255.5]])[0].round().astype(int)
    assert torch.allclose(out[centre[1], centre[0]], torch.ones(3)), "full weight in the middle of the crop"
    # along a line from the centre to the crop's top edge the weight rises smoothly from 0
    inv = align.invert_affine(a.affine[0].numpy())
    ts = np.linspace(0, 40, 41)
    pts = align.apply_affine(inv, np.stack([np.full_like(ts, 255.5), ts], 1)).round().astype(int)
    pts = pts[(pts[:, 1] >= 0) & (pts[:, 0] >= 0)]
    base = img[0, pts[:, 1], pts[:, 0]]
    weight = ((out[pts[:, 1], pts[:, 0]] - base) / (1 - base).clamp_min(1e-3)).mean(1)
    assert float(weight[-1]) > 0.95 and float(weight[0]) < 0.1
    # a crop-space mask limits what is pasted
    half = torch.zeros(1, 512, 512)
    half[:, :, 256:] = 1  # image-right half of the crop only
    out_masked = align.paste_back(img, white, a.affine, feather_px=8, mask=half)[0]
    left = align.apply_affine(inv, [[128, 300]])[0].round().astype(int)
    right = align.apply_affine(inv, [[384, 300]])[0].round().astype(int)
    assert torch.allclose(out_masked[left[1], left[0]], img[0, left[1], left[0]], atol=1e-4)
    assert torch.allclose(out_masked[right[1], right[0]], torch.ones(3), atol=1e-3)


def test_paste_back_rescales_generated_crops_of_another_size(astronaut_aligned):
    a = astronaut_aligned
    img = faces.to_image_batch(faces.astronaut())
    small = torch.nn.functional.interpolate(a.crops, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    out = align.paste_back(img, small, a.affine, feather_px=16, crop_size=512)
    x0, y0, x1, y1 = faces.ASTRONAUT_FACE_BOX
    assert float((out - img).abs()[0, y0:y1, x0:x1].mean()) < 0.03


def test_paste_back_pairing():
    assert align.pairing(2, 2, 2) == [(0, 0, 0), (1, 1, 1)]
    assert align.pairing(1, 3, 3) == [(0, 0, 0), (0, 1, 1), (0, 2, 2)]  # every face of one photo
    assert align.pairing(1, 1, 3) == [(0, 0, 0), (1, 0, 1), (2, 0, 2)]  # three variants of one face
    assert align.pairing(3, 3, 3, image_index=[0, 0, 2]) == [(0, 0, 0), (0, 1, 1), (2, 2, 2)]
    with pytest.raises(align.AlignError, match="cannot tell which of the 2 images"):
        align.pairing(2, 3, 3)
    with pytest.raises(align.AlignError, match="do not match the 2 faces"):
        align.pairing(2, 2, 3)


def test_paste_back_variants_make_one_image_each(astronaut_aligned):
    a = astronaut_aligned
    img = faces.to_image_batch(faces.astronaut())
    variants = torch.stack([torch.zeros(3, 512, 512), torch.ones(3, 512, 512)])
    out = align.paste_back(img, variants, a.affine)
    assert out.shape == (2, 512, 512, 3)
    cx, cy = align.apply_affine(align.invert_affine(a.affine[0].numpy()), [[255.5, 255.5]])[0].round().astype(int)
    assert out[0, cy, cx].max() < 1e-4 and out[1, cy, cx].min() > 1 - 1e-4


def test_paste_back_keeps_alpha_and_grayscale(astronaut_aligned):
    a = astronaut_aligned
    rgba = faces.to_image_batch(faces.rgba(faces.astronaut(), alpha=77))
    out = align.paste_back(rgba, torch.ones_like(a.crops), a.affine)
    assert out.shape[-1] == 4 and torch.all(out[..., 3] == rgba[..., 3])
    gray = faces.to_image_batch(faces.grayscale(faces.astronaut()))
    out = align.paste_back(gray, torch.ones_like(a.crops), a.affine)
    assert out.shape == gray.shape and float(out.max()) == pytest.approx(1.0, abs=1e-5)


def test_colour_match_moves_a_recoloured_face_back(astronaut_aligned):
    a = astronaut_aligned
    img = faces.to_image_batch(faces.astronaut())
    tinted = (a.crops * torch.tensor([0.6, 0.9, 1.2]).view(1, 3, 1, 1) + 0.1).clamp(0, 1)
    face = align.landmark_face_mask(a.landmarks5, 512)
    assert 0.05 < float(face.mean()) < 0.35, "the ellipse covers the inner face only"
    x0, y0, x1, y1 = faces.ASTRONAUT_FACE_BOX
    plain = align.paste_back(img, tinted, a.affine)
    matched = align.paste_back(img, tinted, a.affine, colour_match=True, landmarks5=a.landmarks5)
    err_plain = float((plain - img).abs()[0, y0:y1, x0:x1].mean())
    err_matched = float((matched - img).abs()[0, y0:y1, x0:x1].mean())
    assert err_matched < 0.5 * err_plain, (err_plain, err_matched)


def test_bad_inputs_are_named():
    with pytest.raises(align.AlignError, match="1, 3 or 4 channels"):
        align.as_image_batch(torch.zeros(1, 64, 64, 2))
    with pytest.raises(align.AlignError, match="square"):
        align.as_crops_bchw(torch.zeros(1, 3, 64, 32))
    with pytest.raises(align.AlignError, match="empty"):
        align.as_image_batch(torch.zeros(0, 64, 64, 3))
