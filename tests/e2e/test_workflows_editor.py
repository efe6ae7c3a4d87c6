"""The shareable workflows (workflows/*.json) in the real ComfyUI editor, headless Chromium.

All workflows load in one editor session (tests/support/browser.py, load_workflows_in_editor):
- every node type is known and the page raises nothing while loading;
- the editor reads every link and widget the way the file means them: what it would save equals
  the file (so scripts/make_workflows.py writes the editor's own format);
- the editor's UI -> API conversion (graphToPrompt, what a click on Queue sends) equals
  tests/support/workflows.ui_to_api, which tests/comfy/test_workflows_run.py runs on the server;
- the committed files are what scripts/make_workflows.py makes from this server's node definitions;
- a screenshot per workflow lands in artifacts/workflows/<name>.png for a person to look at.
"""

import os

import pytest
from support.browser import load_workflows_in_editor
from support.workflows import comparable, generator, load_workflows, ui_to_api

pytestmark = pytest.mark.e2e

WORKFLOWS = load_workflows()
NAMES = sorted(WORKFLOWS)

# One workflow per FaceX task (issue 4), by file name.
EXPECTED = {
    "facex_face_swap", "facex_head_swap", "facex_reenactment", "facex_animation", "facex_attribute_editing",
    "facex_inpainting", "facex_mixture_editing", "facex_controlnet_lora", "facex_training_free_face_swap",
    "facex_training_free_head_swap", "facex_decompose_demo",
}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def editor(comfy_server, astronaut_input, artifacts_dir, figures):
    out = load_workflows_in_editor(comfy_server.url, WORKFLOWS, os.path.join(artifacts_dir, "workflows"))
    figures["editor_startup_seconds"] = round(out["startup_seconds"], 2)
    figures["editor_load_convert_screenshot_seconds_per_workflow_max"] = round(
        max(r["seconds"] for r in out["results"].values()), 2)
    return out


def test_one_workflow_per_task_each_with_a_note_naming_its_model_files():
    assert set(WORKFLOWS) == EXPECTED
    for name, wf in WORKFLOWS.items():
        notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
        assert notes, f"{name} has no note"
        text = "\n".join(n["widgets_values"][0] for n in notes)
        assert "facex_astronaut.png" in text and "input/" in text, name
        types = {n["type"] for n in wf["nodes"]}
        if "FaceXModelLoader" in types:
            assert "models/facex/facex_sd15.safetensors" in text and "facex train" in text, name
            # the checkpoint must fit the embedded FORD backends FaceX Decompose runs here
            assert "facex init" in text and "--backends embedded" in text, name
        if "CheckpointLoaderSimple" in types:
            ckpt = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"][0]
            assert f"models/checkpoints/{ckpt}" in text, name
        if "CLIPVisionLoader" in types:
            assert "models/clip_vision/" in text, name
        if "LoraLoader" in types:
            assert "models/loras/" in text, name
        if "ControlNetLoader" in types:
            assert "models/controlnet/" in text, name


def test_committed_workflows_are_what_the_generator_makes_from_this_servers_nodes(object_info):
    gen = generator()
    built = gen.build_all(object_info)
    assert sorted(built) == NAMES
    for name in NAMES:
        assert built[name] == WORKFLOWS[name], (
            f"workflows/{name}.json is out of date: run scripts/make_workflows.py")


def test_the_editor_starts_cleanly(editor):
    assert editor["startup_page_errors"] == []


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_in_the_editor_without_missing_nodes_or_page_errors(editor, name):
    wf, result = WORKFLOWS[name], editor["results"][name]
    assert result["missing_node_types"] == []
    assert result["load_error"] is None
    assert result["page_errors"] == []
    assert result["node_count"] == len(wf["nodes"])
    assert sorted(result["graph_node_types"]) == sorted(n["type"] for n in wf["nodes"])
    shot = result["screenshot"]
    assert os.path.getsize(shot) > 20_000, f"{shot} is (nearly) empty"


def _semantic(graph: dict) -> dict:
    """What a saved workflow means: per node its type, title, mode, sockets and widgets with their
    links, outputs with their links, widget values; and the links. Layout (pos, size, order) left out."""
    nodes = {}
    for n in graph["nodes"]:
        nodes[n["id"]] = {
            "type": n["type"], "title": n.get("title"), "mode": n.get("mode", 0),
            "inputs": [(i["name"], i["type"], i.get("link"), (i.get("widget") or {}).get("name"), i.get("shape"))
                       for i in n.get("inputs") or []],
            "outputs": [(o["name"], o["type"], sorted(o.get("links") or [])) for o in n.get("outputs") or []],
            "widgets_values": n.get("widgets_values"),
        }
    links = sorted(tuple(l) for l in graph.get("links", []))
    return {"nodes": nodes, "links": links}


@pytest.mark.parametrize("name", NAMES)
def test_the_editor_reads_every_link_and_widget_as_the_file_means_them(editor, name):
    saved = editor["results"][name]["saved_graph"]
    assert saved is not None
    want, got = _semantic(WORKFLOWS[name]), _semantic(saved)
    assert got["links"] == want["links"]
    for node_id, node in want["nodes"].items():
        assert got["nodes"][node_id] == node, f"node {node_id} ({node['type']}) changed when the editor read it"


@pytest.mark.parametrize("name", NAMES)
def test_the_editors_prompt_equals_the_python_conversion(editor, object_info, name):
    result = editor["results"][name]
    assert result["api_error"] is None, result["api_error"]
    api = result["api_prompt"]
    wf = WORKFLOWS[name]
    # every node but the notes is sent
    assert sorted(n["class_type"] for n in api.values()) == sorted(
        n["type"] for n in wf["nodes"] if n["type"] not in ("MarkdownNote", "Note"))
    assert comparable(api) == comparable(ui_to_api(wf, object_info))


def test_the_editors_template_browser_offers_every_workflow(comfy_server):
    """ComfyUI serves a pack's workflows/ folder to the editor's template browser."""
    from support.comfy_server import PACK_NAME

    r = comfy_server.get("/api/workflow_templates")
    assert r.status_code == 200
    assert sorted(r.json().get(PACK_NAME, [])) == NAMES
    for name in NAMES:
        served = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert served.status_code == 200 and served.json() == WORKFLOWS[name], name
