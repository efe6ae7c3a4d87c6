"""`facex train` throughput on the tiny random SD1.5-shaped test config, 1 and 2 CPU processes.

Builds (or reuses) the tiny random base model of tests/support/tiny_training.py and a small cache
of the astronaut photo as moving frames (stand-in FORD, like the unit tests), then runs the real
CLI (`python -m facex_core.cli train`, and torchrun with 2 processes for the second) with the same
global batch, and reports samples per second (median over the steps after warm-up, from the run's
CSV log) and the peak resident memory of the largest process of the run (ru_maxrss of a wrapper's children).

    python benchmarks/train_throughput.py [--steps 12] [--batch 8] [--resolution 64] > train_throughput.json

Random weights: the figures measure the machinery (hooks, data, DDP), not image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from facex_core.train.config import TrainConfig, dump_config  # noqa: E402
from facex_core.train.prepare import PrepareSettings, finalize, run_prepare  # noqa: E402
from facex_core.train.trainer import CSV_LOG, read_csv_log  # noqa: E402
from support.tiny_training import (FAKE_BACKENDS, astronaut_frames, env_for_subprocess, fake_decompose,  # noqa: E402
                                   tiny_base_model_dir, tiny_facex_overrides, torchrun, write_video)


def build_cache(root: Path) -> Path:
    for i in range(4):
        write_video(root / "videos" / f"astronaut{i}.mp4", astronaut_frames(6, size=96, seed=i))
    settings = PrepareSettings(frames_per_clip=6, clips_per_shard=2, mask_size=32, crop_size=64)
    run_prepare(root / "videos", root / "cache", settings, decompose_fn=fake_decompose, show_progress=False)
    finalize(root / "videos", root / "cache", settings)
    return root / "cache"


def run(processes: int, cfg: TrainConfig, root: Path) -> dict:
    out = root / f"run_{processes}"
    cfg.output_dir = str(out)
    config = root / f"config_{processes}.yaml"
    dump_config(cfg, config)
    env = env_for_subprocess()
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    if processes == 1:
        cmd = [sys.executable, "-m", "facex_core.cli", "train", "--config", str(config)]
    else:
        cmd = torchrun(processes, "facex_core.cli", "train", "--config", str(config))
    # a fresh wrapper process per run, so ru_maxrss of its children covers this run only
    wrapper = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': r.returncode, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    measured = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"rc": proc.returncode}
    if proc.returncode != 0 or measured["rc"] != 0:
        raise SystemExit(f"{processes}-process run failed:\n{proc.stderr[-4000:]}")
    peak_kib = measured["maxrss_kib"]
    rows = read_csv_log(out / CSV_LOG)
    warm = [r["samples_per_second"] for r in rows[2:]] or [r["samples_per_second"] for r in rows]
    return {
        "processes": processes,
        "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "global_batch": cfg.train_batch_size,
        "steps": len(rows),
        "samples_per_second_median": round(statistics.median(warm), 3),
        "wall_seconds_including_startup": round(wall, 1),
        "peak_rss_mib_largest_process": round(peak_kib / 1024, 1),
        "final_loss": rows[-1]["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="facex_bench_") as tmp:
        root = Path(tmp)
        cache = build_cache(root)
        cfg = TrainConfig(base_model=str(tiny_base_model_dir()), cache=str(cache),
                          ford_backends={"identity": FAKE_BACKENDS["identity"]}, resolution=args.resolution,
                          train_batch_size=args.batch, learning_rate=1e-3, max_steps=args.steps, log_with="csv",
                          log_every=1, checkpoint_every=10 ** 9, num_workers=0, facex=tiny_facex_overrides(),
                          export_name="facex_trained_on_random_base.safetensors")
        results = [run(1, cfg, root), run(2, cfg, root)]
    report = {
        "benchmark": "facex train throughput, tiny random SD1.5-shaped base (2-level UNet, 64 px), CPU",
        "cpu_count": os.cpu_count(),
        "runs": results,
        "speedup_2_vs_1": round(results[1]["samples_per_second_median"] / results[0]["samples_per_second_median"], 3),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
