"""nodes/memory.py against ComfyUI's real model management, in this process (no server): the cases
that need exact control over what still holds a model. The server test (test_ford_memory_server.py)
drives the same code through POST /free.
"""

from __future__ import annotations

import gc

import pytest

from support.comfy_inprocess import import_comfy, import_pack_module
from support.random_ford_weights import install_random_models

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    return install_random_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def mm():
    import_comfy()
    import comfy.model_management

    comfy.model_management.unload_all_models()
    yield comfy.model_management
    comfy.model_management.unload_all_models()
    gc.collect()


def loaded_classes(mm) -> list[str]:
    return sorted(type(entry.model.model).__name__ for entry in mm.current_loaded_models if entry.model is not None)


def test_unloading_a_network_only_the_cache_holds_keeps_comfyui_s_loop_intact(mm, random_files):
    """The loader output was evicted, so only FaceX's cache holds the network when ComfyUI frees
    memory. Dropping the cache must not finalise the network inside ComfyUI's unloading loop (it would
    remove itself from the list being walked: IndexError in free_memory, the prompt worker thread dies)."""
    memory = import_pack_module("nodes.memory")
    bisenet = import_pack_module("facex_core.ford.bisenet")
    onnx_session = import_pack_module("facex_core.ford.onnx_session")
    parser = bisenet.make_parser(path=random_files["random_weights/79999_iter.pth"])
    memory.load(parser)
    assert loaded_classes(mm) == ["BiSeNetFaceParser", "FordCaches"]
    del parser

    mm.unload_all_models()  # what POST /free runs; raised IndexError when the release collected garbage
    assert loaded_classes(mm) == [] and onnx_session.cache_entries() == []
    gc.collect()  # what ComfyUI's prompt worker does right after
    assert mm.current_loaded_models == []


def test_extractors_of_one_file_share_one_patcher_and_reload_after_unload(mm, random_files):
    memory = import_pack_module("nodes.memory")
    l2cs = import_pack_module("facex_core.ford.l2cs")
    a = l2cs.make_gaze(path=random_files["random_weights/L2CSNet_gaze360.pkl"])
    b = l2cs.make_gaze(path=random_files["random_weights/L2CSNet_gaze360.pkl"])
    assert a.net is b.net, "the core cache shares one network per file"
    assert memory.patchers_for(a)[1] is memory.patchers_for(b)[1], "one network must be one model in ComfyUI's list"
    memory.load(a, b)
    assert loaded_classes(mm) == ["FordCaches", "L2CSNet"]
    mm.unload_all_models()
    assert loaded_classes(mm) == []
    memory.load(b)
    assert loaded_classes(mm) == ["FordCaches", "L2CSNet"]
