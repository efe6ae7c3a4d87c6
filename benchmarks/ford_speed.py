"""Per-face speed of FaceX's embedded (offline) FORD backends, on the 512x512 astronaut photo.

For each embedded backend (detector, dense landmarks, parse, identity, motion, gaze): the first call
in a fresh process state (every FORD cache released: model / graph load included) and the cached
calls after it (median and min over --repeats). Then the full embedded ``decompose`` (detect, align,
landmarks, parse, identity, motion, gaze) cold and warm, with torch's default intra-op thread count and
with 1 thread (on a busy 2-core machine torch's spinning pool slows mediapipe and dlib several-fold).

FaceMesh results are cached by image content in mediapipe_detect, so every timed call gets a
slightly different image (one pixel nudged per repeat): the warm figures are real compute, never a
cache hit. Timings are wall-clock on CPU; the 1-minute load average before and after is reported
because this machine may be shared (2 cores).

    python benchmarks/ford_speed.py [--repeats 10] [--torch-threads 0 1] [--out ford_speed.json]
Target: embedded full decompose <= 250 ms per face after warm-up on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

TARGET_MS = 250.0


def _nudged(image: np.ndarray, k: int) -> np.ndarray:
    out = image.copy()
    out[k % out.shape[0], (7 * k) % out.shape[1], 0] ^= 1  # a different image, visually the same
    return out


def _nudged_crops(crops: torch.Tensor, k: int) -> torch.Tensor:
    out = crops.clone()
    out[:, 0, k % out.shape[2], (7 * k) % out.shape[3]] += 1.0 / 255.0
    return out.clamp(0, 1)


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 2)


def _summary(first: float, warm: list[float]) -> dict:
    return {"first_call_ms": _ms(first), "cached_median_ms": _ms(statistics.median(warm)), "cached_min_ms": _ms(min(warm)),
            "cached_max_ms": _ms(max(warm)), "repeats": len(warm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1], help="torch intra-op threads for the decompose runs (0 = torch's default)")
    args = ap.parse_args()

    from skimage import data

    from facex_core import ford
    from facex_core.ford.base import REGISTRY, apply_extractor
    from facex_core.ford.decompose import EMBEDDED_EXTRACTORS, decompose_faces
    from facex_core.representation import FaceRepresentation

    image = np.ascontiguousarray(data.astronaut())
    load_before = os.getloadavg()
    report: dict = {
        "photo": "skimage.data.astronaut() 512x512, one face",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1_5_15_before": [round(v, 2) for v in load_before]},
        "backends": {},
    }

    # ---- per backend ----------------------------------------------------------------------------
    ford.release_all()
    info = REGISTRY["detect"]["mediapipe"]
    t = time.perf_counter()
    det = info.factory()
    det.detect(image)
    first = time.perf_counter() - t
    warm = []
    for k in range(args.repeats):
        t = time.perf_counter()
        det.detect(_nudged(image, k + 1))
        warm.append(time.perf_counter() - t)
    report["backends"]["detect/mediapipe"] = _summary(first, warm)

    base = decompose_faces(image, detector="mediapipe", backends="detect")
    crops, rep0 = base.crops, base.rep
    report["crop_size"] = int(crops.shape[-1])

    families = [("landmarks", "mediapipe_mesh")] + [(f, EMBEDDED_EXTRACTORS[f]) for f in ("parse", "identity", "motion", "gaze")]
    rep_with_landmarks: FaceRepresentation = rep0
    for family, name in families:
        ford.release_all()
        factory = REGISTRY[family][name].factory
        inputs = rep_with_landmarks if family != "landmarks" else rep0
        t = time.perf_counter()
        extractor = factory()
        out = apply_extractor(extractor, crops, inputs)
        first = time.perf_counter() - t
        if family == "landmarks":
            rep_with_landmarks = out
        warm = []
        for k in range(args.repeats):
            c = _nudged_crops(crops, k + 1)
            t = time.perf_counter()
            apply_extractor(extractor, c, inputs)
            warm.append(time.perf_counter() - t)
        report["backends"][f"{family}/{name}"] = _summary(first, warm)

    # ---- full embedded decompose, per torch intra-op thread count -----------------------------------
    # torch's thread pool spins between ops; beside mediapipe's and dlib's own threads on 2 cores that
    # contention dominates, so the full pipeline is timed with torch's default and with 1 thread.
    default_threads = torch.get_num_threads()
    report["decompose_embedded_per_face"] = {}
    for n, threads in enumerate(args.torch_threads):
        torch.set_num_threads(threads or default_threads)
        first = None
        if n == 0:
            ford.release_all()
            t = time.perf_counter()
            decompose_faces(image, detector="mediapipe", backends="embedded")
            first = time.perf_counter() - t
        else:
            decompose_faces(_nudged(image, 999), detector="mediapipe", backends="embedded")  # warm-up at this setting
        warm = []
        for k in range(args.repeats):
            img = _nudged(image, 1000 + 100 * n + k)
            t = time.perf_counter()
            result = decompose_faces(img, detector="mediapipe", backends="embedded")
            warm.append((time.perf_counter() - t) / result.rep.batch_size)
        full = _summary(first if first is not None else float("nan"), warm)
        if first is None:
            del full["first_call_ms"]
        full["fields"] = result.rep.present()
        full["backends"] = result.rep.backends
        full["target_ms"] = TARGET_MS
        full["meets_target"] = full["cached_median_ms"] <= TARGET_MS
        report["decompose_embedded_per_face"][f"torch_threads={torch.get_num_threads()}"] = full
    torch.set_num_threads(default_threads)
    report["machine"]["load_average_1_5_15_after"] = [round(v, 2) for v in os.getloadavg()]

    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
