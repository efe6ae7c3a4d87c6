"""Model-file plumbing shared by the production FORD backends.

- where a model file is looked for, and the two errors a user can hit (file missing, file wrong);
- one cache of loaded models (onnxruntime sessions and torch modules) keyed by
  (kind, file, size, mtime, variant), so each file is loaded once per device and a replaced file is
  reloaded; ``release_all()`` drops everything;
- onnxruntime sessions with a provider list users can write as "CPU" / "CUDA" / ...;
- access to the ONNX protobuf classes for graph edits (the `onnx` package when it imports, or its
  generated protobuf module alone when only one of onnx's own dependencies is missing).

onnxruntime and onnx are imported lazily: a missing package disables the backend that needs it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

from .base import BackendUnavailable

log = logging.getLogger("facex")

T = TypeVar("T")


class ModelFileError(ValueError):
    """A model file exists but is not the model the backend expects (truncated, wrong keys, wrong graph)."""


class ModelFileNotFound(BackendUnavailable, FileNotFoundError):
    """A model file is not where the backend looked; the message names the folders and the file."""


# ---- finding files ----------------------------------------------------------------------------


def find_model_file(file_names: Sequence[str], folders: Iterable, what: str) -> Path:
    """First existing ``folder/name`` (folders in order, then names in order)."""
    folders = [Path(f) for f in folders]
    for folder in folders:
        for name in file_names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(f) for f in folders) or "(no folders given)"
    raise ModelFileNotFound(
        f"{what}: model file {' or '.join(repr(n) for n in file_names)} not found; looked in: {looked}. "
        f"Put the file in one of those folders (README.md, 'Model files', says where to get it)."
    )


def resolve_model_file(path=None, file_names: Sequence[str] = (), folders: Iterable = (), what: str = "model") -> Path:
    """An explicit ``path`` (which must exist) or the first expected file name found in ``folders``."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelFileNotFound(
                f"{what}: model file {p.name!r} not found at {p}; looked in: {p.parent}. "
                f"Expected one of: {', '.join(file_names) or p.name}."
            )
        return p
    return find_model_file(file_names, folders, what)


# ---- the cache --------------------------------------------------------------------------------

_CACHE: dict[tuple, object] = {}
_LOCK = threading.RLock()


def _file_key(path) -> tuple:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def cached(kind: str, path, variant, build: Callable[[], T]) -> T:
    """The object ``build()`` made for (kind, file, variant), building it once.

    ``variant`` holds whatever changes the loaded object (device, providers, graph edits).
    """
    key = (kind, *_file_key(path), variant)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]  # type: ignore[return-value]
        obj = build()
        _CACHE[key] = obj
        return obj


def cache_entries() -> list[tuple]:
    with _LOCK:
        return list(_CACHE)


def release_all() -> int:
    """Forget every loaded session and module (frees their memory once nothing else holds them)."""
    with _LOCK:
        n = len(_CACHE)
        _CACHE.clear()
    return n


# ---- onnxruntime ------------------------------------------------------------------------------

# Short names users pick in the UI -> onnxruntime provider names.
PROVIDERS: dict[str, str] = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}


# torch device type -> the providers that run on that hardware, best first ("cuda" is also ROCm's
# torch device type). What "auto" picks for the device the host application (ComfyUI) computes on.
PROVIDERS_FOR_TORCH_DEVICE: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDA", "ROCM"),
    "mps": ("CoreML",),
    "privateuseone": ("DirectML",),  # torch-directml
    "xpu": ("OpenVINO",),
    "cpu": (),
}


def providers_for_device(device) -> list[str]:
    """Full provider names for a torch device: the available ones that run on it, then CPU."""
    ort = onnxruntime_module()
    available = set(ort.get_available_providers())
    wanted = PROVIDERS_FOR_TORCH_DEVICE.get(torch_device_type(device), ())
    return [PROVIDERS[p] for p in wanted if PROVIDERS[p] in available] + ["CPUExecutionProvider"]


def torch_device_type(device) -> str:
    return device.type if hasattr(device, "type") else str(device).split(":")[0]


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(
            "onnxruntime is not installed; install onnxruntime-gpu (Windows/Linux) or onnxruntime (macOS) "
            "into ComfyUI's Python — only one of the two"
        ) from e
    return onnxruntime


def resolve_providers(providers=None) -> list[str]:
    """Provider names for a session: short or full names, unavailable ones dropped, CPU always last."""
    ort = onnxruntime_module()
    if providers is None:
        providers = ["CPU"]
    if isinstance(providers, str):
        providers = [providers]
    available = set(ort.get_available_providers())
    out = []
    for p in providers:
        full = PROVIDERS.get(p, p)
        if full not in available:
            log.warning("FaceX: onnxruntime provider %s is not available here (%s); using the next one", p, sorted(available))
            continue
        if full not in out:
            out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def open_session(path, providers=None, model_bytes: Union[bytes, Callable[[], bytes], None] = None, variant: str = "",
                 what: str = "ONNX model"):
    """A cached onnxruntime InferenceSession for ``path`` (or for an edited copy given as ``model_bytes``).

    ``model_bytes`` may be a function making the edited graph: it is called only when the session is
    not cached, so a caller that re-opens its session after ``release_all()`` need not keep a copy of
    the graph in memory.
    """
    path = Path(path)
    provider_list = resolve_providers(providers)

    def build():
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the CUDA-missing fallback chatter is not the user's problem
        source = model_bytes() if callable(model_bytes) else model_bytes
        try:
            return ort.InferenceSession(source if source is not None else str(path), options, providers=provider_list)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(
                f"{path.name}: onnxruntime cannot load it as {what} ({first_line}); the file is truncated or is not "
                f"an ONNX model — download it again ({path})"
            ) from e

    return cached("onnxruntime", path, (tuple(provider_list), variant), build)


# ---- ONNX protobuf classes (graph edits) ------------------------------------------------------

_PROTO_MODULE = None


def onnx_proto():
    """A module exposing ModelProto, ValueInfoProto, TensorProto, ... or None when onnx is absent.

    Prefers the `onnx` package. When `import onnx` fails because one of onnx's own dependencies is
    missing (seen: ml_dtypes), the generated protobuf module inside the installed onnx package still
    works with protobuf alone, and that is all a graph edit needs.
    """
    global _PROTO_MODULE
    if _PROTO_MODULE is not None:
        return _PROTO_MODULE
    try:
        import onnx

        _PROTO_MODULE = onnx
        return onnx
    except ImportError as e:
        reason = e
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    pb2_path = os.path.join(list(spec.submodule_search_locations)[0], "onnx_ml_pb2.py")
    if not os.path.isfile(pb2_path):
        return None
    try:
        pb2_spec = importlib.util.spec_from_file_location("facex_onnx_ml_pb2", pb2_path)
        module = importlib.util.module_from_spec(pb2_spec)
        pb2_spec.loader.exec_module(module)
    except Exception as e:  # protobuf missing or incompatible
        log.warning("FaceX: the onnx package does not import (%s) and its protobuf classes do not load either (%s)", reason, e)
        return None
    log.info("FaceX: `import onnx` failed (%s); using its protobuf classes directly for graph edits", reason)
    _PROTO_MODULE = module
    return module


def load_model_proto(path):
    """The ModelProto of an ONNX file, or None when no ONNX protobuf classes are available."""
    proto = onnx_proto()
    if proto is None:
        return None
    model = proto.ModelProto()
    data = Path(path).read_bytes()
    try:
        model.ParseFromString(data)
    except Exception as e:
        raise ModelFileError(f"{Path(path).name}: not a readable ONNX file ({e}); the file is truncated or corrupt — download it again") from e
    if not model.graph.node:
        raise ModelFileError(f"{Path(path).name}: the ONNX graph is empty; the file is truncated or not an ONNX model — download it again")
    return model
