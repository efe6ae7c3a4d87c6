"""FaceX node pack: ComfyUI entry point only. Everything else lives in nodes/ and facex_core/."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
