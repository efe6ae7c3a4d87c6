"""A real ComfyUI server for tests: started from the dev environment's ComfyUI tree on a free
loopback port, with this checkout linked as the custom node pack `comfyui-facex`, in a throw-away
base directory (models/, input/, output/, user/, custom_nodes/), and stopped at the end.

Only `requests`, Pillow (ComfyUI's own dependency, to decode /view images) and the stdlib.

    server = ComfyServer(base_dir, custom_nodes={"comfyui-facex": REPO_ROOT}).start()
    server.check_loaded(required_pack="comfyui-facex")   # IMPORT FAILED / no FaceX node -> AssertionError
    p = txt2img("facex_random_sd15_tiny.safetensors", seed=next_seed())
    outputs = server.run(p)                               # raises with the node's error message
    image = server.fetch_image(output_images(outputs)[0]) # HxWx3 uint8
    server.stop()

ComfyUI caches identical prompts (and every node whose inputs did not change): use next_seed()
for each prompt that must really execute.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

import requests

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "comfyui-facex"  # the folder name users get from the registry / git clone
FIXTURE_PACKS_DIR = os.path.join(REPO_ROOT, "tests", "fixtures")

# Model folders created in every test server (core ComfyUI names plus what FaceX and the face
# packs it interoperates with read: nodes/paths.py, ARCHITECTURE.md "Conventions").
MODEL_FOLDERS = (
    "checkpoints", "loras", "controlnet", "clip_vision", "vae", "embeddings", "upscale_models",
    "diffusion_models", "text_encoders", "model_patches", "ipadapter",
    "facex", "facex/faces", "facex/extractors", "insightface", "insightface/models",
)

# ComfyUI's own optional extras that fail without torchaudio (not part of our environment:
# ARCHITECTURE.md says torchaudio is optional). Any other IMPORT FAILED line fails the run.
OPTIONAL_BUILTIN_EXTRAS = {"nodes_audio.py", "nodes_audio_encoder.py"}

# Log lines that mean the FaceX pack did not load completely. nodes/__init__.py skips a stage
# whose import fails (logging, not raising) so a user's ComfyUI keeps working; in our fully
# provisioned test environment that is a failure.
PACK_PROBLEM_PATTERNS = (
    re.compile(r"\(IMPORT FAILED\): (?P<what>.+)$", re.M),
    re.compile(r"FaceX: nodes for stage .* disabled: (?P<what>.+)$", re.M),
)
BUILTIN_IMPORT_FAILED = re.compile(r"^IMPORT FAILED: (?P<what>\S+)\s*$", re.M)

_seeds = itertools.count(1)


def next_seed() -> int:
    """A seed no earlier prompt of this session used (defeats ComfyUI's prompt cache)."""
    return next(_seeds)


# ---------------------------------------------------------------------------------------------
# Where the environment is

_dev_env_cache: dict[str, str] = {}


def dev_env() -> dict[str, str]:
    """FACEX_VENV and FACEX_COMFYUI: from the environment (scripts/test.sh exports them), else by
    sourcing scripts/dev_env.sh (which builds the environment on first use)."""
    if _dev_env_cache:
        return _dev_env_cache
    found = {k: os.environ.get(k, "") for k in ("FACEX_VENV", "FACEX_COMFYUI")}
    if not all(found.values()) or not all(os.path.isdir(v) for v in found.values()):
        script = os.path.join(REPO_ROOT, "scripts", "dev_env.sh")
        # No `&&` after `source`: bash ignores the script's own `set -e` inside an && list, and a
        # failed pip step would then be marked complete.
        proc = subprocess.run(
            ["bash", "-c", 'source "$1" >&2; printf "%s\\n%s\\n" "$FACEX_VENV" "$FACEX_COMFYUI"', "dev_env", script],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/dev_env.sh failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        venv, comfy = proc.stdout.strip().splitlines()[-2:]
        found = {"FACEX_VENV": venv, "FACEX_COMFYUI": comfy}
    _dev_env_cache.update(found)
    return _dev_env_cache


def comfyui_dir() -> str:
    path = dev_env()["FACEX_COMFYUI"]
    if not os.path.isfile(os.path.join(path, "main.py")):
        raise RuntimeError(f"no ComfyUI main.py in {path!r} (FACEX_COMFYUI); run `source scripts/dev_env.sh`")
    return path


def venv_python() -> str:
    python = os.path.join(dev_env()["FACEX_VENV"], "bin", "python")
    return python if os.path.exists(python) else sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Errors that carry the server's own words

class PromptRejected(AssertionError):
    """POST /prompt answered 400 (validation failed). `.response` is ComfyUI's JSON answer."""

    def __init__(self, response: dict):
        self.response = response
        super().__init__(format_prompt_error(response))


class ExecutionFailed(AssertionError):
    """The prompt ran and a node raised. `.error` is ComfyUI's execution_error message."""

    def __init__(self, prompt_id: str, error: dict, log_tail: str = ""):
        self.error = error
        tb = "".join(error.get("traceback") or [])[-3000:]
        super().__init__(
            f"prompt {prompt_id} failed in node {error.get('node_id')} ({error.get('node_type')}): "
            f"{error.get('exception_type')}: {error.get('exception_message')}\n{tb}"
            + (f"\n--- server log tail ---\n{log_tail}" if log_tail else "")
        )


def format_prompt_error(response: dict) -> str:
    err = response.get("error") or {}
    lines = [f"ComfyUI rejected the prompt: {err.get('message', err)} {err.get('details', '')}".rstrip()]
    for node_id, node in (response.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Building API-format prompts

class Prompt(dict):
    """An API-format prompt ({node id: {"class_type", "inputs"}}) built node by node.

        p = Prompt()
        ckpt = p.add("CheckpointLoaderSimple", ckpt_name="x.safetensors")
        p.add("KSampler", model=ckpt[0], ...)      # ckpt[0] == [node id, output index]
    """

    def __init__(self):
        super().__init__()
        self._ids = itertools.count(1)

    def add(self, class_type: str, **inputs) -> "NodeRef":
        node_id = str(next(self._ids))
        while node_id in self:
            node_id = str(next(self._ids))
        self[node_id] = {"class_type": class_type, "inputs": inputs}
        return NodeRef(node_id)

    def find(self, class_type: str) -> list["NodeRef"]:
        return [NodeRef(i) for i, n in self.items() if n["class_type"] == class_type]


class NodeRef(str):
    def __getitem__(self, output_index):  # type: ignore[override]
        return [str(self), output_index]


def txt2img(ckpt_name: str, seed: int, *, width: int = 256, height: int = 256, steps: int = 2,
            cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal",
            positive: str = "a photo of a face", negative: str = "blurry",
            lora: str | None = None, lora_strength: float = 1.0,
            controlnet: str | None = None, control_image: str | None = None, control_strength: float = 1.0,
            model_patches=(), filename_prefix: str = "facex_test") -> Prompt:
    """The standard text-to-image graph of core nodes. `model_patches` are callables
    (prompt, model_output_ref) -> model_output_ref applied between the loaders and KSampler
    (e.g. lambda p, m: p.add("FaceXTestAttn2Replace", model=m, scale=1.0)[0])."""
    p = Prompt()
    ckpt = p.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    model, clip, vae = ckpt[0], ckpt[1], ckpt[2]
    if lora:
        lo = p.add("LoraLoader", model=model, clip=clip, lora_name=lora,
                   strength_model=lora_strength, strength_clip=lora_strength)
        model, clip = lo[0], lo[1]
    for patch in model_patches:
        model = patch(p, model)
    pos = p.add("CLIPTextEncode", clip=clip, text=positive)[0]
    neg = p.add("CLIPTextEncode", clip=clip, text=negative)[0]
    if controlnet:
        if control_image is None:
            raise ValueError("controlnet needs control_image (a file name in the server's input folder)")
        cn = p.add("ControlNetLoader", control_net_name=controlnet)
        img = p.add("LoadImage", image=control_image)
        applied = p.add("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=cn[0],
                        image=img[0], strength=control_strength, start_percent=0.0, end_percent=1.0, vae=vae)
        pos, neg = applied[0], applied[1]
    latent = p.add("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampled = p.add("KSampler", model=model, positive=pos, negative=neg, latent_image=latent[0], seed=seed,
                    steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    decoded = p.add("VAEDecode", samples=sampled[0], vae=vae)
    p.add("SaveImage", images=decoded[0], filename_prefix=filename_prefix)
    return p


def output_images(outputs: dict) -> list[dict]:
    """Every image reference ({filename, subfolder, type}) in a history entry's outputs."""
    return [img for node_out in outputs.values() for img in node_out.get("images", [])]


def _die_with_parent() -> None:
    """In the server's child process: ask Linux to SIGTERM it when the test process dies, so a
    test run killed from outside (where fixture finalisers never run) leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 15)


# ---------------------------------------------------------------------------------------------
# The server

class ComfyServer:
    def __init__(self, base_dir: str, custom_nodes: dict[str, str] | None = None, port: int | None = None,
                 comfyui: str | None = None, python: str | None = None, extra_args=()):
        self.base_dir = os.path.abspath(base_dir)
        self.custom_nodes = dict(custom_nodes or {})
        self.port = port or free_port()
        self.comfyui = comfyui or comfyui_dir()
        self.python = python or venv_python()
        self.extra_args = list(extra_args)
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = os.path.join(self.base_dir, "models")
        self.input_dir = os.path.join(self.base_dir, "input")
        self.output_dir = os.path.join(self.base_dir, "output")
        self.user_dir = os.path.join(self.base_dir, "user")
        self.log_path = os.path.join(self.base_dir, "comfyui.log")
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self._http = requests.Session()

    # -- life cycle --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the base directory layout and link the custom node packs."""
        for sub in ("input", "output", "temp", "user", "custom_nodes"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        for folder in MODEL_FOLDERS:
            os.makedirs(os.path.join(self.models_dir, folder), exist_ok=True)
        for name, path in self.custom_nodes.items():
            link = os.path.join(self.base_dir, "custom_nodes", name)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(path), link)

    def command(self) -> list[str]:
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", self.base_dir,
                # ComfyUI's default database lives inside its own tree; keep the tree untouched.
                "--database-url", f"sqlite:///{os.path.join(self.user_dir, 'comfyui.db')}",
                # Offline machine: no API nodes, and the frontend makes no calls to api.comfy.org.
                "--disable-api-nodes",
                *self.extra_args]

    def start(self, timeout: float = 180) -> "ComfyServer":
        self.prepare()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        try:
            self._wait_answering(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def _wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with code {self.proc.returncode} while starting\n"
                                     f"{self.log_tail()}")
            try:
                if self._http.get(self.url + "/system_stats", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            except requests.Timeout:
                pass
            time.sleep(0.2)
        raise AssertionError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- load checks -------------------------------------------------------------------------

    def load_problems(self) -> list[str]:
        """Custom node import failures, FaceX stages that were skipped, and unexpected failures of
        ComfyUI's own extras, as log lines."""
        text = self.log_text()
        problems = [m.group(0).strip() for pat in PACK_PROBLEM_PATTERNS for m in pat.finditer(text)]
        problems += [m.group(0).strip() for m in BUILTIN_IMPORT_FAILED.finditer(text)
                     if m.group("what") not in OPTIONAL_BUILTIN_EXTRAS]
        return problems

    def pack_nodes(self, pack: str = PACK_NAME) -> dict[str, dict]:
        """/object_info entries that the given custom node pack registered."""
        module = f"custom_nodes.{pack}"
        return {k: v for k, v in self.object_info().items() if v.get("python_module") == module}

    def check_loaded(self, required_pack: str = PACK_NAME, node_prefix: str = "FaceX") -> None:
        """AssertionError (with the log tail) unless every pack imported and `required_pack`
        registered at least one node whose id starts with `node_prefix`."""
        problems = self.load_problems()
        if problems:
            raise AssertionError("ComfyUI did not load every node pack:\n  " + "\n  ".join(problems)
                                 + f"\n--- server log tail ---\n{self.log_tail(120)}")
        ours = [k for k in self.pack_nodes(required_pack) if k.startswith(node_prefix)]
        if not ours:
            raise AssertionError(f"/object_info has no node whose id starts with {node_prefix!r} from "
                                 f"custom_nodes.{required_pack}\n--- server log tail ---\n{self.log_tail(120)}")

    # -- HTTP helpers ------------------------------------------------------------------------

    def log_text(self, since: int = 0) -> str:
        """The server log (stdout + stderr), from byte offset `since` (see log_mark())."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 60)
        return self._http.get(self.url + path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 60)
        return self._http.post(self.url + path, **kw)

    def object_info(self) -> dict:
        r = self.get("/object_info")
        r.raise_for_status()
        return r.json()

    def assert_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"ComfyUI is not running (exit code {code})\n{self.log_tail()}")
        r = self.get("/system_stats", timeout=10)
        assert r.status_code == 200, f"/system_stats answered {r.status_code}: {r.text[:500]}"

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt as is: (HTTP status, JSON answer)."""
        r = self.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {"error": {"message": r.text[:2000]}}

    def queue(self, prompt: dict) -> str:
        status, answer = self.post_prompt(prompt)
        if status != 200:
            raise PromptRejected(answer)
        if answer.get("node_errors"):
            raise PromptRejected(answer)
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry once the prompt finished; ExecutionFailed if a node raised."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI died (exit {self.proc.returncode}) while running prompt "
                                     f"{prompt_id}\n{self.log_tail()}")
            r = self.get(f"/history/{prompt_id}")
            r.raise_for_status()
            entry = r.json().get(prompt_id)
            if entry and (entry.get("status") or {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error":
                    errors = [data for event, data in status.get("messages", []) if event == "execution_error"]
                    error = errors[0] if errors else {"exception_message": json.dumps(status)[:3000]}
                    raise ExecutionFailed(prompt_id, error, self.log_tail(30))
                return entry
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; queue: "
                             f"{self.get('/queue').text[:1000]}\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue, wait, and return the outputs ({node id: {"images": [...], ...}})."""
        return self.wait(self.queue(prompt), timeout)["outputs"]

    def fetch_image(self, image_ref: dict):
        """An output/input/temp image as a numpy array (HxWxC uint8) through /view."""
        import numpy as np
        from PIL import Image

        params = {"filename": image_ref["filename"], "subfolder": image_ref.get("subfolder", ""),
                  "type": image_ref.get("type", "output")}
        r = self.get("/view", params=params)
        assert r.status_code == 200, f"/view {params} answered {r.status_code}"
        return np.array(Image.open(io.BytesIO(r.content)))

    def upload_input(self, path: str, name: str | None = None) -> str:
        """Copy a file into the input folder; returns the name LoadImage takes."""
        name = name or os.path.basename(path)
        shutil.copyfile(path, os.path.join(self.input_dir, name))
        return name

    def save_input_image(self, array, name: str) -> str:
        """Write a HxWx3 uint8 array as a PNG into the input folder; returns the LoadImage name."""
        from PIL import Image

        Image.fromarray(array).save(os.path.join(self.input_dir, name))
        return name
