"""Every shareable workflow (workflows/*.json) runs end to end on the real ComfyUI server.

Each workflow is converted to the prompt a click on Queue sends (tests/support/workflows.ui_to_api,
proven equal to the editor's own graphToPrompt by tests/e2e/test_workflows_editor.py). Then only
what a user's machine differs in is changed:
- model file names -> random-weight test files: the tiny random SD1.5 (also for the community
  checkpoint), its random LoRA and ControlNet, and a FaceX checkpoint made by `facex init` for the
  tiny UNet, for the embedded FORD backends, with a non-zero random FRC bank (so FRC changes the
  image);
- photos -> two different real faces (the astronaut, public domain, is the workflows' own default;
  Grace Hopper, public domain, is the other face; animated WebPs for several frames);
- speed: 1 sampling step, 256-px aligned crops (the workflows ship 30 steps at 512 px), a new seed.
FORD runs on the embedded backends, as the workflows ship. Random weights make noise, never faces:
the checks are about sizes, batches, where the photo changed, and that FRC acted on every block.

Workflow-level bad input:
- source and target photos of different sizes: documented behaviour, the swaps here run with a
  512x512 source and a 512x600 target, and the result has the target's size;
- batch sizes that cannot be paired (2 source faces, 3 target faces): a clear error;
- a region missing in the donor face (attribute editing): a clear error;
- an empty region selection (attribute editing): a clear error.
One workflow also runs with CLIP region features from a random CLIP ViT-L/14 vision file loaded by
ComfyUI's own CLIPVisionLoader (the optional path the workflow notes describe).
"""

import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from facex_core.cli import main as facex_cli
from support import faces
from support.comfy_server import ExecutionFailed, next_seed, output_images
from support.workflows import (
    generator,
    load_workflows,
    nodes_of,
    random_clip_vision,
    replace_inputs,
    set_inputs,
    ui_to_api,
)

pytestmark = pytest.mark.comfy

WORKFLOWS = load_workflows()
TEST_CROP_SIZE = "256"
TEST_STEPS = 1


GEN = generator()
FACEX_TEST_CHECKPOINT = "facex_random_embedded_sd15_tiny.safetensors"

# Photos in the server's input folder: name -> how it is made.
PHOTOS = {
    "facex_test_grace_hopper.png": lambda: [faces.grace_hopper()],
    "facex_test_astronaut_mirrored.png": lambda: [faces.flip(faces.astronaut())],
    "facex_test_driving_frames.webp": lambda: [faces.grace_hopper(), faces.flip(faces.grace_hopper())],
    "facex_test_three_targets.webp": lambda: [faces.grace_hopper(), faces.flip(faces.grace_hopper()),
                                              faces.jpeg(faces.grace_hopper(), 40)],
    "facex_test_two_sources.webp": lambda: [faces.astronaut(), faces.flip(faces.astronaut())],
}
SIZE = {"astronaut": (512, 512), "grace": (600, 512)}  # (height, width)

# Load Image node title (prefix) -> the photo it gets. The workflows' own default photo is the
# astronaut, so source photos keep it.
PHOTO_BY_TITLE = (
    ("Source photo", GEN.DEMO_PHOTO),
    ("Photo", GEN.DEMO_PHOTO),
    ("Target photo", "facex_test_grace_hopper.png"),
    ("Driving photo", "facex_test_grace_hopper.png"),
    ("Donor photo", "facex_test_grace_hopper.png"),
    ("Hair donor photo", "facex_test_astronaut_mirrored.png"),
    ("Driving frames", "facex_test_driving_frames.webp"),
)

# workflow -> (photo whose picture is edited, frames in the result). Ordered so that workflows
# with the same leading nodes follow each other (ComfyUI reuses the unchanged decompositions).
RUNS = {
    "facex_face_swap": ("grace", 1),
    "facex_head_swap": ("grace", 1),
    "facex_reenactment": ("astronaut", 1),
    "facex_attribute_editing": ("astronaut", 1),
    "facex_animation": ("astronaut", 2),
    "facex_controlnet_lora": ("grace", 1),
    "facex_inpainting": ("astronaut", 1),
    "facex_mixture_editing": ("grace", 1),
    "facex_training_free_face_swap": ("grace", 1),
    "facex_training_free_head_swap": ("grace", 1),
}
FRC_WORKFLOWS = {n for n, wf in WORKFLOWS.items() if any(x["type"] == "FaceXApplyFRC" for x in wf["nodes"])}


def _save_frames(frames, path):
    images = [Image.fromarray(f) for f in frames]
    if len(images) == 1:
        images[0].save(path)
    else:  # an animated WebP: ComfyUI's Load Image reads every frame as one batch
        images[0].save(path, save_all=True, append_images=images[1:], lossless=True, duration=100)


@pytest.fixture(scope="module")
def setup(comfy_server, random_sd15_tiny, random_lora_sd15_tiny, random_controlnet_sd15_tiny, astronaut_input, figures):
    """Model files, photos and the node definitions the workflows run with."""
    models = comfy_server.models_dir
    unet = os.path.join(models, "checkpoints", random_sd15_tiny)
    out = os.path.join(models, "facex", FACEX_TEST_CHECKPOINT)
    assert facex_cli(["init", "--family", "sd15", "--backends", "embedded", "--unet", unet, "--out", out,
                      "--random-bank-std", "0.5"]) == 0
    for name, make in PHOTOS.items():
        _save_frames(make(), os.path.join(comfy_server.input_dir, name))
    with Image.open(os.path.join(comfy_server.input_dir, "facex_test_three_targets.webp")) as im:
        assert getattr(im, "n_frames", 1) == 3, "this Pillow cannot write animated WebP"
    models_map = {
        GEN.SD15_CHECKPOINT: random_sd15_tiny,
        GEN.COMMUNITY_SD15_CHECKPOINT: random_sd15_tiny,
        GEN.FACEX_CHECKPOINT: FACEX_TEST_CHECKPOINT,
        GEN.LORA_FILE: random_lora_sd15_tiny,
        GEN.CONTROLNET_FILE: random_controlnet_sd15_tiny,
    }
    return {"object_info": comfy_server.object_info(), "models": models_map, "figures": figures}


def prompt_for(setup, name: str, **photos_by_title) -> dict:
    """The workflow's prompt with test models, test photos (by Load Image title; keyword
    arguments override), 1 step, 256-px crops and a new seed."""
    prompt = ui_to_api(WORKFLOWS[name], setup["object_info"])
    wanted = {v for n in prompt.values() for v in n["inputs"].values() if isinstance(v, str) and v in setup["models"]}
    prompt, used = replace_inputs(prompt, setup["models"])
    assert used == wanted, f"{name}: model names {wanted} replaced: {used}"
    photos = [(t.replace("_", " "), p) for t, p in photos_by_title.items()] + list(PHOTO_BY_TITLE)
    for node_id in nodes_of(prompt, "LoadImage"):
        title = prompt[node_id]["_meta"]["title"]
        match = [p for prefix, p in photos if title.startswith(prefix)]
        assert match, f"{name}: no test photo for Load Image {title!r}"
        prompt[node_id]["inputs"]["image"] = match[0]
    assert set_inputs(prompt, "FaceXDecompose", crop_size=TEST_CROP_SIZE) >= 1
    set_inputs(prompt, "KSampler", steps=TEST_STEPS, seed=next_seed())
    return prompt


def add_frc_inspection(prompt: dict) -> str:
    """A FaceX Inspect FRC node on the patched model, run after the sampler; returns its id."""
    (frc,), (sampler,) = nodes_of(prompt, "FaceXApplyFRC"), nodes_of(prompt, "KSampler")
    node_id = str(max(int(k) for k in prompt) + 1)
    prompt[node_id] = {"class_type": "FaceXInspectFRC", "inputs": {"model": [frc, 0], "after": [sampler, 0]}}
    return node_id


def fetch_frames(server, ref) -> list[np.ndarray]:
    r = server.get("/view", params={"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                    "type": ref.get("type", "output")})
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as im:
        frames = []
        for k in range(getattr(im, "n_frames", 1)):
            im.seek(k)
            frames.append(np.array(im.convert("RGB")))
    return frames


def canvas_photo(which: str) -> np.ndarray:
    return faces.astronaut() if which == "astronaut" else faces.grace_hopper()


@pytest.mark.parametrize("name", list(RUNS))
def test_workflow_runs_end_to_end(comfy_server, setup, artifacts_dir, name):
    canvas, frames = RUNS[name]
    prompt = prompt_for(setup, name)
    inspect = add_frc_inspection(prompt) if name in FRC_WORKFLOWS else None
    t0 = time.perf_counter()
    outputs = comfy_server.run(prompt, timeout=600)
    setup["figures"][f"workflow_run_seconds.{name}"] = round(time.perf_counter() - t0, 2)

    # The result: one image per frame, in the size of the photo being edited.
    (saver,) = nodes_of(prompt, "SaveAnimatedWEBP" if frames > 1 else "SaveImage")
    refs = outputs[saver]["images"]
    results = [f for ref in refs for f in fetch_frames(comfy_server, ref)]
    assert len(results) == frames
    original = canvas_photo(canvas)
    shots = os.path.join(artifacts_dir, "workflow_runs")
    os.makedirs(shots, exist_ok=True)
    Image.fromarray(np.concatenate(results, axis=1)).save(os.path.join(shots, f"{name}_random_weights.png"))
    for k, result in enumerate(results):
        assert result.shape == (*SIZE[canvas], 3), f"frame {k}"
        # Paste-back changed the face area and nothing else (PNG round trip: at most 1 level off).
        changed = (np.abs(result.astype(int) - original.astype(int)).max(axis=2) > 2).mean()
        assert 0.005 < changed < 0.5, f"frame {k}: {changed:.1%} of the photo changed"

    # The region assembler's preview: reference | reference with the mask, per aligned crop.
    (preview,) = [k for k in nodes_of(prompt, "PreviewImage") if prompt[k]["_meta"]["title"] == "Reference and mask"]
    shots = output_images({preview: outputs[preview]})
    assert len(shots) == frames
    assert comfy_server.fetch_image(shots[0]).shape == (int(TEST_CROP_SIZE), 2 * int(TEST_CROP_SIZE), 3)

    if inspect is not None:
        (report,) = json.loads(outputs[inspect]["text"][0])["frc_patches"]
        assert report["blocks"] > 0 and report["fired"] == report["blocks"] and report["not_fired"] == []
        (plan,) = nodes_of(prompt, "PreviewAny")
        task = prompt[nodes_of(prompt, "FaceXRepresentationAssembler")[-1]]["inputs"]["task"]
        assert f"task: {task}" in outputs[plan]["text"][0]


def test_source_and_target_photos_of_different_sizes_are_documented_to_work():
    """The swaps above edit the 512x600 target with a 512x512 source; FORD aligns both to the same
    crop, and the result takes the target's size (asserted in test_workflow_runs_end_to_end)."""
    assert SIZE["astronaut"] != SIZE["grace"]
    assert all(RUNS[n][0] == "grace" for n in RUNS if "swap" in n)
    for name in (n for n in RUNS if "swap" in n):
        titles = {x.get("title") for x in WORKFLOWS[name]["nodes"] if x["type"] == "LoadImage"}
        assert any(t.startswith("Source photo") for t in titles) and any(t.startswith("Target photo") for t in titles)


def test_the_decomposition_demo_saves_a_face_from_the_embedded_backends(comfy_server, setup):
    from facex_core.representation import FaceRepresentation

    prompt = prompt_for(setup, "facex_decompose_demo")
    (save,) = nodes_of(prompt, "FaceXSaveRepresentation")
    name = prompt[save]["inputs"]["name"]
    path = os.path.join(comfy_server.models_dir, "facex", "faces", f"{name}.safetensors")
    if os.path.exists(path):
        os.remove(path)
    outputs = comfy_server.run(prompt)
    assert outputs[save]["text"] == [path]
    rep = FaceRepresentation.load(path)
    assert rep.batch_size == 1 and rep.crop_size == int(TEST_CROP_SIZE)
    assert tuple(rep.region_masks.shape) == (1, 10, 256, 256)
    assert rep.identity.shape == (1, 128) and rep.pose.shape == (1, 3) and rep.gaze.shape == (1, 2)
    assert rep.region_features is None  # embedded backends only: no CLIP
    assert rep.backends["parse"] == "mediapipe_mesh" and rep.backends["identity"] == "dlib_resnet"
    previews = {prompt[k]["_meta"]["title"]: comfy_server.fetch_image(output_images({k: outputs[k]})[0]).shape
                for k in nodes_of(prompt, "PreviewImage")}
    assert previews["Aligned crop"] == (256, 256, 3)
    assert previews["Region colours"] == (256, 256, 3)
    overview = previews["Overview: landmarks, pose axes, regions"]
    assert overview[0] == 256 and overview[1] >= 256
    assert previews["Head mask (face, ears, hair)"] == (256, 256, 3)


def test_region_features_from_a_random_clip_vision_model(comfy_server, setup):
    """The optional CLIP path the workflow notes describe: Load CLIP Vision (ComfyUI's own loader)
    with a random-weight file of the real ViT-L/14 layout, into FaceX Decompose's clip_vision."""
    from facex_core.representation import FaceRepresentation

    name, report = random_clip_vision(comfy_server.models_dir, comfy_server.comfyui, comfy_server.python)
    setup["figures"]["random_clip_vision_vit_l_14_mib"] = round(report["bytes"] / 2**20, 1)
    prompt = prompt_for(setup, "facex_decompose_demo")
    (decompose,), (save,) = nodes_of(prompt, "FaceXDecompose"), nodes_of(prompt, "FaceXSaveRepresentation")
    loader = str(max(int(k) for k in prompt) + 1)
    prompt[loader] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": name}}
    prompt[decompose]["inputs"]["clip_vision"] = [loader, 0]
    prompt[save]["inputs"]["name"] = "random_clip_astronaut"
    outputs = comfy_server.run(prompt)
    rep = FaceRepresentation.load(outputs[save]["text"][0])
    assert tuple(rep.region_features.shape) == (1, 10, 1024)  # one ViT-L feature per region
    assert tuple(rep.clip_tokens.shape) == (1, 256, 1024)  # 16 x 16 patches of a 224-px ViT-L/14
    assert rep.region_features.abs().sum(-1).gt(0).sum() >= 5  # most regions present in the crop


def test_face_swap_with_clip_region_features_runs_and_the_regions_steer_frc(comfy_server, setup):
    """The shipped FaceX workflows leave CLIP vision optional (their notes say how to connect it).
    Connected to every FaceX Decompose, with a random-weight file of the real ViT-L/14 layout, the
    face swap runs end to end, FaceX Apply FRC accepts the CLIP region features (an embedded-backend
    checkpoint, clip_region_pool), and the region tokens change the result against the same seed
    without them."""
    name, _ = random_clip_vision(comfy_server.models_dir, comfy_server.comfyui, comfy_server.python)
    plain = prompt_for(setup, "facex_face_swap")
    with_clip = json.loads(json.dumps(plain))
    loader = str(max(int(k) for k in with_clip) + 1)
    with_clip[loader] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": name}}
    for node_id in nodes_of(with_clip, "FaceXDecompose"):
        with_clip[node_id]["inputs"]["clip_vision"] = [loader, 0]
    inspect = add_frc_inspection(with_clip)
    results = []
    for prompt in (plain, with_clip):
        outputs = comfy_server.run(prompt, timeout=600)
        (saver,) = nodes_of(prompt, "SaveImage")
        (frame,) = [f for ref in outputs[saver]["images"] for f in fetch_frames(comfy_server, ref)]
        assert frame.shape == (*SIZE["grace"], 3)
        results.append(frame)
    (report,) = json.loads(outputs[inspect]["text"][0])["frc_patches"]
    assert report["not_fired"] == [] and report["fired"] == report["blocks"] > 0
    assert np.abs(results[0].astype(int) - results[1].astype(int)).max() > 2, "CLIP region tokens changed nothing"


# ---- bad input at the workflow level ------------------------------------------------------------


def _fails(server, prompt) -> str:
    with pytest.raises(ExecutionFailed) as excinfo:
        server.run(prompt)
    server.assert_alive()
    return str(excinfo.value)


def test_batch_sizes_that_cannot_be_paired_give_a_clear_error(comfy_server, setup):
    prompt = prompt_for(setup, "facex_training_free_face_swap", Source_photo="facex_test_two_sources.webp",
                        Target_photo="facex_test_three_targets.webp")
    message = _fails(comfy_server, prompt)
    assert re.search(r"FaceXRegionAssembler.*batch sizes do not match \(source has 2, target has 3\); each input must "
                     r"hold the same number of faces, or exactly one face", message, re.S), message[:1500]


def test_an_empty_region_selection_gives_a_clear_error(comfy_server, setup):
    prompt = prompt_for(setup, "facex_attribute_editing")
    (regions,) = nodes_of(prompt, "FaceXRegionAssembler")
    prompt[regions]["inputs"]["regions"] = " , "
    message = _fails(comfy_server, prompt)
    assert re.search(r"FaceXRegionAssembler.*attribute_editing needs the regions to take from the target face "
                     r"\(e\.g\. 'hair' or 'eyes, eyebrows'\); known regions: skin, eyebrows", message, re.S), message[:1500]


def _face_only_photo(comfy_server, setup) -> str:
    """Grace Hopper's aligned face (skin, brows, eyes, nose, lips) on flat grey, made with FaceX's
    own nodes: a face with no neck for the parser to find."""
    object_info = setup["object_info"]
    p = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "facex_test_grace_hopper.png"}},
        "2": {"class_type": "FaceXDecompose", "inputs": {"image": ["1", 0], "crop_size": TEST_CROP_SIZE}},
        "3": {"class_type": "FaceXRegionMasks", "inputs": {"representation": ["2", 0], "region": "face"}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0x808080}},
        "5": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["4", 0], "source": ["2", 1], "x": 0, "y": 0,
                                                               "resize_source": False, "mask": ["3", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "facex_test_face_only"}},
    }
    for node in p.values():  # fill the defaults of widgets left out
        spec = object_info[node["class_type"]]["input"]
        for name, s in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            if name not in node["inputs"] and len(s) > 1 and "default" in s[1]:
                node["inputs"][name] = s[1]["default"]
    (ref,) = output_images(comfy_server.run(p))
    name = "facex_test_face_only.png"
    shutil.copyfile(os.path.join(comfy_server.output_dir, ref.get("subfolder", ""), ref["filename"]),
                    os.path.join(comfy_server.input_dir, name))
    return name


def test_a_region_missing_in_the_donor_face_gives_a_clear_error(comfy_server, setup):
    donor = _face_only_photo(comfy_server, setup)
    prompt = prompt_for(setup, "facex_attribute_editing", Donor_photo=donor)
    (regions,), (assembler,) = nodes_of(prompt, "FaceXRegionAssembler"), nodes_of(prompt, "FaceXRepresentationAssembler")
    prompt[regions]["inputs"]["regions"] = "neck"
    prompt[assembler]["inputs"]["region_overrides"] = "neck=target"
    message = _fails(comfy_server, prompt)
    assert re.search(r"FaceXRegionAssembler.*attribute_editing: region 'neck' is empty in the target face, batch "
                     r"item\(s\) \[0\] \(0-based\), so there is nothing to take; use a target face that has it, or set "
                     r"neck=none in the representation assembler", message, re.S), message[:1500]
