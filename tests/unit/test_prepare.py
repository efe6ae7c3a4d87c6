"""`facex prepare`: clips -> sharded cache of aligned crops + FORD outputs. Shards, resume, a
2-process split, failures logged and skipped, nothing half-written, backend check, real FORD."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from facex_core.train import TrainError
from facex_core.train.data import FAILURES, MANIFEST, TrainCache, check_backends, read_shard_metadata, shard_name
from facex_core.train.prepare import PrepareSettings, discover_clips, finalize, run_prepare
from support.tiny_training import FAKE_BACKENDS, astronaut_frames, env_for_subprocess, fake_decompose, torchrun, write_video

SETTINGS = dict(frames_per_clip=4, clips_per_shard=2, mask_size=32, crop_size=64)


class CountingDecompose:
    def __init__(self, fail_on_call=None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, images):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated crash")
        return fake_decompose(images)


def _clips(root: Path, n: int = 5, frames: int = 4) -> Path:
    for i in range(n):
        write_video(root / f"clip{i:02d}.mp4", astronaut_frames(frames, size=64, seed=i))
    return root


@pytest.fixture(scope="module")
def celebv(tmp_path_factory):
    return _clips(tmp_path_factory.mktemp("celebv"))


def _prepare(inp, out, decompose=None, **kw):
    settings = PrepareSettings(**{**SETTINGS, **kw.pop("settings", {})})
    report = run_prepare(inp, out, settings, decompose_fn=decompose or CountingDecompose(), show_progress=False, **kw)
    return settings, report


def test_layouts_are_discovered(tmp_path):
    vox = tmp_path / "vox"
    write_video(vox / "id001" / "vidA" / "00001.mp4", astronaut_frames(2, 32))
    write_video(vox / "id001" / "vidA" / "00002.mp4", astronaut_frames(2, 32))
    write_video(vox / "id002" / "vidB" / "00001.mp4", astronaut_frames(2, 32))
    assert [c.id for c in discover_clips(vox)] == ["id001/vidA/00001.mp4", "id001/vidA/00002.mp4", "id002/vidB/00001.mp4"]
    frames = tmp_path / "frames"
    from PIL import Image

    for clip in ("a", "b"):
        (frames / clip).mkdir(parents=True)
        for i, f in enumerate(astronaut_frames(3, 32)):
            Image.fromarray(f).save(frames / clip / f"{i:03d}.png")
    found = discover_clips(frames)
    assert [(c.id, c.kind) for c in found] == [("a", "frames"), ("b", "frames")]
    with pytest.raises(TrainError, match="no clips under"):
        discover_clips(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_shards_manifest_and_resume(celebv, tmp_path):
    out = tmp_path / "cache"
    dec = CountingDecompose()
    settings, report = _prepare(celebv, out, dec)
    assert report["done"] == [0, 1, 2] and report["layout"].startswith("flat video folder")
    assert dec.calls == 5 * 4
    assert sorted(p.name for p in out.iterdir()) == [shard_name(i) for i in range(3)]  # no manifest before finalize
    manifest = finalize(celebv, out, settings)
    assert manifest["clips"] == 5 and manifest["frames"] == 20 and manifest["clips_failed"] == 0
    assert [s["file"] for s in manifest["shards"]] == [shard_name(i) for i in range(3)]
    assert [c["id"] for s in manifest["shards"] for c in s["clips"]] == [f"clip{i:02d}.mp4" for i in range(5)]
    assert manifest["backends"] == FAKE_BACKENDS
    # the cache reads back: crops are the fake FORD crops, masks and fields survive the storage
    cache = TrainCache(out)
    crops, rep = cache.load(0, [0, 3])
    assert crops.shape == (2, 3, 64, 64) and rep.batch_size == 2 and rep.region_masks.shape == (2, 10, 64, 64)
    frame0 = torch.from_numpy(astronaut_frames(4, size=64, seed=0)[0]).float().div(255)[None]
    want_rep, want_crop = fake_decompose(frame0)
    assert (crops[0] - want_crop[0]).abs().mean() < 0.03  # video + JPEG round trip of the same frame
    torch.testing.assert_close(rep.identity[0], want_rep.identity[0], atol=0.03, rtol=0)

    # rerun: every shard finished -> nothing decomposed again
    dec2 = CountingDecompose()
    _, again = _prepare(celebv, out, dec2)
    assert again["done"] == [] and again["skipped"] == [0, 1, 2] and dec2.calls == 0
    # one shard lost -> only that one is redone
    before = (out / shard_name(0)).stat().st_mtime_ns
    (out / shard_name(1)).unlink()
    dec3 = CountingDecompose()
    _, third = _prepare(celebv, out, dec3)
    assert third["done"] == [1] and dec3.calls == 2 * 4
    assert (out / shard_name(0)).stat().st_mtime_ns == before
    # other settings on the same folder: refused, not silently mixed
    with pytest.raises(TrainError, match="other clips or settings"):
        _prepare(celebv, out, settings={"frames_per_clip": 3})


def test_a_crash_leaves_no_half_written_shard_and_a_rerun_completes(celebv, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _prepare(celebv, out, CountingDecompose(fail_on_call=11))  # inside shard 1 (calls 9-16)
    names = sorted(p.name for p in out.iterdir())
    assert names == [shard_name(0)], names  # shard 1 never appears under its real name
    with pytest.raises(TrainError, match="not a finished FaceX training cache"):
        TrainCache(out)
    settings, report = _prepare(celebv, out)
    assert report["done"] == [1, 2] and report["skipped"] == [0]
    assert finalize(celebv, out, settings)["clips"] == 5
    assert not list(out.glob("*.partial"))


def test_failures_are_logged_and_skipped(tmp_path):
    inp = tmp_path / "videos"
    write_video(inp / "a_good.mp4", astronaut_frames(4, 64))
    (inp / "b_empty.mp4").write_bytes(b"")
    (inp / "c_garbage.mp4").write_bytes(os.urandom(3000))
    dark = [np.zeros((64, 64, 3), np.uint8)] * 4
    write_video(inp / "d_no_face.mp4", dark)
    write_video(inp / "e_one_face.mp4", dark[:3] + astronaut_frames(1, 64))
    out = tmp_path / "cache"
    settings, _ = _prepare(inp, out, settings={"clips_per_shard": 10})
    manifest = finalize(inp, out, settings)
    assert manifest["clips"] == 1 and manifest["clips_failed"] == 4
    failures = [json.loads(line) for line in (out / FAILURES).read_text().splitlines()]
    clip_errors = {f["clip"]: f["error"] for f in failures if f["frame"] is None}
    assert set(clip_errors) == {"b_empty.mp4", "c_garbage.mp4", "d_no_face.mp4", "e_one_face.mp4"}
    assert "cannot be decoded" in clip_errors["b_empty.mp4"] or "no frames" in clip_errors["b_empty.mp4"]
    assert "cannot be decoded" in clip_errors["c_garbage.mp4"]
    assert "only 0 of 4" in clip_errors["d_no_face.mp4"] and "no face found" in clip_errors["d_no_face.mp4"]
    assert "only 1 of 4" in clip_errors["e_one_face.mp4"]
    frame_errors = [f for f in failures if f["frame"] is not None]
    assert len(frame_errors) == 4 + 3 and all("no face found" in f["error"] for f in frame_errors)
    assert [c["id"] for c in manifest["shards"][0]["clips"]] == ["a_good.mp4"]


def test_a_cache_from_other_backends_is_refused(celebv, tmp_path):
    out = tmp_path / "cache"
    settings, _ = _prepare(celebv, out)
    finalize(celebv, out, settings)
    cache = TrainCache(out)
    check_backends(cache.backends, {"identity": "fake_identity"}, out)  # what it was made with: fine
    with pytest.raises(TrainError, match=r"identity: cache has 'fake_identity', config wants 'arcface'.*ford_backends"):
        check_backends(cache.backends, {"identity": "arcface", "parse": "bisenet"}, out)
    # and `facex train` stops on it before loading any model
    from facex_core.train.config import TrainConfig
    from facex_core.train.trainer import train

    with pytest.raises(TrainError, match="other FORD backends"):
        train(TrainConfig(cache=str(out), base_model="/nonexistent", ford_backends="production", output_dir=str(tmp_path / "run")))


def test_two_processes_split_the_shards_with_no_clip_twice(tmp_path):
    inp = _clips(tmp_path / "videos", n=6, frames=2)
    out = tmp_path / "cache"
    cmd = torchrun(2, "support.tiny_training", "prepare-fake", str(inp), str(out), "--frames-per-clip", "2", "--clips-per-shard", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for_subprocess(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{\"rank\"")]
    assert sorted(r["rank"] for r in reports) == [0, 1], proc.stdout
    by_rank = {r["rank"]: r for r in reports}
    assert by_rank[0]["done"] == [0, 2, 4] and by_rank[1]["done"] == [1, 3, 5]
    decomposed = [c for r in reports for c in r["clips_decomposed"]]
    assert sorted(decomposed) == sorted(set(decomposed)) and len(decomposed) == 6, decomposed  # no clip twice
    manifest = json.loads((out / MANIFEST).read_text())  # written once, by rank 0, after both finished
    assert manifest["clips"] == 6 and len(manifest["shards"]) == 6
    assert sorted(r["wrote_manifest"] for r in reports) == [False, True]
    for i in range(6):
        assert read_shard_metadata(out / shard_name(i))["clips"][0]["id"] == f"clip{i:02d}.mp4"


def test_real_ford_on_the_astronaut_makes_a_cache_the_trainer_reads(tmp_path):
    """The embedded FORD backends (mediapipe detection / mesh / parse, dlib identity, mesh PnP
    motion, iris gaze) on a short moving video of the astronaut photo, plus a clip with no face."""
    from skimage import data

    from facex_core.ford.decompose import decompose
    from facex_core.train.config import BACKEND_SETS

    inp = tmp_path / "videos"
    write_video(inp / "astronaut.mp4", astronaut_frames(3, size=160))
    write_video(inp / "dark.mp4", [np.zeros((96, 96, 3), np.uint8)] * 3)
    out = tmp_path / "cache"
    settings = PrepareSettings(frames_per_clip=3, clips_per_shard=4, crop_size=128, mask_size=64, backends="embedded")
    run_prepare(inp, out, settings, show_progress=False)  # the default decompose_fn: real FORD
    manifest = finalize(inp, out, settings)
    assert manifest["clips"] == 1 and manifest["frames"] == 3 and manifest["clips_failed"] == 1
    assert manifest["backends"]["identity"] == "dlib_resnet" and manifest["backends"]["parse"] == "mediapipe_mesh"
    failure = json.loads((out / FAILURES).read_text().splitlines()[-1])
    assert failure["clip"] == "dark.mp4" and "no face found" in failure["error"]

    cache = TrainCache(out)
    check_backends(cache.backends, BACKEND_SETS["embedded"], out)
    with pytest.raises(TrainError, match=f"'dlib_resnet', config wants '{BACKEND_SETS['production']['identity']}'"):
        check_backends(cache.backends, BACKEND_SETS["production"], out)
    crops, rep = cache.load(0, [0, 1, 2])
    assert crops.shape == (3, 3, 128, 128) and rep.identity.shape == (3, 128) and rep.landmarks.shape == (3, 478, 2)
    # the cached crops are the astronaut's face: same person as the still photo, by dlib's identity
    still, _ = decompose(torch.from_numpy(data.astronaut()).float().div(255)[None], backends="embedded", crop_size=128)
    similarity = torch.nn.functional.cosine_similarity(rep.identity, still.identity.expand(3, -1))
    assert (similarity > 0.9).all(), similarity
    skin = rep.region_masks[:, 0].mean((1, 2))
    assert (skin > 0.1).all(), f"the parse found little skin in the cached crops: {skin}"

    # ... and `facex train` trains on it with the embedded backend set named in its config
    from facex_core.checkpoint import load_checkpoint
    from facex_core.train.config import TrainConfig
    from facex_core.train.trainer import train
    from support.tiny_training import tiny_base_model_dir, tiny_facex_overrides

    cfg = TrainConfig(base_model=str(tiny_base_model_dir()), cache=str(out), ford_backends="embedded", output_dir=str(tmp_path / "run"),
                      resolution=64, train_batch_size=2, max_steps=2, learning_rate=1e-3, log_with="csv", num_workers=0,
                      facex=tiny_facex_overrides(), data_name="astronaut test video",
                      export_name="facex_trained_on_random_base.safetensors")
    report = train(cfg)
    model = load_checkpoint(report["export"])
    assert model.cfg.identity_dim == 128 and model.cfg.backends["identity"] == "dlib_resnet"
    assert model.cfg.expression_dim == rep.expression.shape[1] and not model.frc.is_zero()
