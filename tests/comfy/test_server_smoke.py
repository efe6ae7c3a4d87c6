"""The real ComfyUI 0.3.75 server with the FaceX pack: it loads, runs core txt2img graphs on the
tiny random SD1.5 checkpoint (alone, and with LoRA + ControlNet), and reports bad prompts clearly
without dying."""

import time

import numpy as np
import pytest
from support.comfy_server import PACK_NAME, ExecutionFailed, PromptRejected, next_seed, output_images, txt2img
from support.random_checkpoints import SD15_CHECKPOINT_TINY

pytestmark = pytest.mark.comfy


def _image(server, prompt):
    outputs = server.run(prompt)
    images = output_images(outputs)
    assert len(images) == 1, f"expected one saved image, got outputs {outputs}"
    return server.fetch_image(images[0])


def test_server_loads_every_pack_without_import_failures(comfy_server):
    assert comfy_server.load_problems() == []
    ours = comfy_server.pack_nodes(PACK_NAME)
    assert ours, "the FaceX pack registered no node"
    badly_named = [k for k in ours if not k.startswith("FaceX")]
    assert badly_named == [], f"node ids must start with FaceX (a public API): {badly_named}"
    # The test-only pack loads beside it and is clearly marked as a fixture.
    fixture_nodes = comfy_server.pack_nodes("facex_test_nodes")
    assert sorted(fixture_nodes) == ["FaceXTestAttn2Replace", "FaceXTestLoadedModels"]
    assert all("TEST FIXTURE" in node["display_name"] for node in fixture_nodes.values())
    assert not set(fixture_nodes) & set(ours), "a test fixture node leaked into the FaceX pack"


# The unpatched images (one seed, run once per module) that the other tests compare against. The
# comparisons (LoRA, ControlNet, attention patch) run at 128 px: a quarter of the cost, same graph.
BASE_SEED = next_seed()
COMPARE = {"width": 128, "height": 128}


@pytest.fixture(scope="module")
def base_image(comfy_server, random_sd15_tiny, figures):
    t0 = time.perf_counter()
    image = _image(comfy_server, txt2img(random_sd15_tiny, seed=BASE_SEED))
    figures["txt2img_256px_2step_first_seconds"] = round(time.perf_counter() - t0, 2)
    return image


@pytest.fixture(scope="module")
def base_image_small(comfy_server, random_sd15_tiny):
    return _image(comfy_server, txt2img(random_sd15_tiny, seed=BASE_SEED, **COMPARE))


def test_txt2img_on_tiny_random_checkpoint_makes_a_256px_image(comfy_server, random_sd15_tiny, base_image, figures):
    assert base_image.shape == (256, 256, 3) and base_image.dtype == np.uint8
    assert base_image.std() > 1.0, "the decoded image is flat: the random VAE/UNet produced nothing"
    # A new seed really runs again (models already loaded: the figure later tests budget with).
    t0 = time.perf_counter()
    again = _image(comfy_server, txt2img(random_sd15_tiny, seed=next_seed()))
    figures["txt2img_256px_2step_warm_seconds"] = round(time.perf_counter() - t0, 2)
    assert again.shape == (256, 256, 3)
    assert np.abs(again.astype(int) - base_image.astype(int)).mean() > 0.5, "a new seed gave the same image"


def test_lora_and_controlnet_apply_in_one_graph(comfy_server, random_sd15_tiny, random_lora_sd15_tiny,
                                                random_controlnet_sd15_tiny, control_image, base_image_small):
    base_image = base_image_small
    mark = comfy_server.log_mark()
    with_lora = _image(comfy_server, txt2img(random_sd15_tiny, seed=BASE_SEED, lora=random_lora_sd15_tiny, **COMPARE))
    both = _image(comfy_server, txt2img(random_sd15_tiny, seed=BASE_SEED, lora=random_lora_sd15_tiny,
                                        controlnet=random_controlnet_sd15_tiny, control_image=control_image,
                                        **COMPARE))
    log = comfy_server.log_text(mark)
    assert "lora key not loaded" not in log, "LoraLoader ignored keys of the random LoRA:\n" + log[-3000:]
    assert "missing controlnet keys" not in log, log[-3000:]
    assert both.shape == (128, 128, 3)
    lora_effect = np.abs(with_lora.astype(int) - base_image.astype(int)).mean()
    controlnet_effect = np.abs(both.astype(int) - with_lora.astype(int)).mean()
    assert lora_effect > 0.5, f"the LoRA did not change the output (mean abs difference {lora_effect:.3f})"
    assert controlnet_effect > 0.5, f"the ControlNet did not change the output ({controlnet_effect:.3f})"


def test_fixture_attn2_replace_patches_every_block_and_scale_zero_is_identity(comfy_server, random_sd15_tiny,
                                                                              base_image_small):
    base_image = base_image_small
    mark = comfy_server.log_mark()

    def patched(scale):
        return txt2img(random_sd15_tiny, seed=BASE_SEED, **COMPARE,
                       model_patches=[lambda p, m: p.add("FaceXTestAttn2Replace", model=m, scale=scale)[0]])

    same = _image(comfy_server, patched(0.0))
    changed = _image(comfy_server, patched(1.0))
    expected_blocks = (sum(SD15_CHECKPOINT_TINY["transformer_depth"]) + SD15_CHECKPOINT_TINY["transformer_depth_middle"]
                       + sum(SD15_CHECKPOINT_TINY["transformer_depth_output"]))
    assert f"patched {expected_blocks} transformer blocks" in comfy_server.log_text(mark)
    assert np.abs(same.astype(int) - base_image.astype(int)).max() <= 1, "scale 0 must reproduce the unpatched model"
    assert np.abs(changed.astype(int) - base_image.astype(int)).mean() > 0.5, "the attn2 replace patch had no effect"


def test_bad_input_is_rejected_with_a_clear_error_and_the_server_survives(comfy_server, random_sd15_tiny):
    prompt = txt2img("no_such_checkpoint.safetensors", seed=next_seed())
    loader_id = prompt.find("CheckpointLoaderSimple")[0]
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(prompt)
    message = str(rejected.value)
    assert "no_such_checkpoint.safetensors" in message and "CheckpointLoaderSimple" in message, message
    assert loader_id in rejected.value.response["node_errors"]
    comfy_server.assert_alive()


def test_failing_node_reports_node_and_exception_and_the_server_survives(comfy_server, random_sd15_tiny):
    # A checkpoint that passes validation (it is in the list) but is not a safetensors file.
    name = "facex_random_corrupt.safetensors"
    with open(f"{comfy_server.models_dir}/checkpoints/{name}", "wb") as f:
        f.write(b"this is not a safetensors file")
    prompt = txt2img(name, seed=next_seed())
    loader_id = prompt.find("CheckpointLoaderSimple")[0]
    with pytest.raises(ExecutionFailed) as failed:
        comfy_server.run(prompt)
    assert failed.value.error["node_id"] == loader_id
    assert failed.value.error["node_type"] == "CheckpointLoaderSimple"
    assert failed.value.error["exception_message"], "the server gave no exception message"
    assert f"node {loader_id} (CheckpointLoaderSimple)" in str(failed.value)
    comfy_server.assert_alive()
    # ... and still executes prompts (a small one: this checks the executor, not the model).
    image = _image(comfy_server, txt2img(random_sd15_tiny, seed=next_seed(), width=64, height=64, steps=1))
    assert image.shape == (64, 64, 3)


# Self-checks of the random model builders (tests/support/random_checkpoints.py) that other tests
# rely on: the layouts are the real ones, and the tiny checkpoint is what ComfyUI detected.

def test_random_unet_layouts_are_the_real_ones():
    from support import random_checkpoints as rc

    # Published UNet parameter counts of SD1.5, SD2.x and SDXL base.
    real = {"sd15": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}
    for family, count in real.items():
        full = rc.build_unet(family, "full", device="meta")
        assert sum(p.numel() for p in full.parameters()) == count, family
        tiny = rc.build_unet(family, "tiny")
        blocks = lambda m: sum(1 for mod in m.modules() if type(mod).__name__ == "BasicTransformerBlock")  # noqa: E731
        assert blocks(tiny) == blocks(full), f"{family}: tiny layout lost transformer blocks"
        x, t, context, y = rc.unet_inputs(family, "tiny", batch=2, latent_hw=8)
        import torch

        with torch.inference_mode():
            out = tiny(x, t, context=context, y=y)
        assert out.shape == x.shape and torch.isfinite(out).all(), family


def test_tiny_checkpoint_was_detected_as_sd15_with_its_own_layout(random_sd15_tiny):
    from support import random_checkpoints as rc

    report = rc.build_report("sd15_tiny")
    assert report["detected"] == "SD15"
    for key in ("model_channels", "channel_mult", "num_res_blocks", "transformer_depth",
                "transformer_depth_output", "transformer_depth_middle", "context_dim"):
        assert report["unet_config"][key] == rc.SD15_CHECKPOINT_TINY[key], key
    assert "random" in random_sd15_tiny
