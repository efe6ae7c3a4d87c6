"""Shared pytest set-up: tests/ on sys.path so `from support.x import ...` works everywhere.

Session fixtures shared by tests/comfy and tests/e2e:
- `comfy_server`: a real ComfyUI (tests/support/comfy_server.py) with this checkout linked as
  custom_nodes/comfyui-facex and the test-only pack tests/fixtures/facex_test_nodes; the run fails
  if a pack did not import or no FaceX node is registered.
- `random_sd15_tiny`, `random_lora_sd15_tiny`, `random_controlnet_sd15_tiny`: random-weight model
  files (tests/support/random_checkpoints.py) linked into that server's models folders; each
  fixture returns the file name a prompt passes to the loader node.
- `astronaut_input`: the public-domain astronaut photo in the server's input folder.
- `figures`: measured numbers (seconds, bytes) collected into artifacts/figures.json and printed
  at the end of the run.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
# facex_core from this checkout (scripts/test.sh also exports it on PYTHONPATH for subprocesses).
# Appended, not prepended: the repository root also holds the pack's `nodes/` package, which must
# never shadow ComfyUI's own `nodes` module.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _root not in sys.path:
    sys.path.append(_root)

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS_DIR = os.path.join(REPO_ROOT, "artifacts")

_figures: dict[str, object] = {}


@pytest.fixture(scope="session")
def figures() -> dict:
    return _figures


@pytest.fixture(scope="session")
def artifacts_dir() -> str:
    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    return ARTIFACTS_DIR


def pytest_terminal_summary(terminalreporter):
    if not _figures:
        return
    terminalreporter.section("measured figures")
    for key, value in sorted(_figures.items()):
        terminalreporter.write_line(f"{key}: {value}")
    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    with open(os.path.join(ARTIFACTS_DIR, "figures.json"), "w") as f:
        json.dump(_figures, f, indent=1, sort_keys=True)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    from support.comfy_server import FIXTURE_PACKS_DIR, PACK_NAME, ComfyServer

    server = ComfyServer(
        tmp_path_factory.mktemp("comfyui"),
        custom_nodes={PACK_NAME: REPO_ROOT,
                      "facex_test_nodes": os.path.join(FIXTURE_PACKS_DIR, "facex_test_nodes")},
    )
    try:
        server.start()
    except AssertionError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)
    try:
        server.check_loaded()
    except AssertionError as e:
        server.stop()
        pytest.fail(str(e), pytrace=False)
    _figures["comfyui_start_seconds"] = round(server.start_seconds, 2)
    yield server
    server.stop()


def _random_model(server, kind: str) -> str:
    from support import random_checkpoints

    t0 = time.perf_counter()
    try:
        name = random_checkpoints.install(kind, server.models_dir, server.comfyui)
    except RuntimeError as e:
        pytest.fail(f"could not build the random {kind} model: {e}", pytrace=False)
    report = random_checkpoints.build_report(kind) or {}
    _figures[f"random_{kind}_mib"] = round(report.get("bytes", 0) / 2**20, 1)
    _figures[f"random_{kind}_build_seconds"] = report.get("build_seconds")
    _figures[f"random_{kind}_ready_seconds_this_run"] = round(time.perf_counter() - t0, 2)
    return name


@pytest.fixture(scope="session")
def random_sd15_tiny(comfy_server) -> str:
    return _random_model(comfy_server, "sd15_tiny")


@pytest.fixture(scope="session")
def random_lora_sd15_tiny(comfy_server) -> str:
    return _random_model(comfy_server, "lora_sd15_tiny")


@pytest.fixture(scope="session")
def random_controlnet_sd15_tiny(comfy_server) -> str:
    return _random_model(comfy_server, "controlnet_sd15_tiny")


@pytest.fixture(scope="session")
def astronaut_input(comfy_server) -> str:
    """facex_astronaut.png in the server's input folder (skimage.data.astronaut, public domain)."""
    from skimage import data

    return comfy_server.save_input_image(data.astronaut(), "facex_astronaut.png")
