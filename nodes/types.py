"""Socket types FaceX adds to ComfyUI. Core types (IMAGE, MASK, MODEL, CLIP_VISION,
FACE_ANALYSIS) are used as they are so FaceX connects to other packs' nodes."""

from comfy_api.latest import io

FaceXRepresentation = io.Custom("FACEX_REPRESENTATION")
FaceXModel = io.Custom("FACEX_MODEL")
FaceXParser = io.Custom("FACEX_PARSER")
FaceXMotionModel = io.Custom("FACEX_MOTION_MODEL")
FaceXGazeModel = io.Custom("FACEX_GAZE_MODEL")
FaceXIdentityModel = io.Custom("FACEX_IDENTITY_MODEL")
