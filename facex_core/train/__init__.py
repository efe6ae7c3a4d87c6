"""FaceX training: `facex prepare` (videos -> cache of aligned crops + FORD outputs), `facex train`
(accelerate + diffusers, frozen SD, only the FaceX adapters and FRC bank learn) and `facex export`
(training state -> FaceX checkpoint the nodes load)."""


class TrainError(RuntimeError):
    """A training setup a user can fix (wrong cache, base model, config); the message says how."""


def use_cpu() -> bool:
    """accelerate needs cpu=True to run several CPU processes (gloo) under torchrun / `accelerate
    launch --multi_gpu`: set when ACCELERATE_USE_CPU is on or no accelerator device exists."""
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    if torch.cuda.is_available():
        return False
    try:
        from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

        return not (is_mps_available() or is_npu_available() or is_xpu_available())
    except ImportError:
        return True
