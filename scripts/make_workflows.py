#!/usr/bin/env python
"""Generate the shareable FaceX workflows (workflows/*.json, ComfyUI's UI format).

Each workflow is declared below as a compact graph: nodes by type with their inputs given by
name (a link `other["output name"]` or a widget value). The UI JSON is built from a running
ComfyUI's /object_info: socket order, socket types, widget order and widget defaults come from
the node definitions themselves, so a file cannot put a value in the wrong widget, link the wrong
slot or name an input that does not exist. The output is written in the form the editor itself
saves (sockets first, then one input entry per widget, the seed's "control after generate" value
and LoadImage's upload widget in widgets_values), so loading and re-saving a file in the editor
changes nothing; tests/e2e/test_workflows_editor.py checks exactly that, in the real editor.

    scripts/make_workflows.py                  # start a throw-away ComfyUI with this pack, write workflows/
    scripts/make_workflows.py --url http://127.0.0.1:8188     # use a running server (scripts/run_comfyui.sh)
    scripts/make_workflows.py --object-info info.json         # use a saved /object_info answer
    scripts/make_workflows.py --check          # exit 1 if a committed file differs from what would be written

Default file names are the ones users have (v1-5-pruned-emaonly.safetensors,
facex_sd15.safetensors, ...) and the demo photo facex_astronaut.png (scripts/run_comfyui.sh puts it
into input/). Tests swap them for random-weight test files (tests/support/workflows.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")

# ---------------------------------------------------------------------------------------------
# Names users have

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
COMMUNITY_SD15_CHECKPOINT = "realisticVisionV60B1_v51VAE.safetensors"
FACEX_CHECKPOINT = "facex_sd15.safetensors"
LORA_FILE = "your_sd15_lora.safetensors"
CONTROLNET_FILE = "control_v11p_sd15_canny.pth"
CLIP_VISION_FILE = "clip-vit-large-patch14.safetensors"
DEMO_PHOTO = "facex_astronaut.png"

# ---------------------------------------------------------------------------------------------
# Node definitions (/object_info) -> what the editor makes of them

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes (not in /object_info, never sent to the server).
NOTE_TYPES = {"MarkdownNote", "Note"}
# An INT named like this gets the editor's "control after generate" widget even without the flag.
SEED_NAMES = {"seed", "noise_seed"}
# Combo flags that add an upload button widget after the combo: (input type, localized name, value).
UPLOAD_WIDGETS = {"image_upload": ("IMAGEUPLOAD", "choose file to upload", "image")}


class DefinitionError(ValueError):
    """A declaration that does not fit the node definitions: the message names node and input."""


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str  # socket type, or the widget's type (COMBO for a list of options)
    optional: bool
    options: dict
    choices: Optional[list]  # combo options

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def has_control_widget(self) -> bool:
        """The editor adds a "control after generate" widget (its value follows this one)."""
        if self.type not in ("INT", "COMBO"):
            return False
        flag = self.options.get("control_after_generate")
        return bool(flag) if flag is not None else (self.type == "INT" and self.name in SEED_NAMES)

    @property
    def upload_widget(self) -> Optional[tuple[str, str, str]]:
        found = [UPLOAD_WIDGETS[k] for k in UPLOAD_WIDGETS if self.options.get(k)]
        others = [k for k in self.options if k.endswith("_upload") and k not in UPLOAD_WIDGETS and self.options[k]]
        if others:
            raise DefinitionError(f"input {self.name}: upload widget {others} is not supported by this generator")
        return found[0] if found else None


@dataclass(frozen=True)
class NodeDef:
    type: str
    display_name: str
    inputs: list  # [InputDef] in /object_info order (required, then optional)
    outputs: list  # [(name, type)]

    def input(self, name: str) -> InputDef:
        for i in self.inputs:
            if i.name == name:
                return i
        raise DefinitionError(f"{self.type} has no input {name!r}; inputs: {', '.join(i.name for i in self.inputs)}")

    @property
    def sockets(self) -> list:
        # The editor lists sockets first (required, then optional), widgets after them.
        return [i for i in self.inputs if not i.is_widget]

    @property
    def widgets(self) -> list:
        return [i for i in self.inputs if i.is_widget]

    def output_index(self, key: Union[int, str]) -> int:
        if isinstance(key, int):
            if not 0 <= key < len(self.outputs):
                raise DefinitionError(f"{self.type} has {len(self.outputs)} outputs, not an output {key}")
            return key
        names = [n for n, _ in self.outputs]
        if key in names:
            return names.index(key)
        types = [t for _, t in self.outputs]
        if types.count(key) == 1:
            return types.index(key)
        raise DefinitionError(f"{self.type} has no output {key!r}; outputs: {', '.join(names)}")


def node_definitions(object_info: dict) -> dict[str, NodeDef]:
    defs = {}
    for node_type, info in object_info.items():
        inputs = []
        order = info.get("input_order") or {s: list((info.get("input") or {}).get(s, {})) for s in ("required", "optional")}
        for section in ("required", "optional"):
            specs = (info.get("input") or {}).get(section, {}) or {}
            for name in order.get(section, []):
                spec = specs[name]
                kind = spec[0]
                opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
                choices = None
                if isinstance(kind, list):
                    kind, choices = "COMBO", list(kind)
                elif kind == "COMBO":
                    choices = list(opts.get("options", []))
                inputs.append(InputDef(name, kind, section == "optional", opts, choices))
        names = info.get("output_name") or info.get("output") or []
        outputs = list(zip(names, info.get("output") or []))
        defs[node_type] = NodeDef(node_type, info.get("display_name") or node_type, inputs, outputs)
    return defs


def looks_like_file_list(choices: list) -> bool:
    """Model / image file combos: their options are whatever files this server has."""
    return all(isinstance(c, str) and "." in os.path.basename(c) for c in choices)


# ---------------------------------------------------------------------------------------------
# Declaring graphs


@dataclass(frozen=True)
class Out:
    node: "Node"
    key: Union[int, str]


@dataclass(eq=False)
class Node:
    workflow: "Workflow"
    type: str
    column: int
    title: Optional[str]
    values: dict
    id: int = 0
    width: int = 0
    color: Optional[tuple[str, str]] = None

    def __getitem__(self, key: Union[int, str]) -> Out:
        return Out(self, key)


@dataclass
class Workflow:
    name: str  # file stem in workflows/
    title: str
    columns: list  # group titles, left to right
    nodes: list = field(default_factory=list)

    def add(self, node_type: str, column: int, title: Optional[str] = None, width: int = 0, **values) -> Node:
        node = Node(self, node_type, column, title, values, id=len(self.nodes) + 1, width=width)
        self.nodes.append(node)
        return node

    def note(self, column: int, title: str, text: str, width: int = 440) -> Node:
        node = self.add("MarkdownNote", column, title=title, width=width, text=text.strip() + "\n")
        node.color = ("#432", "#653")
        return node


# ---------------------------------------------------------------------------------------------
# Graph -> UI-format JSON

COLUMN_GAP = 80
ROW_GAP = 40
GROUP_PAD = 20
GROUP_TITLE = 40
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
TITLE_HEIGHT = 30


def _widget_height(d: InputDef) -> int:
    return 110 if d.type == "STRING" and d.options.get("multiline") else WIDGET_HEIGHT


def _node_size(node: Node, nd: Optional[NodeDef]) -> list[int]:
    if nd is None:  # a note
        lines = sum(max(1, len(line) // 52 + 1) for line in node.values["text"].splitlines())
        return [node.width or 440, 40 + 18 * lines]
    width = node.width or (400 if any(_widget_height(w) > WIDGET_HEIGHT for w in nd.widgets) else 320)
    rows = max(len(nd.sockets), len(nd.outputs))
    height = TITLE_HEIGHT + SLOT_HEIGHT * rows + sum(_widget_height(w) for w in nd.widgets)
    height += sum(WIDGET_HEIGHT for w in nd.widgets if w.has_control_widget or w.upload_widget)
    if node.type == "LoadImage":
        height += 260  # the image preview
    if node.type in ("PreviewImage", "SaveImage", "SaveAnimatedWEBP"):
        height += 240
    return [width, max(height, 60)]


def _widget_values(node: Node, nd: NodeDef) -> list:
    values = []
    for w in nd.widgets:
        if w.name in node.values:
            value = node.values[w.name]
            if isinstance(value, Out):
                raise DefinitionError(f"{node.type}.{w.name} is a widget; linking widgets is not supported here")
        elif "default" in w.options:
            value = w.options["default"]
        elif w.type == "COMBO" and w.choices:
            value = w.choices[0]
        elif w.type == "STRING":
            value = ""
        else:
            raise DefinitionError(f"{node.type}.{w.name} has no default: give a value in the declaration")
        _check_widget_value(node, w, value)
        values.append(value)
        if w.has_control_widget:
            values.append(node.values.get(f"{w.name}:control", "randomize"))
        if w.upload_widget:
            values.append(w.upload_widget[2])
    return values


def _check_widget_value(node: Node, w: InputDef, value: Any) -> None:
    where = f"{node.type}.{w.name}"
    if w.type == "COMBO":
        if value not in (w.choices or []) and not looks_like_file_list(list(w.choices or []) + [value]):
            raise DefinitionError(f"{where}: {value!r} is not one of {w.choices}")
    elif w.type == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            raise DefinitionError(f"{where}: {value!r} is not an integer")
    elif w.type == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DefinitionError(f"{where}: {value!r} is not a number")
    elif w.type == "BOOLEAN":
        if not isinstance(value, bool):
            raise DefinitionError(f"{where}: {value!r} is not true/false")
    elif w.type == "STRING" and not isinstance(value, str):
        raise DefinitionError(f"{where}: {value!r} is not text")
    if w.type in ("INT", "FLOAT"):
        lo, hi = w.options.get("min"), w.options.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise DefinitionError(f"{where}: {value} is outside [{lo}, {hi}]")


def build_ui(workflow: Workflow, defs: dict[str, NodeDef]) -> dict:
    """The UI-format JSON of a declared workflow (what the editor saves)."""
    links = []  # [id, origin id, origin slot, target id, target slot, type]
    out_links: dict[tuple[int, int], list[int]] = {}
    node_json = {}
    sizes = {}
    for node in workflow.nodes:
        if node.type in NOTE_TYPES:
            sizes[node.id] = _node_size(node, None)
            continue
        if node.type not in defs:
            raise DefinitionError(f"node type {node.type!r} is not registered on this server (is its pack loaded?)")
        nd = defs[node.type]
        unknown = set(k for k in node.values if not k.endswith(":control")) - {i.name for i in nd.inputs}
        if unknown:
            raise DefinitionError(f"{node.type}: unknown inputs {sorted(unknown)}; inputs: {', '.join(i.name for i in nd.inputs)}")
        inputs = []
        for slot, s in enumerate(nd.sockets):
            entry = {"localized_name": s.name, "name": s.name}
            if s.optional:
                entry["shape"] = 7
            entry.update(type=s.type, link=None)
            value = node.values.get(s.name)
            if value is None:
                if not s.optional:
                    raise DefinitionError(f"{node.type}: required input {s.name!r} ({s.type}) is not connected")
            else:
                if not isinstance(value, Out):
                    raise DefinitionError(f"{node.type}.{s.name} is a {s.type} socket: connect a node output, not {value!r}")
                src = defs[value.node.type]
                index = src.output_index(value.key)
                out_type = src.outputs[index][1]
                if s.type != "*" and out_type != "*" and out_type != s.type:
                    raise DefinitionError(
                        f"{node.type}.{s.name} takes {s.type} but {value.node.type} output {src.outputs[index][0]!r} is {out_type}")
                link_id = len(links) + 1
                links.append([link_id, value.node.id, index, node.id, slot, s.type])
                out_links.setdefault((value.node.id, index), []).append(link_id)
                entry["link"] = link_id
            inputs.append(entry)
        for w in nd.widgets:
            inputs.append({"localized_name": w.name, "name": w.name, "type": w.type, "widget": {"name": w.name}, "link": None})
            if w.upload_widget:
                kind, label, _ = w.upload_widget
                inputs.append({"localized_name": label, "name": "upload", "type": kind, "widget": {"name": "upload"}, "link": None})
        node_json[node.id] = {"inputs": inputs, "widgets_values": _widget_values(node, nd)}
        sizes[node.id] = _node_size(node, nd)

    # Layout: columns left to right, nodes stacked in declaration order; one group per column.
    outside = [f"{n.type} (column {n.column})" for n in workflow.nodes if not 0 <= n.column < len(workflow.columns)]
    if outside:
        raise DefinitionError(f"{workflow.name}: nodes outside the {len(workflow.columns)} columns: {outside}")
    column_x, x = {}, 0
    for c in range(len(workflow.columns)):
        members = [n for n in workflow.nodes if n.column == c]
        if not members:
            raise DefinitionError(f"{workflow.name}: column {c} ({workflow.columns[c]!r}) has no node")
        column_x[c] = x
        x += max(sizes[n.id][0] for n in members) + 2 * GROUP_PAD + COLUMN_GAP
    positions, groups = {}, []
    for c, title in enumerate(workflow.columns):
        y = GROUP_TITLE + GROUP_PAD
        members = [n for n in workflow.nodes if n.column == c]
        for n in members:
            positions[n.id] = [column_x[c] + GROUP_PAD, y + TITLE_HEIGHT]
            y += sizes[n.id][1] + TITLE_HEIGHT + ROW_GAP
        width = max(sizes[n.id][0] for n in members) + 2 * GROUP_PAD
        groups.append({"id": c + 1, "title": title, "bounding": [column_x[c], 0, width, y - ROW_GAP + GROUP_PAD],
                       "color": "#3f789e", "font_size": 24, "flags": {}})

    nodes = []
    for order, node in enumerate(workflow.nodes):
        entry = {"id": node.id, "type": node.type, "pos": positions[node.id], "size": sizes[node.id], "flags": {},
                 "order": order, "mode": 0}
        if node.type in NOTE_TYPES:
            entry.update(inputs=[], outputs=[])
        else:
            nd = defs[node.type]
            entry["inputs"] = node_json[node.id]["inputs"]
            entry["outputs"] = [{"localized_name": name, "name": name, "type": kind,
                                 "links": out_links.get((node.id, i)) or None}
                                for i, (name, kind) in enumerate(nd.outputs)]
        if node.title:
            entry["title"] = node.title
        entry["properties"] = {} if node.type in NOTE_TYPES else {"Node name for S&R": node.type}
        entry["widgets_values"] = [node.values["text"]] if node.type in NOTE_TYPES else node_json[node.id]["widgets_values"]
        if node.color:
            entry["color"], entry["bgcolor"] = node.color
        nodes.append(entry)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/facex/comfyui-facex/workflows/{workflow.name}")),
        "revision": 0,
        "last_node_id": len(workflow.nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}, "facex": {"workflow": workflow.name, "title": workflow.title,
                                                                       "generator": "scripts/make_workflows.py"}},
        "version": 0.4,
    }


# ---------------------------------------------------------------------------------------------
# The workflows

MODEL_NOTE_FACEX = f"""
**FaceX weights** — `models/facex/{FACEX_CHECKPOINT}`, made for SD1.5 and for the FORD backends
FaceX Decompose runs here (the embedded ones). Nobody has published trained FaceX weights: train
them with `facex train` (see the README; `ford_backends=embedded`), or make a file with `facex init
--family sd15 --backends embedded --unet models/checkpoints/{SD15_CHECKPOINT} --out
models/facex/{FACEX_CHECKPOINT}`. A `facex init` file is zero-initialised: the workflow runs, and the
image is exactly what Stable Diffusion alone would make, until the weights are trained. Weights
trained on the production extractors (ArcFace, BiSeNet, Deep3DFaceRecon, L2CS) need their loader
nodes connected to the model inputs of every FaceX Decompose node.
"""

MODEL_NOTE_SD = f"""
**Stable Diffusion 1.5** — `models/checkpoints/{SD15_CHECKPOINT}` (or any SD1.5 checkpoint; the
FaceX weights must be made for SD1.5).
"""

MODEL_NOTE_FORD = """
**Face analysis** — FaceX Decompose runs on the embedded extractors (mediapipe face mesh and
selfie segmentation, dlib identity), which ship inside their Python packages: no file to download.
"""

PHOTO_NOTE = f"""
**Photos** — `input/{DEMO_PHOTO}` is the public-domain astronaut photo (NASA) that
`scripts/run_comfyui.sh` copies into input/. Load your own photos into the Load Image nodes.
"""


def _readme(title: str, what: str, *parts: str) -> str:
    return f"## {title}\n\n{what.strip()}\n\n" + "\n".join(p.strip() + "\n" for p in parts)


WORKFLOWS: dict[str, Callable[[], Workflow]] = {}


def workflow(fn: Callable[[], Workflow]) -> Callable[[], Workflow]:
    WORKFLOWS[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return list(WORKFLOWS)


# -- building blocks ---------------------------------------------------------------------------
# Column titles shared by the FaceX workflows (paper: FORD -> FORS -> FRC).
COLUMNS = ["Read me", "Models and photos", "FORD: decompose the faces", "FORS: assemble",
           "Generate (Stable Diffusion + FaceX FRC)", "Paste back and save"]
README, INPUTS, FORD, FORS, GENERATE, OUTPUT = range(len(COLUMNS))

POSITIVE = "a photo of a person, detailed skin, natural light, sharp focus"
NEGATIVE = "blurry, deformed, cartoon, painting, watermark, text"


@dataclass
class Faces:
    """A decomposed photo: the Load Image node and the FORD outputs."""
    photo: Node
    decompose: Node

    @property
    def image(self) -> Out:
        return self.photo["IMAGE"]

    @property
    def rep(self) -> Out:
        return self.decompose["representation"]

    @property
    def crops(self) -> Out:
        return self.decompose["crops"]


def _photo(wf: Workflow, title: str, image: str = DEMO_PHOTO) -> Node:
    return wf.add("LoadImage", INPUTS, title=title, image=image)


CROP_SIZE = "512"  # SD1.5's own resolution; tests run the workflows at 256


def _decompose(wf: Workflow, photo: Node, title: str, column: int = FORD) -> Faces:
    """FaceX Decompose on the embedded backends (no model input connected: nothing to download)."""
    node = wf.add("FaceXDecompose", column, title=title, image=photo["IMAGE"], crop_size=CROP_SIZE)
    return Faces(photo, node)


def _prompts(wf: Workflow, clip: Out, column: int = GENERATE, positive: str = POSITIVE, negative: str = NEGATIVE):
    pos = wf.add("CLIPTextEncode", column, title="Positive prompt", width=400, clip=clip, text=positive)
    neg = wf.add("CLIPTextEncode", column, title="Negative prompt", width=400, clip=clip, text=negative)
    return pos["CONDITIONING"], neg["CONDITIONING"]


def _inpaint(wf: Workflow, model: Out, vae: Out, pos: Out, neg: Out, pixels: Out, mask: Out, *, denoise: float,
             steps: int = 30, cfg: float = 6.0, column: int = GENERATE) -> Out:
    """Ordinary SD inpainting of the aligned crops with core nodes: the reference pixels are kept
    as the starting latent and only the mask is re-noised (noise_mask), so denoise < 1 keeps the
    pasted face and regenerates the seams; denoise 1 regenerates the masked area entirely."""
    cond = wf.add("InpaintModelConditioning", column, positive=pos, negative=neg, vae=vae, pixels=pixels, mask=mask,
                  noise_mask=True)
    sampler = wf.add("KSampler", column, model=model, positive=cond["positive"], negative=cond["negative"],
                     latent_image=cond["latent"], seed=0, steps=steps, cfg=cfg, sampler_name="dpmpp_2m",
                     scheduler="karras", denoise=denoise)
    return wf.add("VAEDecode", column, samples=sampler["LATENT"], vae=vae)["IMAGE"]


def _paste_and_save(wf: Workflow, canvas: Faces, crops: Out, mask: Out, prefix: str, column: int = OUTPUT,
                    animated: bool = False) -> Node:
    """Paste the generated area (the region assembler's mask: the rest of the crop is the photo
    itself, and pasting it would only add the VAE's round-trip blur) back into the edited photo."""
    pasted = wf.add("FaceXPasteBack", column, image=canvas.image, crops=crops, representation=canvas.rep, mask=mask)
    wf.add("PreviewImage", column, title="Generated crops", images=crops)
    if animated:
        return wf.add("SaveAnimatedWEBP", column, images=pasted["IMAGE"], filename_prefix=prefix, fps=8.0)
    return wf.add("SaveImage", column, images=pasted["IMAGE"], filename_prefix=prefix)


def _facex_edit(name: str, title: str, what: str, *, task: str, canvas: str, source_title: str, target_title: str,
                regions: str = "", overrides: str = "", denoise: float = 1.0, checkpoint: str = SD15_CHECKPOINT,
                checkpoint_note: str = MODEL_NOTE_SD, lora: bool = False, controlnet: bool = False,
                animated: bool = False) -> Workflow:
    """The FaceX pipeline for one task: decompose both faces (FORD, embedded backends),
    assemble the representation and the inpainting reference (FORS), patch the UNet (FRC),
    inpaint the aligned crop, paste it back into the photo whose picture is edited (`canvas`)."""
    wf = Workflow(name, title, list(COLUMNS))
    notes = [MODEL_NOTE_FACEX, checkpoint_note, CLIP_NOTE, MODEL_NOTE_FORD]
    if lora:
        notes.append(LORA_NOTE)
    if controlnet:
        notes.append(CONTROLNET_NOTE)
    wf.note(README, "Read me", _readme(title, what, *notes, PHOTO_NOTE), width=520)
    ckpt = wf.add("CheckpointLoaderSimple", INPUTS, ckpt_name=checkpoint)
    model, clip, vae = ckpt["MODEL"], ckpt["CLIP"], ckpt["VAE"]
    if lora:
        lo = wf.add("LoraLoader", INPUTS, model=model, clip=clip, lora_name=LORA_FILE, strength_model=0.8, strength_clip=0.8)
        model, clip = lo["MODEL"], lo["CLIP"]
    facex = wf.add("FaceXModelLoader", INPUTS, facex_name=FACEX_CHECKPOINT)
    source = _decompose(wf, _photo(wf, source_title), "Source face")
    target = _decompose(wf, _photo(wf, target_title), "Target face")
    wf.add("PreviewImage", FORD, title="Source decomposition", images=source.decompose["preview"])
    wf.add("PreviewImage", FORD, title="Target decomposition", images=target.decompose["preview"])
    rep = wf.add("FaceXRepresentationAssembler", FORS, source=source.rep, target=target.rep, task=task,
                 region_overrides=overrides)
    wf.add("PreviewAny", FORS, title="Plan: which face gives each part", source=rep["plan"])
    regions_node = wf.add("FaceXRegionAssembler", FORS, source_image=source.crops, source_representation=source.rep,
                          target_image=target.crops, target_representation=target.rep, task=task, regions=regions)
    wf.add("PreviewImage", FORS, title="Reference and mask", images=regions_node["preview"])
    patched = wf.add("FaceXApplyFRC", GENERATE, model=model, facex_model=facex["facex_model"], representation=rep["representation"],
                     reference=regions_node["reference"])
    pos, neg = _prompts(wf, clip)
    if controlnet:
        edges = wf.add("Canny", GENERATE, image=(target if canvas == "target" else source).crops, low_threshold=0.3,
                       high_threshold=0.7)
        net = wf.add("ControlNetLoader", INPUTS, control_net_name=CONTROLNET_FILE)
        applied = wf.add("ControlNetApplyAdvanced", GENERATE, positive=pos, negative=neg, control_net=net["CONTROL_NET"],
                         image=edges["IMAGE"], strength=0.6, start_percent=0.0, end_percent=0.8, vae=vae)
        pos, neg = applied["positive"], applied["negative"]
    crops = _inpaint(wf, patched["MODEL"], vae, pos, neg, regions_node["reference"], regions_node["mask"], denoise=denoise)
    _paste_and_save(wf, source if canvas == "source" else target, crops, regions_node["mask"], name, animated=animated)
    return wf


CLIP_NOTE = f"""
**Region appearance (optional)** — FaceX weights trained with CLIP region features also need a
Load CLIP Vision node with `models/clip_vision/{CLIP_VISION_FILE}` (OpenAI CLIP ViT-L/14,
`openai/clip-vit-large-patch14`, `model.safetensors` renamed) connected to the `clip_vision`
input of every FaceX Decompose node. Weights trained without them take the faces as they are
here.
"""

LORA_NOTE = f"""
**LoRA** — `models/loras/{LORA_FILE}`: any SD1.5 LoRA (a style or a look); FaceX patches the
UNet after it, so the LoRA and FaceX act together.
"""

CONTROLNET_NOTE = f"""
**ControlNet** — `models/controlnet/{CONTROLNET_FILE}` (lllyasviel/ControlNet-v1-1, SD1.5 canny):
keeps the edited photo's outlines in the aligned crop.
"""


@workflow
def facex_face_swap() -> Workflow:
    return _facex_edit(
        "facex_face_swap", "FaceX face swap",
        "The source person's face on the target photo: the target keeps its pose, expression, hair, "
        "ears and background. Swap the photos in the two Load Image nodes.",
        task="face_swap", canvas="target", source_title="Source photo (whose face)",
        target_title="Target photo (the picture to edit)")


@workflow
def facex_head_swap() -> Workflow:
    return _facex_edit(
        "facex_head_swap", "FaceX head swap",
        "The source person's whole head (hair and ears too) on the target's body and background. The "
        "region assembler lays the source head in grey on the target crop and regenerates the union of "
        "both heads, so colours and light follow the target.",
        task="head_swap", canvas="target", source_title="Source photo (whose head)",
        target_title="Target photo (body and background)")


@workflow
def facex_reenactment() -> Workflow:
    return _facex_edit(
        "facex_reenactment", "FaceX reenactment",
        "The source face re-posed and re-expressed by the driving (target) face: pose, expression, "
        "gaze and face outline come from the driving photo, everything else from the source. Best "
        "when both photos show the same person.",
        task="reenactment", canvas="source", source_title="Source photo (to re-pose)",
        target_title="Driving photo (pose and expression)")


@workflow
def facex_animation() -> Workflow:
    return _facex_edit(
        "facex_animation", "FaceX animation with a community SD1.5 checkpoint",
        "The source face animated by another person's motion: one output frame per driving frame. "
        "Load several frames of the same size at once (an animated WebP/GIF loads as a batch), or feed "
        "a video loader's IMAGE output into the driving face's FaceX Decompose. The frames are saved as "
        "an animated WebP.",
        task="animation", canvas="source", source_title="Source photo (who is animated)",
        target_title="Driving frames (animated WebP/GIF or images)", checkpoint=COMMUNITY_SD15_CHECKPOINT,
        checkpoint_note=f"""
**Community SD1.5 checkpoint** — `models/checkpoints/{COMMUNITY_SD15_CHECKPOINT}` (Realistic Vision
6.0, or any SD1.5 fine-tune): FaceX weights made for SD1.5 fit every SD1.5 fine-tune, because they
share the UNet's block layout.
""", animated=True)


@workflow
def facex_attribute_editing() -> Workflow:
    return _facex_edit(
        "facex_attribute_editing", "FaceX attribute editing (hairstyle, glasses, beard)",
        "Take one part of another face (the donor) and put it on the source: here the hairstyle "
        "(`hair`). Set the same regions in both assemblers: the representation assembler's "
        "`region_overrides` (hair=target) and the region assembler's `regions` (hair). Glasses sit in "
        "`eyes, eyebrows`; a beard in `skin, lips` (the lower face). To remove a part instead, write "
        "hair=none in the representation assembler.",
        task="attribute_editing", canvas="source", source_title="Source photo (the person)",
        target_title="Donor photo (the hairstyle, glasses or beard)", regions="hair", overrides="hair=target")


@workflow
def facex_inpainting() -> Workflow:
    wf = Workflow("facex_inpainting", "FaceX inpainting", list(COLUMNS))
    what = ("Regenerate chosen regions of a face (here `eyes, eyebrows`), conditioned on the face "
            "itself: identity, pose, expression and the other regions all come from the same photo. "
            "Edit `regions` in the region assembler (skin, eyebrows, eyes, nose, lips, ears, hair, neck, "
            "cloth, background; groups: face, head).")
    wf.note(README, "Read me", _readme("FaceX inpainting", what, MODEL_NOTE_FACEX, MODEL_NOTE_SD, CLIP_NOTE,
                                   MODEL_NOTE_FORD, PHOTO_NOTE), width=520)
    ckpt = wf.add("CheckpointLoaderSimple", INPUTS, ckpt_name=SD15_CHECKPOINT)
    facex = wf.add("FaceXModelLoader", INPUTS, facex_name=FACEX_CHECKPOINT)
    face = _decompose(wf, _photo(wf, "Photo"), "Face")
    wf.add("PreviewImage", FORD, title="Decomposition", images=face.decompose["preview"])
    rep = wf.add("FaceXRepresentationAssembler", FORS, source=face.rep, target=face.rep, task="inpainting")
    wf.add("PreviewAny", FORS, title="Plan: which face gives each part", source=rep["plan"])
    regions = wf.add("FaceXRegionAssembler", FORS, source_image=face.crops, source_representation=face.rep,
                     target_image=face.crops, target_representation=face.rep, task="inpainting",
                     regions="eyes, eyebrows")
    wf.add("PreviewImage", FORS, title="Reference and mask", images=regions["preview"])
    patched = wf.add("FaceXApplyFRC", GENERATE, model=ckpt["MODEL"], facex_model=facex["facex_model"],
                     representation=rep["representation"], reference=regions["reference"])
    pos, neg = _prompts(wf, ckpt["CLIP"])
    crops = _inpaint(wf, patched["MODEL"], ckpt["VAE"], pos, neg, regions["reference"], regions["mask"], denoise=1.0)
    _paste_and_save(wf, face, crops, regions["mask"], "facex_inpainting")
    return wf


@workflow
def facex_mixture_editing() -> Workflow:
    """Progressive editing: face swap, then a hairstyle from a third face, chained at both levels
    (representation and region assemblers), one sampling run for the result."""
    wf = Workflow("facex_mixture_editing", "FaceX progressive mixture editing", list(COLUMNS))
    what = ("Tasks chained: first a face swap (source face on the target photo), then the hairstyle of a "
            "third face on that result. Each assembler takes the previous one's output: the representation "
            "assemblers chain the representation (identity from the source, motion from the target, hair "
            "from the third face); the region assemblers chain the reference image, and the two masks are "
            "joined. One sampling run makes the result. Add more assemblers the same way.")
    wf.note(README, "Read me", _readme("FaceX progressive mixture editing", what, MODEL_NOTE_FACEX, MODEL_NOTE_SD,
                                   CLIP_NOTE, MODEL_NOTE_FORD, PHOTO_NOTE), width=520)
    ckpt = wf.add("CheckpointLoaderSimple", INPUTS, ckpt_name=SD15_CHECKPOINT)
    facex = wf.add("FaceXModelLoader", INPUTS, facex_name=FACEX_CHECKPOINT)
    source = _decompose(wf, _photo(wf, "Source photo (whose face)"), "Source face")
    target = _decompose(wf, _photo(wf, "Target photo (the picture to edit)"), "Target face")
    donor = _decompose(wf, _photo(wf, "Hair donor photo"), "Hair donor face")
    swap = wf.add("FaceXRepresentationAssembler", FORS, title="1. Face swap", source=source.rep, target=target.rep,
                  task="face_swap")
    hair = wf.add("FaceXRepresentationAssembler", FORS, title="2. Hairstyle from the donor", source=swap["representation"],
                  target=donor.rep, task="attribute_editing", region_overrides="hair=target")
    wf.add("PreviewAny", FORS, title="Plan: which face gives each part", source=hair["plan"])
    swap_regions = wf.add("FaceXRegionAssembler", FORS, title="1. Face swap reference", source_image=source.crops,
                          source_representation=source.rep, target_image=target.crops,
                          target_representation=target.rep, task="face_swap")
    # The face-swap reference lies in the target's crop frame: the target's region masks describe it.
    hair_regions = wf.add("FaceXRegionAssembler", FORS, title="2. Hairstyle reference", source_image=swap_regions["reference"],
                          source_representation=target.rep, target_image=donor.crops, target_representation=donor.rep,
                          task="attribute_editing", regions="hair")
    mask = wf.add("MaskComposite", FORS, title="Both masks", destination=swap_regions["mask"], source=hair_regions["mask"],
                  x=0, y=0, operation="add")
    wf.add("PreviewImage", FORS, title="Reference and mask", images=hair_regions["preview"])
    patched = wf.add("FaceXApplyFRC", GENERATE, model=ckpt["MODEL"], facex_model=facex["facex_model"],
                     representation=hair["representation"], reference=hair_regions["reference"])
    pos, neg = _prompts(wf, ckpt["CLIP"])
    crops = _inpaint(wf, patched["MODEL"], ckpt["VAE"], pos, neg, hair_regions["reference"], mask["MASK"], denoise=1.0)
    _paste_and_save(wf, target, crops, mask["MASK"], "facex_mixture_editing")
    return wf


@workflow
def facex_controlnet_lora() -> Workflow:
    return _facex_edit(
        "facex_controlnet_lora", "FaceX face swap with a LoRA and a ControlNet",
        "FaceX composes with the rest of ComfyUI: a LoRA changes the look (FaceX patches the UNet after "
        "it), a canny ControlNet on the target's aligned crop keeps its outlines, and FaceX steers the "
        "face. Any other model patch (IPAdapter, ...) can sit between the loaders and FaceX Apply FRC.",
        task="face_swap", canvas="target", source_title="Source photo (whose face)",
        target_title="Target photo (the picture to edit)", lora=True, controlnet=True)


def _training_free(name: str, title: str, what: str, task: str, denoise: float) -> Workflow:
    wf = Workflow(name, title, ["Read me", "Models and photos", "FORD: decompose the faces", "FORS: region assembler",
                                "Generate (ordinary SD inpainting)", "Paste back and save"])
    no_weights = """
**No FaceX weights needed** — this workflow uses only the FaceX region assembler and ordinary
Stable Diffusion inpainting: it works today with any SD1.5 checkpoint. `denoise` trades
faithfulness to the pasted face (low) against a smoother blend (high).
"""
    wf.note(README, "Read me", _readme(title, what, no_weights, MODEL_NOTE_SD, MODEL_NOTE_FORD, PHOTO_NOTE), width=520)
    ckpt = wf.add("CheckpointLoaderSimple", INPUTS, ckpt_name=SD15_CHECKPOINT)
    source = _decompose(wf, _photo(wf, "Source photo"), "Source face")
    target = _decompose(wf, _photo(wf, "Target photo (the picture to edit)"), "Target face")
    regions = wf.add("FaceXRegionAssembler", FORS, source_image=source.crops, source_representation=source.rep,
                     target_image=target.crops, target_representation=target.rep, task=task)
    wf.add("PreviewImage", FORS, title="Reference and mask", images=regions["preview"])
    pos, neg = _prompts(wf, ckpt["CLIP"])
    crops = _inpaint(wf, ckpt["MODEL"], ckpt["VAE"], pos, neg, regions["reference"], regions["mask"], denoise=denoise)
    _paste_and_save(wf, target, crops, regions["mask"], name)
    return wf


@workflow
def facex_training_free_face_swap() -> Workflow:
    return _training_free(
        "facex_training_free_face_swap", "Training-free face swap (no FaceX weights)",
        "The region assembler puts the source's inner face (brows, eyes, nose, lips, skin) on the "
        "target's aligned crop; SD inpainting regenerates the seams and blends the light; the crop is "
        "pasted back into the target photo.", "face_swap", denoise=0.5)


@workflow
def facex_training_free_head_swap() -> Workflow:
    return _training_free(
        "facex_training_free_head_swap", "Training-free head swap (no FaceX weights)",
        "The region assembler lays the source's whole head, in grey, on the target's background; SD "
        "inpainting re-colours it to the target's light and regenerates the union of both heads; the "
        "crop is pasted back into the target photo.", "head_swap", denoise=0.7)


@workflow
def facex_decompose_demo() -> Workflow:
    wf = Workflow("facex_decompose_demo", "FaceX decomposition demo (no model files)",
                  ["Read me", "Photo", "FORD: decompose", "The aligned crop", "Region masks", "Save the face"])
    what = ("What FaceX reads from a face, on the embedded extractors only (nothing to download): the "
            "aligned crop, the region masks (skin, brows, eyes, nose, lips, ears, hair, neck, cloth, "
            "background), landmarks, pose, gaze and an identity embedding. The face is saved to "
            "models/facex/faces/ for FaceX Load Face in other workflows.")
    wf.note(README, "Read me", _readme("FaceX decomposition demo", what, MODEL_NOTE_FORD, PHOTO_NOTE), width=480)
    face = _decompose(wf, _photo(wf, "Photo"), "Decompose")
    wf.add("PreviewImage", 3, title="Overview: landmarks, pose axes, regions", images=face.decompose["preview"])
    wf.add("PreviewImage", 3, title="Aligned crop", images=face.crops)
    masks = wf.add("FaceXRegionMasks", 4, representation=face.rep, region="head")
    wf.add("PreviewImage", 4, title="Region colours", images=masks["preview"])
    head = wf.add("MaskToImage", 4, title="Head mask as an image", mask=masks["mask"])
    wf.add("PreviewImage", 4, title="Head mask (face, ears, hair)", images=head["IMAGE"])
    wf.add("FaceXSaveRepresentation", 5, representation=face.rep, name="astronaut")
    return wf


def build_all(object_info: dict) -> dict[str, dict]:
    defs = node_definitions(object_info)
    out = {}
    for name, fn in WORKFLOWS.items():
        wf = fn()
        if wf.name != name:
            raise DefinitionError(f"workflow function {name} declares name {wf.name!r}")
        out[name] = build_ui(wf, defs)
    return out


def dump(ui: dict) -> str:
    return json.dumps(ui, indent=1, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _object_info_from_args(args) -> dict:
    if args.object_info:
        with open(args.object_info) as f:
            return json.load(f)
    import requests

    if args.url:
        r = requests.get(args.url.rstrip("/") + "/object_info", timeout=120)
        r.raise_for_status()
        return r.json()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import tempfile

    from support.comfy_server import PACK_NAME, ComfyServer  # a throw-away server with this pack

    with tempfile.TemporaryDirectory(prefix="facex-make-workflows-") as tmp:
        server = ComfyServer(tmp, custom_nodes={PACK_NAME: ROOT}).start()
        try:
            server.check_loaded()
            return server.object_info()
        finally:
            server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running ComfyUI with the FaceX pack (default: start a throw-away one)")
    parser.add_argument("--object-info", help="a saved /object_info JSON answer instead of a server")
    parser.add_argument("--out", default=WORKFLOWS_DIR, help="output folder (default: workflows/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    built = build_all(_object_info_from_args(args))
    changed = []
    os.makedirs(args.out, exist_ok=True)
    for name, ui in built.items():
        path = os.path.join(args.out, f"{name}.json")
        text = dump(ui)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            changed.append(path)
            if not args.check:
                with open(path, "w") as f:
                    f.write(text)
    stale = sorted(f for f in os.listdir(args.out) if f.endswith(".json") and f[:-5] not in built)
    for f in stale:
        print(f"not generated by this script: {os.path.join(args.out, f)}", file=sys.stderr)
    verb = "would change" if args.check else "written"
    for path in changed:
        print(f"{verb}: {os.path.relpath(path, ROOT)}")
    if not changed:
        print(f"all {len(built)} workflows up to date")
    return 1 if (args.check and (changed or stale)) else 0


if __name__ == "__main__":
    sys.exit(main())
