"""What putting the FORD models under ComfyUI's memory management costs and frees (nodes/memory.py).

Runs ComfyUI 0.3.75's real model management in this process (no server), on the astronaut photo:
- the cost of asking ComfyUI to load the FORD models before each node run, against the embedded
  FaceXDecompose work it precedes (ratio);
- the cost of looking the ArcFace session up in the cache on each use instead of holding it
  (RANDOM-weight glintr100.onnx with the real layout; timing only, no result is meaningful);
- what ComfyUI's "unload models" (``unload_all_models`` + the garbage collection that follows)
  gives back: the process's resident memory before and after, and what the first run afterwards
  costs against a warm run (ratio).

    python benchmarks/ford_memory.py [--repeats 20] [--out ford_memory.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.comfy_inprocess import import_pack_module  # noqa: E402
from support.random_ford_weights import install_random_models  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.disable(logging.INFO)

    from skimage import data

    memory = import_pack_module("nodes.memory")
    decompose = import_pack_module("facex_core.ford.decompose")
    insightface_onnx = import_pack_module("facex_core.ford.insightface_onnx")
    import comfy.model_management as mm

    image = np.ascontiguousarray(data.astronaut())
    detector = decompose.make_detector("mediapipe")

    def run():
        extractors = [decompose.REGISTRY[f][n].factory() for f, n in decompose.EMBEDDED_EXTRACTORS.items()]
        memory.load(detector, *extractors)
        return decompose.decompose_faces(image, detector, extractors=extractors)

    rss_start = rss_mib()
    run()
    warm = median_s(run, args.repeats)
    load = median_s(lambda: memory.load(detector), args.repeats * 10)

    arc = insightface_onnx.ArcFaceOnnx(install_random_models(tempfile.mkdtemp())["random_antelopev2/glintr100.onnx"])
    arc.session
    lookup = median_s(lambda: arc.session, args.repeats * 10)

    rss_loaded = rss_mib()
    mm.unload_all_models()
    gc.collect()
    rss_unloaded = rss_mib()
    t = time.perf_counter()
    run()
    first_after = time.perf_counter() - t

    report = {
        "photo": "skimage.data.astronaut() 512x512, one face; embedded backends",
        "decompose_warm_ms": round(warm * 1e3, 2),
        "memory_load_per_run_ms": round(load * 1e3, 4),
        "memory_load_over_decompose_ratio": round(load / warm, 6),
        "arcface_session_lookup_us (RANDOM weights, timing only)": round(lookup * 1e6, 1),
        "rss_mib": {"start": rss_start, "after_runs": rss_loaded, "after_unload_models_and_gc": rss_unloaded},
        "first_run_after_unload_ms": round(first_after * 1e3, 1),
        "first_run_after_unload_over_warm_ratio": round(first_after / warm, 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
