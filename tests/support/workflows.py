"""Shared helpers for the shareable workflows (workflows/*.json, made by scripts/make_workflows.py).

- `load_workflows()`: every committed workflow, by name; `generator()`: scripts/make_workflows.py.
- `ui_to_api(workflow, object_info)`: the UI -> API prompt conversion the editor does when a user
  clicks Queue (app.graphToPrompt), in Python. tests/e2e/test_workflows_editor.py proves it equal to
  the real editor's output for every workflow, so tests/comfy/test_workflows_run.py can run the
  exact prompt a user's click would queue without a browser.
- `replace_inputs(prompt, {old value: new value})`: swap the users' model and photo names for test
  files, and report which were used.
- `random_clip_vision(...)`: a CLIP ViT-L/14 vision file with the real layout (built from ComfyUI's
  own clip_vision_config_vitl.json and classes) and random values, that ComfyUI's CLIPVisionLoader
  detects and loads. Cached under tests/.cache/random_models/. Its name contains `random`.

Run as a script (what the CLIP vision cache uses, with ComfyUI importable and --cpu):
    python tests/support/workflows.py --comfyui DIR build-clip-vision OUT.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(TESTS_DIR)
WORKFLOWS_DIR = os.path.join(REPO_ROOT, "workflows")
CACHE_DIR = os.path.join(TESTS_DIR, ".cache", "random_models")

# Nodes that live only in the editor: never part of a prompt (the editor skips them too).
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Widgets the editor's own extensions add to a node: not in /object_info nor in the saved workflow,
# but sent with the prompt (the server ignores them). Preview as Text shows its result in one.
EDITOR_ADDED_INPUTS = {"PreviewAny": {"preview": ""}}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


def generator():
    """scripts/make_workflows.py as a module (its declarations, names and build_all)."""
    import importlib.util

    if "make_workflows" in sys.modules:
        return sys.modules["make_workflows"]
    spec = importlib.util.spec_from_file_location("make_workflows", os.path.join(REPO_ROOT, "scripts", "make_workflows.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_workflows"] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["make_workflows"]
        raise
    return module


def load_workflows(folder: str = WORKFLOWS_DIR) -> dict[str, dict]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out[name[:-5]] = json.load(f)
    return out


# ---------------------------------------------------------------------------------------------
# UI -> API


class ConversionError(ValueError):
    pass


def _widget_slots(spec: dict) -> list[tuple[str, bool]]:
    """(input name, sent to the server?) for each entry of a node's widgets_values, in order:
    a seed's "control after generate" value and an upload button stay in the editor."""
    slots = []
    order = spec.get("input_order") or {s: list((spec.get("input") or {}).get(s, {})) for s in ("required", "optional")}
    for section in ("required", "optional"):
        defs = (spec.get("input") or {}).get(section, {}) or {}
        for name in order.get(section, []):
            kind = defs[name][0]
            opts = defs[name][1] if len(defs[name]) > 1 and isinstance(defs[name][1], dict) else {}
            if isinstance(kind, list):
                kind = "COMBO"
            if kind not in WIDGET_TYPES or opts.get("forceInput"):
                continue
            slots.append((name, True))
            control = opts.get("control_after_generate")
            if kind in ("INT", "COMBO") and (control if control is not None else (kind == "INT" and name in ("seed", "noise_seed"))):
                slots.append((f"{name}:control", False))
            if any(k.endswith("_upload") and v for k, v in opts.items()):
                slots.append((f"{name}:upload", False))
    return slots


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API prompt {node id: {"inputs", "class_type", "_meta": {"title"}}} of a UI-format workflow,
    as the editor's graphToPrompt builds it: editor-only nodes and muted nodes left out, widget
    values by name (editor-only widgets dropped), links as [origin id, origin slot]."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODE_TYPES or node.get("mode", MODE_ALWAYS) == MODE_NEVER:
            continue
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise ConversionError(f"node {node['id']} ({kind}) has mode {node.get('mode')}: bypass is not converted here")
        if kind not in object_info:
            raise ConversionError(f"node {node['id']}: type {kind!r} is not registered on the server")
        spec = object_info[kind]
        inputs = dict(EDITOR_ADDED_INPUTS.get(kind, {}))
        slots = _widget_slots(spec)
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some custom nodes save widgets by name
            inputs.update({k: v for k, v in values.items() if k in dict(slots)})
        else:
            if len(values) != len(slots):
                raise ConversionError(f"node {node['id']} ({kind}): {len(values)} widget values for widgets "
                                      f"{[n for n, _ in slots]}")
            inputs.update({name: value for (name, sent), value in zip(slots, values) if sent})
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                raise ConversionError(f"node {node['id']} ({kind}) input {slot['name']!r}: link {link_id} does not exist")
            origin = nodes.get(link[1])
            if origin is None or origin["type"] in VIRTUAL_NODE_TYPES or origin.get("mode", 0) == MODE_NEVER:
                continue  # the editor drops inputs from nodes that are not sent
            inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": kind,
                                   "_meta": {"title": node.get("title") or spec.get("display_name") or kind}}
    return prompt


def comparable(prompt: dict) -> dict:
    """A prompt without what does not reach the server (titles), for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def replace_inputs(prompt: dict, mapping: dict) -> tuple[dict, set]:
    """A copy of `prompt` with every string input equal to a key of `mapping` replaced by its
    value; also returns the keys that were found."""
    out = copy.deepcopy(prompt)
    used = set()
    for node in out.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value in mapping:
                node["inputs"][name] = mapping[value]
                used.add(value)
    return out, used


def set_inputs(prompt: dict, class_type: str, **values) -> int:
    """Set widget inputs on every node of a type; returns how many nodes were changed."""
    n = 0
    for node in prompt.values():
        if node["class_type"] == class_type:
            node["inputs"].update(values)
            n += 1
    return n


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


# ---------------------------------------------------------------------------------------------
# Random CLIP vision (ViT-L/14 layout)

CLIP_VISION_NAME = "facex_random_clip_vision_vit_l_14.safetensors"
CLIP_VISION_SEED = 11


def _clip_vision_state_dict(comfyui_dir: str) -> dict:
    """Subprocess side: tensor names and shapes from ComfyUI's own ViT-L config and classes,
    values from tests/support/random_checkpoints.random_tensor (scaled, fp16, deterministic)."""
    import torch
    import comfy.clip_model
    import comfy.ops

    from support.random_checkpoints import random_state_dict

    with open(os.path.join(comfyui_dir, "comfy", "clip_vision_config_vitl.json")) as f:
        config = json.load(f)
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.disable_weight_init)
    return random_state_dict(model, CLIP_VISION_SEED, torch.float16)


def build_clip_vision(out_path: str, comfyui_dir: str) -> dict:
    """Write and verify the random CLIP vision file (subprocess side)."""
    import logging

    import torch
    from safetensors.torch import save_file

    import comfy.clip_vision

    t0 = time.perf_counter()
    sd = _clip_vision_state_dict(comfyui_dir)
    tmp = out_path + ".part"
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp,
              metadata={"facex_random": "true", "kind": "clip_vision_vit_l_14",
                        "note": "random weights with the real CLIP ViT-L/14 vision layout, for tests only; not a model"})
    os.replace(tmp, out_path)
    built = time.perf_counter() - t0
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger().addHandler(handler)
    model = comfy.clip_vision.load(out_path)
    logging.getLogger().removeHandler(handler)
    if model is None:
        raise RuntimeError("ComfyUI's clip_vision.load did not recognise the random CLIP vision file")
    problems = [m for m in records if "missing" in m.lower() or "unexpected" in m.lower()]
    if problems:
        raise RuntimeError(f"ComfyUI loaded the random CLIP vision file with problems: {problems[:3]}")
    out = model.encode_image(torch.rand(1, 224, 224, 3))
    states = out["penultimate_hidden_states"]
    if tuple(states.shape) != (1, 257, 1024) or not torch.isfinite(states).all():
        raise RuntimeError(f"random CLIP vision gives penultimate states {tuple(states.shape)}, finite={bool(torch.isfinite(states).all())}")
    return {"build_seconds": round(built, 2), "bytes": os.path.getsize(out_path),
            "parameters": sum(v.numel() for v in sd.values()), "penultimate_shape": list(states.shape)}


def _content_key(comfyui_dir: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in (os.path.abspath(__file__), os.path.join(TESTS_DIR, "support", "random_checkpoints.py"),
                 os.path.join(comfyui_dir, "comfy", "clip_vision_config_vitl.json"),
                 os.path.join(comfyui_dir, "comfyui_version.py")):
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def random_clip_vision(models_dir: str, comfyui_dir: str, python: str | None = None) -> tuple[str, dict]:
    """Link the cached random CLIP vision file into <models_dir>/clip_vision/ (building it first
    if needed, in a subprocess); returns (name for CLIPVisionLoader, build report)."""
    import fcntl

    from support.random_checkpoints import _link

    os.makedirs(CACHE_DIR, exist_ok=True)
    stem = CLIP_VISION_NAME[: -len(".safetensors")]
    path = os.path.join(CACHE_DIR, f"{stem}-{_content_key(comfyui_dir)}.safetensors")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            for old in os.listdir(CACHE_DIR):  # an older build of the same kind
                if old.startswith(stem + "-") and not old.endswith(".lock"):
                    os.remove(os.path.join(CACHE_DIR, old))
            cmd = [python or sys.executable, os.path.abspath(__file__), "--comfyui", comfyui_dir, "build-clip-vision", path]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=comfyui_dir)
            if proc.returncode != 0 or not os.path.exists(path):
                raise RuntimeError(f"building the random CLIP vision file failed (exit {proc.returncode}):\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
            with open(path + ".json", "w") as f:
                f.write(proc.stdout.strip().splitlines()[-1] + "\n")
    with open(path + ".json") as f:
        report = json.load(f)
    _link(path, os.path.join(models_dir, "clip_vision", CLIP_VISION_NAME))
    return CLIP_VISION_NAME, report


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="build random test files for the workflow tests")
    parser.add_argument("--comfyui", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-clip-vision")
    b.add_argument("out")
    args = parser.parse_args(argv)
    # ComfyUI parses the process command line at import; give it --cpu and nothing else.
    # Its tree goes first: tests/ has a folder named `comfy` too.
    sys.path.insert(0, args.comfyui)
    sys.path.append(TESTS_DIR)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    report = build_clip_vision(args.out, args.comfyui)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
