"""The paper's evaluation metrics (FaceX Sec. 4).

- `metrics`: per-image SSIM / PSNR / RMSE (matching scikit-image) and per-face identity
  similarity and pose / expression / gaze errors on FaceRepresentations;
- `fid`: Fréchet Inception Distance with the standard FID Inception-v3 (user-provided weights);
- `tables`: results as the paper's tables (Markdown, CSV);
- `cli`: the `facex evaluate` command over folders of images.
"""

from .metrics import (
    MetricError,
    expression_error,
    gaze_error,
    identity_similarity,
    pose_error,
    psnr,
    rmse,
    ssim,
)
from .tables import METRIC_COLUMNS, ResultsTable

__all__ = [
    "MetricError",
    "identity_similarity",
    "pose_error",
    "expression_error",
    "gaze_error",
    "ssim",
    "psnr",
    "rmse",
    "METRIC_COLUMNS",
    "ResultsTable",
]
