"""`facex prepare`: face videos or frame folders -> the training cache (see data.py for the format).

Inputs, found by walking the folder (all three layouts, mixed too):
- CelebV-HQ: a flat folder of .mp4 clips;
- VoxCeleb: id*/video_id/*.mp4 (each .mp4 an utterance clip);
- frame folders: any folder holding .png / .jpg frames is one clip (frames in name order).
A clip's id is its path relative to the input folder. Clips are sorted by id and cut into shards of
`clips_per_shard`; shard i covers clips [i*N, (i+1)*N) and is processed by rank i % world_size, so
several processes or machines (`accelerate launch`, torchrun: RANK / WORLD_SIZE) split the work
with no clip done twice. A shard is written under a .partial name and renamed when complete, so a
rerun skips every finished shard and redoes only what was interrupted. Rank 0 writes
manifest.json and failures.jsonl once every shard exists (the output folder must be shared by
all machines; otherwise copy the shards together and rerun with one process: it only writes the
manifest).

    facex prepare VIDEOS --out CACHE                                        # one process
    accelerate launch --num_processes 8 -m facex_core.cli prepare VIDEOS --out CACHE
    torchrun --nproc_per_node 2 -m facex_core.cli prepare VIDEOS --out CACHE  # CPU processes (gloo)

(`accelerate launch --cpu` starts several CPU processes only through mpirun; torchrun is what
`accelerate launch --multi_gpu` runs, and FaceX picks the CPU backend when there is no GPU.)

Per clip, `frames_per_clip` frames evenly spaced over the clip are decoded (PyAV for video) and
decomposed by FORD (`decompose_fn(images) -> (FaceRepresentation, crops)`, one frame at a time so a
failure stays local). A frame whose face fails is skipped and logged with the reason; a clip left
with fewer than two frames (no (source, target) pair) is skipped and logged; an empty or unreadable
video is skipped and logged. FORD takes the largest face of a frame (talking-head clips show one
person in front); a frame where it returns more or less than one face is a failure, never a guess.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..representation import FaceRepresentation
from . import TrainError, use_cpu
from .data import (CACHE_FORMAT, CACHE_FORMAT_VERSION, CROP_FORMATS, FAILURES, MANIFEST, encode_clip, fingerprint,
                   read_shard_metadata, shard_name)

log = logging.getLogger("facex.prepare")

VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

DecomposeFn = Callable[[torch.Tensor], tuple[FaceRepresentation, torch.Tensor]]


class ClipError(RuntimeError):
    """A clip that cannot be used (unreadable, empty, too few faces); logged and skipped."""

    def __init__(self, message: str, frame_failures: Optional[list] = None):
        super().__init__(message)
        self.frame_failures = frame_failures or []


@dataclass(frozen=True)
class Clip:
    id: str  # path relative to the input folder
    path: str
    kind: str  # "video" | "frames"


@dataclass
class PrepareSettings:
    frames_per_clip: int = 8
    clips_per_shard: int = 64
    crop_size: int = 512  # FORD's aligned crop size (the training resolution, or larger)
    crop_format: str = "jpeg"  # jpeg | png | raw
    jpeg_quality: int = 95
    mask_size: int = 128  # region masks are stored at this size (uint8) and resized back on load
    min_frames: int = 2  # a clip needs a (source, target) pair
    backends: str = "embedded"  # the FORD backend set decompose runs with (recorded in the cache)
    decompose: dict = field(default_factory=dict)  # extra keyword arguments for decompose()

    def validate(self) -> "PrepareSettings":
        if self.crop_format not in CROP_FORMATS:
            raise TrainError(f"crop_format {self.crop_format!r}: use one of {', '.join(CROP_FORMATS)}")
        if self.frames_per_clip < 2:
            raise TrainError("frames_per_clip must be >= 2 (the trainer needs a source and a target frame per clip)")
        if self.clips_per_shard < 1:
            raise TrainError("clips_per_shard must be >= 1")
        if self.min_frames < 2:
            raise TrainError("min_frames must be >= 2")
        return self


# ---- inputs ----------------------------------------------------------------------------------------
def discover_clips(root) -> list[Clip]:
    root = Path(root)
    if not root.is_dir():
        raise TrainError(f"input folder {root} not found")
    clips = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        images = [f for f in filenames if f.lower().endswith(IMAGE_EXTS)]
        if images:
            clips.append(Clip(rel_dir.as_posix() if str(rel_dir) != "." else root.name, dirpath, "frames"))
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTS):
                clips.append(Clip((rel_dir / f).as_posix(), os.path.join(dirpath, f), "video"))
    clips.sort(key=lambda c: c.id)
    if not clips:
        raise TrainError(
            f"no clips under {root}: expected .mp4 videos (CelebV-HQ: flat folder; VoxCeleb: id*/video_id/*.mp4) "
            f"or folders of .png/.jpg frames"
        )
    return clips


def describe_layout(clips: list[Clip]) -> str:
    kinds = {c.kind for c in clips}
    if kinds == {"frames"}:
        return "frame folders"
    depths = {c.id.count("/") for c in clips if c.kind == "video"}
    if kinds == {"video"} and depths == {0}:
        return "flat video folder (CelebV-HQ layout)"
    if kinds == {"video"} and depths == {2}:
        return "id/video/clip.mp4 (VoxCeleb layout)"
    return "mixed"


def _even(n_total: int, n_wanted: int) -> list[int]:
    if n_total <= n_wanted:
        return list(range(n_total))
    return sorted({int(round(i * (n_total - 1) / (n_wanted - 1))) for i in range(n_wanted)})


def read_frames(clip: Clip, n_wanted: int) -> tuple[list[np.ndarray], list[int]]:
    """Up to n_wanted RGB uint8 frames evenly spaced over the clip, with their frame numbers."""
    if clip.kind == "frames":
        from PIL import Image

        names = sorted(f for f in os.listdir(clip.path) if f.lower().endswith(IMAGE_EXTS))
        picks = _even(len(names), n_wanted)
        frames = []
        for i in picks:
            try:
                with Image.open(os.path.join(clip.path, names[i])) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except Exception as e:  # PIL raises many types for broken files
                raise ClipError(f"frame {names[i]} cannot be read ({type(e).__name__}: {e})") from e
        return frames, picks
    import av

    try:
        with av.open(clip.path) as container:
            if not container.streams.video:
                raise ClipError("the file has no video stream")
            stream = container.streams.video[0]
            total = stream.frames
            if not total:  # containers that do not record a frame count: count the packets
                total = sum(1 for p in container.demux(stream) if p.size)
                container.seek(0)
            if not total:
                raise ClipError("the video has no frames (empty file?)")
            picks = _even(total, n_wanted)
            wanted = set(picks)
            frames, got = [], []
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    got.append(i)
                if i >= picks[-1]:
                    break
    except ClipError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ClipError(f"the video cannot be decoded ({type(e).__name__}: {e})") from e
    if not frames:
        raise ClipError("no video frame could be decoded")
    return frames, got


# ---- FORD ------------------------------------------------------------------------------------------
def default_decompose_fn(backends: str = "embedded", crop_size: int = 512, **options) -> DecomposeFn:
    """FORD's decompose with the given backend set, one frame (1, H, W, 3) float in [0, 1] at a
    time; the largest face of the frame (a talking-head clip shows one person in front)."""
    try:
        from ..ford.decompose import decompose
    except ImportError as e:
        raise TrainError(f"FORD decompose is not available ({e}); install FaceX with its embedded extra") from e

    def fn(images: torch.Tensor):
        return decompose(images, backends=backends, crop_size=crop_size, face_choice="largest", **options)

    return fn


def _as_crops_u8(crops: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 from FORD crops (BCHW or BHWC, float [0, 1] or uint8)."""
    if crops.dim() != 4:
        raise ValueError(f"FORD returned crops of shape {tuple(crops.shape)}, expected 4-d")
    if crops.shape[1] != 3 and crops.shape[-1] == 3:
        crops = crops.permute(0, 3, 1, 2)
    if crops.dtype != torch.uint8:
        crops = (crops.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return crops.contiguous()


def process_clip(clip: Clip, decompose_fn: DecomposeFn, settings: PrepareSettings):
    """(crops uint8 (F,3,S,S), rep with F rows, kept frame numbers, frame failures) or ClipError."""
    frames, numbers = read_frames(clip, settings.frames_per_clip)
    crops, reps, kept, failures = [], [], [], []
    for image, number in zip(frames, numbers):
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255).unsqueeze(0)
        try:
            rep, crop = decompose_fn(x)
            if rep.batch_size != 1:
                raise ClipError(f"FORD found {rep.batch_size} faces; a training frame must show exactly one")
            crop = _as_crops_u8(crop)
            if crop.shape[0] != 1 or crop.shape[-1] != rep.crop_size:
                raise ClipError(f"FORD returned a crop of {tuple(crop.shape)} for a {rep.crop_size}px representation")
            if rep.crop_size != settings.crop_size:
                raise ClipError(f"FORD returned {rep.crop_size}px crops, this cache is set to {settings.crop_size}px (crop_size)")
        except Exception as e:  # every FORD failure of one frame is logged, never fatal for the run
            failures.append({"clip": clip.id, "frame": number, "error": f"{type(e).__name__}: {e}"})
            continue
        crops.append(crop)
        reps.append(rep)
        kept.append(number)
    if len(kept) < settings.min_frames:
        raise ClipError(
            f"only {len(kept)} of {len(numbers)} sampled frames have a usable face; a clip needs {settings.min_frames} "
            f"(a source and a target frame)" + (f"; first frame error: {failures[0]['error']}" if failures else ""),
            failures,
        )
    try:
        rep = FaceRepresentation.concat(reps)
    except Exception as e:
        raise ClipError(f"FORD outputs of the frames do not stack ({e})", failures) from e
    return torch.cat(crops), rep, kept, failures


# ---- shards ----------------------------------------------------------------------------------------
def plan_shards(clips: list[Clip], clips_per_shard: int) -> list[list[Clip]]:
    return [clips[i:i + clips_per_shard] for i in range(0, len(clips), clips_per_shard)]


def settings_for_fingerprint(settings: PrepareSettings) -> dict:
    data = asdict(settings)
    data.pop("clips_per_shard")  # implied by the clip list of each shard
    return data


def shard_is_done(path: Path, expected_fp: str, overwrite: bool) -> bool:
    if not path.exists():
        return False
    try:
        meta = read_shard_metadata(path)
    except Exception:
        if overwrite:
            return False
        raise TrainError(f"{path} exists but is not a readable cache shard; delete it or pass --overwrite")
    if meta["fingerprint"] == expected_fp:
        return True
    if overwrite:
        return False
    raise TrainError(
        f"{path} was made from other clips or settings than this run asks for; use a new --out folder, or "
        f"--overwrite to redo such shards"
    )


def write_shard(path: Path, index: int, fp: str, entries: list[dict], tensors: dict, failures: list[dict],
                settings: PrepareSettings, backends: dict, fields: list[str], crop_size: int) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": CACHE_FORMAT,
        "format_version": str(CACHE_FORMAT_VERSION),
        "index": str(index),
        "fingerprint": fp,
        "clips": json.dumps(entries),
        "failures": json.dumps(failures),
        "backends": json.dumps(backends, sort_keys=True),
        "fields": json.dumps(fields),
        "crop_size": str(crop_size),
        "crop_format": settings.crop_format,
    }
    if not tensors:  # safetensors needs one tensor; a shard of failed clips still marks its work done
        tensors = {"empty": torch.zeros(1, dtype=torch.uint8)}
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # a crash never leaves a half-written shard under the real name


def prepare_shard(index: int, clips: list[Clip], out: Path, decompose_fn: DecomposeFn, settings: PrepareSettings,
                  fp: str, progress=None) -> dict:
    entries, tensors, failures = [], {}, []
    backends: dict = {}
    fields: Optional[list[str]] = None
    crop_size = 0
    for j, clip in enumerate(clips):
        key = f"c{j:04d}"
        try:
            crops, rep, kept, frame_failures = process_clip(clip, decompose_fn, settings)
            if fields is None:
                fields, backends, crop_size = rep.present(), dict(rep.backends), rep.crop_size
            elif rep.present() != fields or rep.crop_size != crop_size or rep.backends != backends:
                raise ClipError(
                    f"FORD gave fields {rep.present()} at {rep.crop_size}px from {rep.backends}, other clips of the shard "
                    f"have {fields} at {crop_size}px from {backends}; one cache must come from one FORD setup"
                )
            tensors.update(encode_clip(key, crops, rep, settings.crop_format, settings.mask_size, settings.jpeg_quality))
            entries.append({"key": key, "id": clip.id, "frames": kept})
            for f in frame_failures:
                log.warning("skipped frame %s of clip %s: %s", f["frame"], clip.id, f["error"])
            failures.extend(frame_failures)
        except ClipError as e:
            log.warning("skipped clip %s: %s", clip.id, e)
            failures.extend(e.frame_failures)
            failures.append({"clip": clip.id, "frame": None, "error": str(e)})
        if progress is not None:
            progress.update(1)
    write_shard(out / shard_name(index), index, fp, entries, tensors, failures, settings, backends, fields or [], crop_size)
    return {"index": index, "clips": len(entries), "failed": sum(f["frame"] is None for f in failures)}


def run_prepare(input_dir, out_dir, settings: PrepareSettings, decompose_fn: Optional[DecomposeFn] = None,
                rank: int = 0, world_size: int = 1, overwrite: bool = False, show_progress: bool = True) -> dict:
    """This rank's share of the work. Returns {"done": [...], "skipped": [...]} shard indices."""
    from tqdm import tqdm

    settings.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips = discover_clips(input_dir)
    shards = plan_shards(clips, settings.clips_per_shard)
    fp_settings = settings_for_fingerprint(settings)
    mine = [i for i in range(len(shards)) if i % world_size == rank]
    todo, skipped = [], []
    for i in mine:
        fp = fingerprint(fp_settings, [c.id for c in shards[i]])
        (skipped if shard_is_done(out / shard_name(i), fp, overwrite) else todo).append((i, fp))
    if todo and decompose_fn is None:
        decompose_fn = default_decompose_fn(settings.backends, settings.crop_size, **settings.decompose)
    total = sum(len(shards[i]) for i, _ in todo)
    desc = f"facex prepare (rank {rank}/{world_size})" if world_size > 1 else "facex prepare"
    done = []
    with tqdm(total=total, desc=desc, unit="clip", disable=not show_progress, position=rank, leave=True) as bar:
        for i, fp in todo:
            prepare_shard(i, shards[i], out, decompose_fn, settings, fp, progress=bar)
            done.append(i)
    return {"done": done, "skipped": [i for i, _ in skipped], "shards": len(shards), "clips": len(clips),
            "layout": describe_layout(clips)}


def finalize(input_dir, out_dir, settings: PrepareSettings) -> dict:
    """Manifest + failures.jsonl from the shards' own metadata (rank 0, after every rank finished)."""
    out = Path(out_dir)
    clips = discover_clips(input_dir)
    shards = plan_shards(clips, settings.clips_per_shard)
    fp_settings = settings_for_fingerprint(settings)
    missing = [shard_name(i) for i in range(len(shards)) if not (out / shard_name(i)).exists()]
    if missing:
        raise TrainError(f"{len(missing)} shard(s) are not finished ({', '.join(missing[:5])}...); run `facex prepare` again to complete them")
    entries, failures = [], []
    backends: dict = {}
    fields: list[str] = []
    crop_size = 0
    for i, shard_clips in enumerate(shards):
        meta = read_shard_metadata(out / shard_name(i))
        if meta["fingerprint"] != fingerprint(fp_settings, [c.id for c in shard_clips]):
            raise TrainError(f"{shard_name(i)} belongs to another run (other clips or settings); use --overwrite or a new --out folder")
        if meta["clips"]:
            if backends and (meta["backends"] != backends or meta["fields"] != fields or meta["crop_size"] != crop_size):
                raise TrainError(
                    f"{shard_name(i)} was made with FORD backends {meta['backends']} ({meta['crop_size']}px), earlier shards with "
                    f"{backends} ({crop_size}px); one cache must come from one FORD setup"
                )
            backends, fields, crop_size = meta["backends"], meta["fields"], meta["crop_size"]
        frames = sum(len(c["frames"]) for c in meta["clips"])
        entries.append({"file": shard_name(i), "clips": meta["clips"], "frames": frames, "failures": len(meta["failures"])})
        failures.extend({**f, "shard": shard_name(i)} for f in meta["failures"])
    manifest = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "settings": asdict(settings),
        "layout": describe_layout(clips),
        "backends": backends,
        "fields": fields,
        "crop_size": crop_size,
        "clips": sum(len(s["clips"]) for s in entries),
        "frames": sum(s["frames"] for s in entries),
        "clips_failed": sum(1 for f in failures if f.get("frame") is None),
        "frames_failed": sum(1 for f in failures if f.get("frame") is not None),
        "shards": entries,
    }
    _atomic_write(out / FAILURES, "".join(json.dumps(f) + "\n" for f in failures))
    _atomic_write(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- CLI -------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    d = PrepareSettings()
    parser.add_argument("input", help="folder of face videos (flat, or id*/video_id/*.mp4) or of frame folders")
    parser.add_argument("--out", required=True, help="cache folder to write (shared by every process / machine)")
    parser.add_argument("--backends", default=d.backends, help="FORD backend set to decompose with (recorded in the cache)")
    parser.add_argument("--crop-size", type=int, default=d.crop_size, help="aligned crop size (the training resolution or larger)")
    parser.add_argument("--frames-per-clip", type=int, default=d.frames_per_clip)
    parser.add_argument("--clips-per-shard", type=int, default=d.clips_per_shard)
    parser.add_argument("--crop-format", choices=CROP_FORMATS, default=d.crop_format)
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    parser.add_argument("--mask-size", type=int, default=d.mask_size)
    parser.add_argument("--overwrite", action="store_true", help="redo shards made by another run instead of refusing")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from accelerate import PartialState

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = PrepareSettings(crop_size=args.crop_size, frames_per_clip=args.frames_per_clip, clips_per_shard=args.clips_per_shard,
                               crop_format=args.crop_format, jpeg_quality=args.jpeg_quality, mask_size=args.mask_size,
                               backends=args.backends)
    # ranks finish their shards at different times; the final barrier must outwait the slowest
    state = PartialState(cpu=use_cpu(), timeout=timedelta(days=2))
    try:
        report = run_prepare(args.input, args.out, settings, rank=state.process_index, world_size=state.num_processes,
                             overwrite=args.overwrite, show_progress=not args.no_progress)
    except TrainError as e:
        print(f"facex prepare: {e}", file=sys.stderr)
        return 2
    state.wait_for_everyone()
    code = 0
    if state.is_main_process:
        try:
            manifest = finalize(args.input, args.out, settings)
            print(json.dumps({"out": str(args.out), "layout": manifest["layout"], "shards": len(manifest["shards"]),
                              "clips": manifest["clips"], "frames": manifest["frames"],
                              "clips_failed": manifest["clips_failed"], "frames_failed": manifest["frames_failed"],
                              "backends": manifest["backends"]}))
        except TrainError as e:
            print(f"facex prepare: {e}", file=sys.stderr)
            code = 2
    print(json.dumps({"rank": state.process_index, "shards_done": report["done"], "shards_skipped": report["skipped"]}),
          file=sys.stderr)
    return code
