"""FORD models live under ComfyUI's memory management (nodes/memory.py), in the real server.

After a FaceXDecompose with the production loaders (RANDOM-weight files) the torch networks and the
stand-in for the other FORD caches are in ComfyUI's loaded-model list; POST /free (what the UI's
free-memory buttons send) unloads them and drops the cached sessions and graphs; the next run loads
them again and gives the same representation as before.
"""

from __future__ import annotations

import itertools
import os
import re
import time

import pytest
import torch

from facex_core.representation import FaceRepresentation
from support.comfy_server import Prompt
from support.random_ford_weights import RANDOM_DIR_NAME, install_random_models

pytestmark = pytest.mark.comfy

FORD_MODELS = {"FordCaches", "BiSeNetFaceParser", "Deep3DReconNet", "L2CSNet"}
FREED = re.compile(r"FaceX: ComfyUI freed memory; dropped (\d+) cached FORD")
_nonce = itertools.count(1)


@pytest.fixture(scope="module")
def random_models(comfy_server):
    return install_random_models(comfy_server.models_dir)


def decompose_prompt(image: str, name: str, min_face_size: int) -> Prompt:
    """Every kind of FORD model: onnxruntime (SCRFD + ArcFace), torch (BiSeNet, Deep3D, L2CS), MediaPipe."""
    p = Prompt()
    img = p.add("LoadImage", image=image)
    fa = p.add("FaceXInsightFaceLoader", pack="random_antelopev2", provider="auto")  # ComfyUI's device: CPU here
    ident = p.add("FaceXIdentityModelLoader", model_file="(ArcFace of the face_analysis input)", provider="auto", face_analysis=fa[0])
    parser = p.add("FaceXParserLoader", model_file=f"{RANDOM_DIR_NAME}/79999_iter.pth")
    motion = p.add("FaceXMotionModelLoader", model_file=f"{RANDOM_DIR_NAME}/epoch_20.pth")
    gaze = p.add("FaceXGazeModelLoader", model_file=f"{RANDOM_DIR_NAME}/L2CSNet_gaze360.pkl")
    dec = p.add("FaceXDecompose", image=img[0], backend="mediapipe", crop_size="256", face_choice="largest", index=0,
                min_face_size=min_face_size, identity_model=ident[0], parser=parser[0], motion_model=motion[0], gaze_model=gaze[0])
    p.add("FaceXSaveRepresentation", representation=dec[0], name=name)
    return p


def inspect_prompt() -> Prompt:
    p = Prompt()
    p.add("FaceXTestLoadedModels", nonce=next(_nonce))
    return p


def loaded_models(server, prompt: Prompt) -> dict[str, dict]:
    """What ComfyUI holds loaded, reported by the test pack's node (``prompt`` from inspect_prompt())."""
    (node,) = prompt.find("FaceXTestLoadedModels")
    rows = server.run(prompt)[str(node)]["loaded_models"]
    return {row["class"]: row for row in rows}


def free(server, last_prompt: Prompt, **flags) -> int:
    """POST /free and wait until FaceX logs that ComfyUI dropped its caches; how many it dropped.

    The last prompt is queued again right after: ComfyUI 0.3.75's worker reads the flags once per
    loop, after any prompt, then waits up to 1000 s for the next one, so a POST landing between the
    two sets the flag but wakes nobody. The repeated prompt wakes it; every node of it is cached, so
    nothing runs and the node cache keeps the same entries (another prompt would evict them). After
    free_memory (node cache reset) pass a prompt that loads nothing."""
    mark = server.log_mark()
    r = server.post("/free", json=flags)
    assert r.status_code == 200, r.text
    server.run(last_prompt)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = FREED.findall(server.log_text(mark))
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise AssertionError(f"POST /free {flags}: FaceX never logged that its caches were dropped\n{server.log_tail()}")


def saved(server, name: str) -> FaceRepresentation:
    return FaceRepresentation.load(os.path.join(server.models_dir, "facex", "faces", name + ".safetensors"))


def assert_same_faces(a: FaceRepresentation, b: FaceRepresentation) -> None:
    for field in ("landmarks5", "identity", "identity_map", "region_masks", "pose", "expression", "lighting", "gaze"):
        x, y = getattr(a, field), getattr(b, field)
        assert x is not None and torch.allclose(x, y, atol=1e-5), f"{field} changed after the models were released and reloaded"


def test_free_memory_releases_ford_models_and_the_next_run_reloads_them(comfy_server, astronaut_input, random_models):
    first = decompose_prompt(astronaut_input, "memory_before_free", min_face_size=0)
    comfy_server.run(first)

    # "Unload models": ComfyUI unloads what it holds, FaceX drops its sessions, graphs and networks
    dropped = free(comfy_server, first, unload_models=True)
    assert dropped >= 3, f"only {dropped} FORD cache entries dropped (expected SCRFD, ArcFace, the networks, MediaPipe graphs)"

    # the node cache is kept, so the loaders' outputs are reused and reopen what was dropped;
    # min_face_size changed so FaceXDecompose runs again
    comfy_server.run(decompose_prompt(astronaut_input, "memory_after_unload", min_face_size=1))
    assert_same_faces(saved(comfy_server, "memory_before_free"), saved(comfy_server, "memory_after_unload"))
    inspect = inspect_prompt()
    held = loaded_models(comfy_server, inspect)
    assert FORD_MODELS <= set(held), f"ComfyUI does not hold every FORD model after a run: {sorted(held)}"
    for name in FORD_MODELS - {"FordCaches"}:
        assert held[name]["weights_on"] == held[name]["device"], f"{name} did not run on ComfyUI's device: {held[name]}"

    free(comfy_server, inspect, unload_models=True)
    left = set(loaded_models(comfy_server, inspect_prompt())) & FORD_MODELS
    assert not left, f"still loaded after POST /free: {sorted(left)}"

    # "Free model and node cache": everything runs from scratch
    again = decompose_prompt(astronaut_input, "memory_before_free_all", min_face_size=0)
    comfy_server.run(again)
    free(comfy_server, inspect_prompt(), unload_models=True, free_memory=True)  # a nudge that loads nothing
    assert not set(loaded_models(comfy_server, inspect_prompt())) & FORD_MODELS
    comfy_server.run(decompose_prompt(astronaut_input, "memory_after_free_all", min_face_size=0))
    assert_same_faces(saved(comfy_server, "memory_before_free"), saved(comfy_server, "memory_after_free_all"))

    log = comfy_server.log_text()
    assert "memory leak with model" not in log, "ComfyUI reports a leaked model:\n" + comfy_server.log_tail(40)
    assert "Exception in thread" not in log, "a server thread died:\n" + comfy_server.log_tail(40)
    comfy_server.assert_alive()
