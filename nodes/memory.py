"""FORD models under ComfyUI's memory management.

ComfyUI frees memory (the Free-memory buttons, which POST /free, or a model that needs the VRAM) by
unloading the ModelPatchers in ``comfy.model_management.current_loaded_models``. FaceX takes part
through that list, the way ComfyUI's own CLIP vision does, rather than by patching ComfyUI:

- a torch extractor's network (BiSeNet, Deep3DFaceRecon, L2CS) gets a ModelPatcher and is loaded
  with ``load_models_gpu`` before each use; when ComfyUI frees memory it moves the network to the
  offload device, and the extractor runs on whatever device its network is on;
- the FORD caches that are not torch modules (onnxruntime sessions, MediaPipe graphs, dlib models)
  are stood for by one empty ModelPatcher; when ComfyUI unloads it, ``facex_core.ford.release_all()``
  drops them and the next run reopens what it needs.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import torch
from comfy.patcher_extension import CallbacksMP

from ..facex_core import ford

log = logging.getLogger("facex")


class FordCaches(torch.nn.Module):
    """No weights: stands in ComfyUI's loaded-model list for the FORD caches that are not torch modules."""


_caches_patcher: comfy.model_patcher.ModelPatcher | None = None


def _new_patcher(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _release_caches(patcher, unpatch_all: bool = True) -> None:
    # unpatch_all is False when ComfyUI swaps in a clone or the patcher is being deleted: nothing to free.
    if unpatch_all:
        # No garbage collection here: this runs inside ComfyUI's unloading loop, and a model finalised
        # now would drop out of the list that loop is walking. ComfyUI collects after freeing memory.
        freed = ford.release_all(collect=False)
        log.info("FaceX: ComfyUI freed memory; dropped %d cached FORD model(s) and session(s)", freed)


def caches_patcher() -> comfy.model_patcher.ModelPatcher:
    global _caches_patcher
    if _caches_patcher is None:
        _caches_patcher = _new_patcher(FordCaches())
        _caches_patcher.add_callback(CallbacksMP.ON_DETACH, _release_caches)
    return _caches_patcher


def module_patcher(net: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """The one patcher of a network, kept on the network itself.

    Two loader nodes of one file share the cached network, so they must share its patcher or ComfyUI
    would count it twice. The network <-> patcher cycle also means both go only in a garbage
    collection, together: ComfyUI's list holds the patcher weakly, so a patcher that died before its
    network would read as a leak, and a network freed mid-unloading would upset ComfyUI's loop.
    """
    patcher = getattr(net, "facex_patcher", None)
    if patcher is None:
        patcher = _new_patcher(net)
        net.facex_patcher = patcher
    return patcher


def patchers_for(*models) -> list[comfy.model_patcher.ModelPatcher]:
    """What ComfyUI must hold loaded while these FORD detectors / extractors run."""
    patchers = [caches_patcher()]
    for model in models:
        net = getattr(model, "net", None)
        if isinstance(net, torch.nn.Module):
            patchers.append(module_patcher(net))
    return patchers


def load(*models) -> None:
    """Load (or keep loaded) what these FORD models need on ComfyUI's device, before running them."""
    comfy.model_management.load_models_gpu(patchers_for(*models), force_full_load=True)
