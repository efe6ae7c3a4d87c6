"""The ComfyUI skin over facex_core: one module per stage, each exporting NODES.

The loader takes NODE_CLASS_MAPPINGS first and falls back to comfy_entrypoint only when it is
absent, so this pack exports comfy_entrypoint alone (ARCHITECTURE.md).
"""

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

from . import paths

# Stage modules in data-flow order. A stage whose optional dependency is missing logs and is
# skipped instead of taking the whole pack down.
STAGES = ("loaders", "representation", "ford", "fors", "frc", "evaluate")

log = logging.getLogger("facex")


def _load_stage_nodes() -> list[type[io.ComfyNode]]:
    found = []
    for stage in STAGES:
        try:
            module = importlib.import_module(f".{stage}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"nodes.{stage}"):
                continue  # stage not written yet
            log.error("FaceX: nodes for stage %r disabled: %s", stage, e)
            continue
        found.extend(module.NODES)
    return found


class FaceXExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        paths.register_model_folders()
        return _load_stage_nodes()


async def comfy_entrypoint() -> FaceXExtension:
    return FaceXExtension()
