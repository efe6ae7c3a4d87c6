"""Fixtures for tests that run prompts on the real ComfyUI server (tests/conftest.py starts it)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def control_image(comfy_server) -> str:
    """A 256x256 edge map of the astronaut photo in the server's input folder, the kind of hint
    image a ControlNet takes."""
    from skimage import data, feature, transform

    gray = transform.resize(data.astronaut().mean(axis=2) / 255.0, (256, 256), anti_aliasing=True)
    edges = feature.canny(gray, sigma=2.0)
    rgb = np.repeat((edges * 255).astype(np.uint8)[..., None], 3, axis=2)
    return comfy_server.save_input_image(rgb, "facex_test_control_edges.png")
