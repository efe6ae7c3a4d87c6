"""The FORD nodes in the real ComfyUI server: FaceXDecompose on the astronaut photo with the embedded
backends, region masks, previews and paste-back; the production loaders on RANDOM-weight files with
the real layouts (tests/support/random_ford_weights.py) through the FORD nodes, the insightface
detector path, and clear errors (truncated file, wrong file, no face, missing face_analysis) that
leave the server up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facex_core.align import apply_affine, invert_affine
from facex_core.regions import REGIONS
from facex_core.representation import FaceRepresentation
from support import faces
from support.comfy_server import ExecutionFailed, Prompt
from support.random_ford_weights import RANDOM_DIR_NAME, SCRFD_FIRING_STRIDE, SCRFD_KPS_OFFSETS, install_random_models

pytestmark = pytest.mark.comfy

FORD_NODES = (
    "FaceXDetectAlign", "FaceXDecompose", "FaceXIdentity", "FaceXParse", "FaceXMotion", "FaceXGaze",
    "FaceXRegionFeatures", "FaceXRegionMasks", "FaceXPreviewFace", "FaceXPasteBack",
)
DETECT = dict(backend="mediapipe", crop_size="512", face_choice="largest", index=0, min_face_size=0)
FROM_FACE_ANALYSIS = "(ArcFace of the face_analysis input)"


@pytest.fixture(scope="module")
def ford_models(comfy_server):
    """RANDOM-weight production files in the server's models folder, plus a truncated copy."""
    placed = install_random_models(comfy_server.models_dir)
    folder = Path(comfy_server.models_dir) / "facex" / "extractors" / RANDOM_DIR_NAME
    data = placed[f"{RANDOM_DIR_NAME}/79999_iter.pth"].read_bytes()
    (folder / "truncated_random_79999_iter.pth").write_bytes(data[: len(data) // 3])
    return placed


def saved_face(server, name: str) -> FaceRepresentation:
    return FaceRepresentation.load(os.path.join(server.models_dir, "facex", "faces", name + ".safetensors"))


def node_image(server, outputs: dict, node_id: str) -> np.ndarray:
    return server.fetch_image(outputs[str(node_id)]["images"][0])


def test_ford_nodes_are_registered_with_tooltips(comfy_server):
    info = comfy_server.object_info()
    for node_id in FORD_NODES:
        assert node_id in info, f"{node_id} missing from /object_info"
        spec = info[node_id]
        assert spec["category"] == "FaceX/FORD" and spec["description"]
        for group in ("required", "optional"):
            for name, entry in (spec["input"].get(group) or {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["FaceXDecompose"]["output_name"] == ["representation", "crops", "preview"]
    assert info["FaceXRegionMasks"]["output_name"] == ["mask", "preview"]


@pytest.fixture(scope="module")
def astronaut_run(comfy_server, astronaut_input):
    """FaceXDecompose (embedded backends) -> region masks, previews, saved face, paste-back."""
    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    dec = p.add("FaceXDecompose", image=img[0], **DETECT)
    masks = p.add("FaceXRegionMasks", representation=dec[0], region="head")
    mask_img = p.add("MaskToImage", mask=masks[0])
    ids = {
        "crops": p.add("PreviewImage", images=dec[1]),
        "preview": p.add("PreviewImage", images=dec[2]),
        "mask": p.add("PreviewImage", images=mask_img[0]),
        "colours": p.add("PreviewImage", images=masks[1]),
        "annotated": p.add("PreviewImage", images=p.add("FaceXPreviewFace", crops=dec[1], representation=dec[0])[0]),
    }
    p.add("FaceXSaveRepresentation", representation=dec[0], name="ford_server_astronaut")
    pasted = p.add("FaceXPasteBack", image=img[0], crops=dec[1], representation=dec[0], feather=16, colour_match=True)
    ids["pasted"] = p.add("SaveImage", images=pasted[0], filename_prefix="facex_ford_pasted")
    outputs = comfy_server.run(p)
    return {k: node_image(comfy_server, outputs, v) for k, v in ids.items()}


def test_decompose_runs_in_the_server(comfy_server, astronaut_run, figures):
    assert astronaut_run["crops"].shape == (512, 512, 3)
    assert astronaut_run["preview"].shape == (512, 1024, 3)
    assert astronaut_run["annotated"].shape == (512, 1024, 3)
    rep = saved_face(comfy_server, "ford_server_astronaut")
    assert rep.batch_size == 1 and rep.crop_size == 512
    assert rep.backends == {"detect": "mediapipe", "landmarks": "mediapipe_mesh", "parse": "mediapipe_mesh",
                            "identity": "dlib_resnet", "motion": "mesh_pnp", "gaze": "iris"}
    assert rep.region_masks.shape == (1, len(REGIONS), 512, 512) and rep.landmarks.shape == (1, 478, 2)
    # the server's answer is the library's answer on the same pixels
    from facex_core.ford.decompose import decompose_faces

    local = decompose_faces(faces.to_image_batch(faces.astronaut()), "mediapipe", extractors=[], crop_size=512)
    assert np.abs(rep.landmarks5.numpy() - local.rep.landmarks5.numpy()).max() < 0.5
    # five points, mapped back to the photo, lie in the face
    pts = apply_affine(invert_affine(rep.affine[0].numpy()), rep.landmarks5[0].numpy())
    assert faces.box_contains(faces.ASTRONAUT_FACE_BOX, pts)


def test_region_masks_are_crop_sized_and_cover_the_head(astronaut_run):
    mask = astronaut_run["mask"].astype(np.float32) / 255
    assert mask.shape[:2] == (512, 512)
    head = mask[..., 0]
    assert head[256, 256] > 0.9, "the crop centre (the face) is head"
    assert head[500, 10] < 0.1, "the bottom corner (shoulder / background) is not"
    assert 0.2 < head.mean() < 0.8
    assert astronaut_run["colours"].shape == (512, 512, 3)


def test_paste_back_of_the_crop_reproduces_the_photo(astronaut_run):
    pasted = astronaut_run["pasted"].astype(np.float32)
    original = faces.astronaut().astype(np.float32)
    assert pasted.shape == original.shape
    x0, y0, x1, y1 = faces.ASTRONAUT_FACE_BOX
    assert np.abs(pasted - original)[y0:y1, x0:x1].mean() < 5.0, "the unmodified crop pasted back is the photo again"


def test_production_loaders_on_random_weights_through_the_ford_nodes(comfy_server, astronaut_input, ford_models):
    """Loader nodes -> FaceXDecompose's model inputs: RANDOM weights, real files, real code paths."""
    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    fa = p.add("FaceXInsightFaceLoader", pack="random_antelopev2", provider="CPU")
    ident = p.add("FaceXIdentityModelLoader", model_file=FROM_FACE_ANALYSIS, provider="CPU", face_analysis=fa[0])
    parser = p.add("FaceXParserLoader", model_file=f"{RANDOM_DIR_NAME}/79999_iter.pth")
    motion = p.add("FaceXMotionModelLoader", model_file=f"{RANDOM_DIR_NAME}/epoch_20.pth")
    gaze = p.add("FaceXGazeModelLoader", model_file=f"{RANDOM_DIR_NAME}/L2CSNet_gaze360.pkl")
    dec = p.add("FaceXDecompose", image=img[0], **{**DETECT, "crop_size": "256"}, identity_model=ident[0], parser=parser[0],
                motion_model=motion[0], gaze_model=gaze[0])
    p.add("FaceXSaveRepresentation", representation=dec[0], name="ford_server_random_production")
    # the same models one family at a time, after Detect & Align with dlib
    da = p.add("FaceXDetectAlign", image=img[0], **{**DETECT, "backend": "dlib", "crop_size": "256"})
    rep = p.add("FaceXParse", representation=da[0], crops=da[1], parser=parser[0])
    rep = p.add("FaceXMotion", representation=rep[0], crops=da[1], motion_model=motion[0])
    rep = p.add("FaceXGaze", representation=rep[0], crops=da[1], gaze_model=gaze[0])
    rep = p.add("FaceXIdentity", representation=rep[0], crops=da[1], identity_model=ident[0])
    p.add("FaceXSaveRepresentation", representation=rep[0], name="ford_server_random_production_steps")
    comfy_server.run(p)
    for name in ("ford_server_random_production", "ford_server_random_production_steps"):
        rep = saved_face(comfy_server, name)
        assert rep.backends["identity"] == "insightface_arcface:glintr100"
        assert rep.backends["parse"] == "bisenet_celebamask19"
        assert rep.backends["motion"] == rep.backends["texture"] == rep.backends["lighting"] == "deep3dfacerecon_bfm"
        assert rep.backends["gaze"] == "l2cs_gaze360"
        assert rep.identity.shape == (1, 512) and rep.identity_map.dim() == 4
        assert rep.region_masks.shape == (1, len(REGIONS), 256, 256)
        assert rep.pose.shape == (1, 3) and rep.lighting.shape == (1, 27) and rep.gaze.shape == (1, 2)
    assert saved_face(comfy_server, "ford_server_random_production_steps").backends["detect"] == "dlib"


def test_insightface_detector_through_detect_align(comfy_server, ford_models):
    """The RANDOM SCRFD stand-in fires on a bright 16-px cell: the face comes back where it was put."""
    img = np.zeros((640, 640, 3), np.uint8)
    img[96:112, 160:176] = 255
    name = comfy_server.save_input_image(img, "facex_random_scrfd_cell.png")
    p = Prompt()
    loaded = p.add("LoadImage", image=name)
    fa = p.add("FaceXInsightFaceLoader", pack="random_buffalo_l", provider="CPU")
    da = p.add("FaceXDetectAlign", image=loaded[0], **{**DETECT, "backend": "insightface", "crop_size": "256"},
               face_analysis=fa[0], dense_landmarks=False)
    p.add("FaceXSaveRepresentation", representation=da[0], name="ford_server_random_scrfd")
    comfy_server.run(p)
    rep = saved_face(comfy_server, "ford_server_random_scrfd")
    assert rep.backends == {"detect": "insightface_scrfd:det_10g"}
    kps = np.array(SCRFD_KPS_OFFSETS) * SCRFD_FIRING_STRIDE + [160, 96]  # insightface order: image-left eye first
    expected = kps[[1, 0, 2, 4, 3]]  # FaceX order
    got = apply_affine(invert_affine(rep.affine[0].numpy()), rep.landmarks5[0].numpy())
    np.testing.assert_allclose(got, expected, atol=0.5)


def _fails(server, prompt) -> str:
    with pytest.raises(ExecutionFailed) as e:
        server.run(prompt)
    server.assert_alive()
    return str(e.value)


def test_truncated_and_wrong_model_files_give_clear_errors(comfy_server, astronaut_input, ford_models):
    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    parser = p.add("FaceXParserLoader", model_file=f"{RANDOM_DIR_NAME}/truncated_random_79999_iter.pth")
    dec = p.add("FaceXDecompose", image=img[0], **{**DETECT, "min_face_size": 1}, parser=parser[0])
    p.add("PreviewImage", images=dec[2])
    msg = _fails(comfy_server, p)
    assert "truncated_random_79999_iter.pth" in msg and "truncated or corrupt" in msg

    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    motion = p.add("FaceXMotionModelLoader", model_file=f"{RANDOM_DIR_NAME}/79999_iter.pth")  # a BiSeNet file
    dec = p.add("FaceXDecompose", image=img[0], **{**DETECT, "min_face_size": 2}, motion_model=motion[0])
    p.add("PreviewImage", images=dec[2])
    msg = _fails(comfy_server, p)
    assert "79999_iter.pth" in msg and "missing keys" in msg


def test_user_errors_name_the_node_input_and_image(comfy_server, astronaut_input):
    blank = comfy_server.save_input_image(faces.blank(), "facex_blank_grey.png")
    p = Prompt()
    img = p.add("LoadImage", image=blank)
    dec = p.add("FaceXDecompose", image=img[0], **DETECT)
    p.add("PreviewImage", images=dec[2])
    msg = _fails(comfy_server, p)
    assert "FaceX Decompose (input 'image'): no face found in image 1 of 1 in the batch (0-based index 0)" in msg

    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    da = p.add("FaceXDetectAlign", image=img[0], **{**DETECT, "backend": "insightface"})
    p.add("PreviewImage", images=da[1])
    msg = _fails(comfy_server, p)
    assert "(input 'face_analysis'): backend 'insightface' needs a FACE_ANALYSIS connected" in msg

    p = Prompt()
    img = p.add("LoadImage", image=astronaut_input)
    da = p.add("FaceXDetectAlign", image=img[0], **{**DETECT, "crop_size": "256"}, dense_landmarks=False)
    masks = p.add("FaceXRegionMasks", representation=da[0], region="face")
    p.add("PreviewImage", images=masks[1])
    msg = _fails(comfy_server, p)
    assert "FaceX Region Masks (input 'representation'): it has no region masks" in msg
