"""`facex evaluate`: the paper's metrics over folders of images.

    facex evaluate --generated out/ --reference gt/ [--driving drive/] [--inception FILE]
                   [--metrics ssim psnr ...] [--out results.md] [--csv results.csv] [--name RUN]

Images pair up by file name without extension (out/0007.png <-> gt/0007.jpg):
- SSIM, PSNR, RMSE: generated vs reference, pair by pair;
- ID: identity cosine similarity, generated vs reference (the identity source or ground truth);
- Pose, Exp, Gaze: generated vs driving (the motion source; the reference when --driving is absent);
- FID: all generated images vs all reference images (needs --inception, the FID Inception file).
Face metrics run the embedded FORD backends (facex_core.ford.decompose) when they are importable.
With --csv, an existing table gains (or replaces) this run's row, so several runs make one table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import metrics as M
from .tables import METRIC_COLUMNS, ResultsTable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class EvaluateError(RuntimeError):
    """A problem with the command's inputs; printed as one line, exit code 2."""


@dataclass(frozen=True)
class MetricPlan:
    kind: str  # "pixel": per pair vs reference; "set": FID; "face": FORD representations
    against: str  # "reference" or "driving"
    per_item: Optional[Callable] = None  # metric function for pixel / face metrics


METRIC_PLANS: dict[str, MetricPlan] = {
    "id": MetricPlan("face", "reference", M.identity_similarity),
    "pose": MetricPlan("face", "driving", M.pose_error),
    "expression": MetricPlan("face", "driving", M.expression_error),
    "gaze": MetricPlan("face", "driving", M.gaze_error),
    "ssim": MetricPlan("pixel", "reference", M.ssim),
    "psnr": MetricPlan("pixel", "reference", M.psnr),
    "rmse": MetricPlan("pixel", "reference", M.rmse),
    "fid": MetricPlan("set", "reference"),
}
assert set(METRIC_PLANS) == set(METRIC_COLUMNS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--generated", required=True, type=Path, help="folder of generated images")
    parser.add_argument("--reference", required=True, type=Path, help="folder of reference images (ground truth or identity source), same file names")
    parser.add_argument("--driving", type=Path, help="folder of driving images (motion source) for Pose/Exp/Gaze; default: --reference")
    parser.add_argument("--inception", type=Path, help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); FID runs only with it")
    parser.add_argument(
        "--metrics", nargs="+", default=["auto"], metavar="METRIC",
        help=f"metrics to compute: {' '.join(METRIC_COLUMNS)}, 'all', or 'auto' (default: pixel metrics, "
        "FID when --inception is given, face metrics when the FORD backends are available)",
    )
    parser.add_argument("--out", type=Path, help="write the results table as Markdown here")
    parser.add_argument("--csv", type=Path, help="write the results table as CSV here (an existing table keeps its other rows)")
    parser.add_argument("--per-image", type=Path, help="write per-image values as CSV here")
    parser.add_argument("--name", help="row name in the table (default: the --generated folder's name)")
    parser.add_argument("--device", default="cpu", help="torch device for FID and FORD networks (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per Inception batch (default: 16)")


def run(args: argparse.Namespace) -> int:
    try:
        table, lines = evaluate(args)
    except (EvaluateError, ValueError) as e:  # core's user-facing errors are ValueErrors
        print(f"facex evaluate: error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line, file=sys.stderr)
    print(table.to_markdown(), end="")
    return 0


# ---- the work -------------------------------------------------------------------------------------

def evaluate(args: argparse.Namespace) -> tuple[ResultsTable, list[str]]:
    notes: list[str] = []
    generated = _image_files(args.generated, "--generated")
    reference = _image_files(args.reference, "--reference")
    selected = _select_metrics(args, notes)

    pairs_ref = _pair(generated, reference, "--reference")
    values: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {stem: {} for stem in generated}

    pixel = [k for k in selected if METRIC_PLANS[k].kind == "pixel"]
    if pixel:
        for stem, (gen_path, ref_path) in pairs_ref.items():
            gen, ref = _load(gen_path), _load(ref_path)
            if gen.shape != ref.shape:
                raise EvaluateError(
                    f"{gen_path.name} is {gen.shape[2]}x{gen.shape[1]} but {ref_path.name} in --reference is "
                    f"{ref.shape[2]}x{ref.shape[1]}; pixel metrics need equal sizes (resize one set, or leave out {' '.join(pixel)})"
                )
            for k in pixel:
                per_image[stem][k] = float(METRIC_PLANS[k].per_item(gen, ref)[0])
        for k in pixel:
            values[k] = M.summarize(torch.tensor([per_image[s][k] for s in pairs_ref]))
        identical = sum(1 for s in pairs_ref if per_image[s].get("psnr") == float("inf"))
        if 0 < identical < len(pairs_ref):
            notes.append(f"{identical} pair(s) are identical (infinite PSNR); the PSNR mean leaves them out")

    if "fid" in selected:
        values["fid"] = _fid(args, list(generated.values()), list(reference.values()))
        if min(len(generated), len(reference)) < 2048:
            notes.append(
                f"FID from {len(generated)} generated / {len(reference)} reference images: below 2048 images the "
                "covariance is rank-deficient and FID is biased upwards; compare only runs with equal counts"
            )

    face = [k for k in selected if METRIC_PLANS[k].kind == "face"]
    if face:
        try:
            values.update(_face_metrics(face, args, generated, reference, per_image))
        except EvaluateError as e:
            # 'auto' only promises face metrics when FORD runs on these images; an explicit request fails.
            if not _auto(args):
                raise
            notes.append(f"skipped face metrics (ask for them with --metrics to make this an error): {e}")
        else:
            if any(METRIC_PLANS[k].against == "driving" for k in face) and not args.driving:
                notes.append("Pose/Exp/Gaze measured against --reference (no --driving given)")

    name = args.name or args.generated.resolve().name
    table = ResultsTable.read_csv(args.csv) if args.csv and args.csv.is_file() else ResultsTable()
    table.add(name, values)
    if args.csv:
        table.write_csv(args.csv)
    if args.out:
        table.write_markdown(args.out)
    if args.per_image:
        _write_per_image(args.per_image, per_image, [k for k in METRIC_COLUMNS if k in values and k != "fid"])
    notes.insert(0, f"{len(pairs_ref)} image pair(s) evaluated: {', '.join(values) or 'no metrics'}")
    return table, notes


def _face_metrics(face: list[str], args, generated: dict[str, Path], reference: dict[str, Path], per_image) -> dict[str, float]:
    decompose = _decompose_function()
    targets = {"reference": (reference, "--reference")}
    if any(METRIC_PLANS[k].against == "driving" for k in face):
        option = "--driving" if args.driving else "--reference"
        targets["driving"] = (_image_files(args.driving or args.reference, option), option)
    reps: dict[Path, object] = {}  # one decomposition per file, shared when driving is the reference

    def rep_of(path: Path, option: str):
        if path not in reps:
            reps[path] = _represent(decompose, path, option)
        return reps[path]

    values = {}
    for k in face:
        files, option = targets[METRIC_PLANS[k].against]
        per_pair = []
        for stem, (gen_path, other_path) in _pair(generated, files, option).items():
            v = float(METRIC_PLANS[k].per_item(rep_of(gen_path, "--generated"), rep_of(other_path, option))[0])
            per_image[stem][k] = v
            per_pair.append(v)
        values[k] = M.summarize(torch.tensor(per_pair))
    return values


def _auto(args) -> bool:
    return [m.lower() for m in args.metrics] == ["auto"]


def _select_metrics(args, notes: list[str]) -> list[str]:
    requested = [m.lower() for m in args.metrics]
    if "all" in requested:
        requested = list(METRIC_COLUMNS)
    if _auto(args):
        chosen = [k for k, p in METRIC_PLANS.items() if p.kind == "pixel"]
        if args.inception:
            chosen.append("fid")
        missing = _ford_missing()
        if missing is None:
            chosen += [k for k, p in METRIC_PLANS.items() if p.kind == "face"]
        else:
            notes.append(f"skipped: {missing}")
        return [k for k in METRIC_COLUMNS if k in chosen]
    unknown = [m for m in requested if m not in METRIC_COLUMNS]
    if unknown:
        raise EvaluateError(f"unknown metric(s) {' '.join(unknown)} in --metrics; choose from {' '.join(METRIC_COLUMNS)}, all, auto")
    if "fid" in requested and not args.inception:
        raise EvaluateError(
            "FID was requested but no Inception weights were given: pass --inception "
            "path/to/pt_inception-2015-12-05-6726825d.pth (FaceX never downloads it), or leave fid out of --metrics"
        )
    return [k for k in METRIC_COLUMNS if k in requested]


# ---- images ------------------------------------------------------------------------------------

def _image_files(folder: Path, option: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluateError(f"{option} folder not found: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in files:
                raise EvaluateError(
                    f"{option} holds two images named {path.stem!r} ({files[path.stem].name}, {path.name}); "
                    "images pair by name without extension, so keep one"
                )
            files[path.stem] = path
    if not files:
        raise EvaluateError(f"{option} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _pair(generated: dict[str, Path], others: dict[str, Path], option: str) -> dict[str, tuple[Path, Path]]:
    missing = [s for s in generated if s not in others]
    if missing:
        shown = ", ".join(generated[s].name for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvaluateError(
            f"{len(missing)} generated image(s) have no image of the same name in {option}: {shown}; "
            "images pair by file name without extension"
        )
    return {s: (generated[s], others[s]) for s in generated}


def _load(path: Path) -> torch.Tensor:
    """(1, H, W, 3) float32 in [0, 1]."""
    try:
        from PIL import Image
    except ImportError as e:  # Pillow ships with ComfyUI; a bare install may lack it
        raise EvaluateError("reading images needs Pillow: pip install pillow") from e
    import numpy as np

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise EvaluateError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr).unsqueeze(0)


# ---- FID -------------------------------------------------------------------------------------------

def _fid(args, generated: list[Path], reference: list[Path]) -> float:
    from .fid import fid_from_features, inception_features, load_inception

    model = load_inception(args.inception, device=args.device, looked_in="the path given with --inception")

    def stream(paths):
        for p in paths:
            yield _load(p)

    feats_gen = inception_features(model, stream(generated), batch_size=args.batch_size)
    feats_ref = inception_features(model, stream(reference), batch_size=args.batch_size)
    return fid_from_features(feats_gen, feats_ref)


# ---- FORD --------------------------------------------------------------------------------------------

def _ford_module_name() -> str:
    package = __package__ or "facex_core.evaluate"
    return package.rsplit(".", 1)[0] + ".ford.decompose"


def _ford_missing() -> Optional[str]:
    """None when FORD's decompose is importable, else why not."""
    try:
        _decompose_function()
    except EvaluateError as e:
        return str(e)
    return None


def _decompose_function():
    name = _ford_module_name()
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise EvaluateError(
            f"face metrics (ID, Pose, Exp, Gaze) need the FORD extractors ({name}), which could not be imported: {e}. "
            "Install the embedded backends (pip install 'comfyui-facex[embedded]') or leave id/pose/expression/gaze out of --metrics"
        ) from e
    fn = getattr(module, "decompose", None)
    if not callable(fn):
        raise EvaluateError(f"{name} has no decompose() function; this FaceX install is incomplete")
    return fn


def _represent(decompose, path: Path, option: str):
    """FaceRepresentation (batch of one) of the image's largest face, via FORD's decompose on a
    (1, H, W, 3) image; decompose may return the representation alone or first in a tuple."""
    from ..ford.base import BackendUnavailable
    from ..representation import FaceRepresentation

    try:
        out = decompose(_load(path))
    except BackendUnavailable as e:
        raise EvaluateError(f"FORD backend unavailable while reading {path.name} in {option}: {e}") from e
    except (ValueError, RuntimeError) as e:
        raise EvaluateError(f"FORD failed on {path.name} in {option}: {e}") from e
    rep = out
    if not isinstance(rep, FaceRepresentation):
        rep = next((x for x in (out if isinstance(out, (tuple, list)) else ()) if isinstance(x, FaceRepresentation)), None)
    if rep is None:
        raise EvaluateError(f"FORD's decompose returned {type(out).__name__}, not a FaceRepresentation")
    return rep.index(0)


def _write_per_image(path: Path, per_image: dict[str, dict[str, float]], keys: list[str]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image"] + [METRIC_COLUMNS[k].header for k in keys])
        for stem, row in per_image.items():
            writer.writerow([stem] + [repr(row[k]) if k in row else "" for k in keys])
