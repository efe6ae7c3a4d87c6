"""The real ComfyUI frontend in headless Chromium: it loads a workflow with the FaceX pack
installed, reports unknown node types and page errors, converts the graph to a runnable prompt,
and leaves a screenshot in artifacts/."""

import copy
import json
import os

import pytest
from support.browser import load_workflow_in_editor
from support.comfy_server import next_seed, output_images

pytestmark = pytest.mark.e2e

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "workflows")


def _workflow(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def test_editor_loads_a_workflow_and_its_prompt_runs(comfy_server, random_sd15_tiny, artifacts_dir):
    workflow = _workflow("core_txt2img_random_sd15_tiny.json")
    shot = os.path.join(artifacts_dir, "e2e_editor_core_txt2img.png")
    if os.path.exists(shot):
        os.remove(shot)
    result = load_workflow_in_editor(comfy_server.url, workflow, shot)
    assert result["format"] == "ui"
    assert result["missing_node_types"] == []
    assert result["page_errors"] == []
    assert result["node_count"] == len(workflow["nodes"])
    assert sorted(result["graph_node_types"]) == sorted(n["type"] for n in workflow["nodes"])
    # The editor knows the pack's nodes (not only the test fixture's).
    assert [t for t in result["registered_facex_node_types"] if not t.startswith("FaceXTest")], result
    assert os.path.getsize(shot) > 10_000, "the screenshot is (nearly) empty"
    assert [r for r in result["failed_requests"] if "facex" in r.lower()] == []
    # The editor's own UI -> API conversion runs on the server.
    assert result["api_error"] is None, result["api_error"]
    prompt = copy.deepcopy(result["api_prompt"])
    assert sorted(n["class_type"] for n in prompt.values()) == sorted(n["type"] for n in workflow["nodes"])
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["seed"] = next_seed()
    images = output_images(comfy_server.run(prompt))
    assert len(images) == 1
    assert comfy_server.fetch_image(images[0]).shape == (256, 256, 3)


def test_editor_reports_unknown_node_types(comfy_server, artifacts_dir):
    workflow = _workflow("core_txt2img_random_sd15_tiny.json")
    unknown = copy.deepcopy(workflow["nodes"][3])  # an EmptyLatentImage, renamed to a type no pack has
    unknown.update(id=8, type="FaceXNoSuchNodeForTesting", pos=[420, 700])
    unknown["outputs"] = [{"name": "LATENT", "type": "LATENT", "links": [], "slot_index": 0}]
    workflow["nodes"].append(unknown)
    workflow["last_node_id"] = 8
    result = load_workflow_in_editor(comfy_server.url, workflow,
                                     os.path.join(artifacts_dir, "e2e_editor_unknown_node.png"))
    assert result["missing_node_types"] == ["FaceXNoSuchNodeForTesting"]
    assert result["node_count"] == len(workflow["nodes"])
    assert result["page_errors"] == []
