"""`facex train` / `facex export` on a tiny random SD1.5-shaped base model (support/tiny_training.py)
and a tiny real-face cache (the astronaut photo as a short moving "video", through `facex prepare`):
it learns, the distributed run equals the single-process run, it resumes, only rank 0 writes,
and the export loads as a FaceX checkpoint with the trained weights."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from facex_core.checkpoint import load_checkpoint, read_metadata
from facex_core.frc.diffusers_hooks import attach_frc, frc_conditioning
from facex_core.train import TrainError
from facex_core.train.config import TrainConfig, dump_config, load_config
from facex_core.train.data import PairDataset, TrainCache
from facex_core.train.export import export_state
from facex_core.train.prepare import PrepareSettings, finalize, run_prepare
from facex_core.train.trainer import (CHECKPOINTS, CSV_LOG, FaceXTrainingModule, _Frozen, build_facex, drop_groups,
                                      encode_prompt, load_base_model, read_csv_log, train)
from support.tiny_training import (FAKE_BACKENDS, astronaut_frames, env_for_subprocess, fake_decompose, tiny_base_model_dir,
                                   tiny_facex_overrides, torchrun, write_video)

# Loss curves of one process (batch 4) and two (2 x 2) agree to this: the same samples, noise and
# updates; only float summation order differs (gradient all-reduce, thread counts).
CURVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def base_dir():
    return tiny_base_model_dir()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Three clips of the moving astronaut face, decomposed by the stand-in FORD."""
    root = tmp_path_factory.mktemp("train_data")
    for i in range(3):
        write_video(root / "videos" / f"astronaut{i}.mp4", astronaut_frames(4, size=96, seed=i))
    settings = PrepareSettings(frames_per_clip=4, clips_per_shard=2, mask_size=32, crop_size=64)
    run_prepare(root / "videos", root / "cache", settings, decompose_fn=fake_decompose, show_progress=False)
    finalize(root / "videos", root / "cache", settings)
    return root / "cache"


def _cfg(base_dir, cache_dir, out, **kw) -> TrainConfig:
    settings = dict(base_model=str(base_dir), cache=str(cache_dir), ford_backends={"identity": FAKE_BACKENDS["identity"]},
                    output_dir=str(out), resolution=64, train_batch_size=4, learning_rate=5e-3, max_steps=4,
                    log_with="csv", log_every=1, checkpoint_every=2, num_workers=0, facex=tiny_facex_overrides(),
                    data_name="astronaut test frames", data_licence="public domain",
                    export_name="facex_trained_on_random_base.safetensors")
    settings.update(kw)
    return TrainConfig(**settings).validate()


def test_config_defaults_are_the_paper_recipe_and_files_round_trip(tmp_path):
    cfg = TrainConfig()
    assert (cfg.learning_rate, cfg.train_batch_size, cfg.condition_drop_prob, cfg.task) == (1e-5, 32, 0.1, "head_swap")
    assert cfg.lr_warmup_steps == 0 and cfg.fair_weight == 0.0  # constant LR; FACT options off
    cfg.output_dir = "x"
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"), ["train_batch_size=8", "facex.token_dim=64", "ford_backends=embedded"])
    assert again.train_batch_size == 8 and again.facex == {"token_dim": 64} and again.output_dir == "x"
    with pytest.raises(TrainError, match="unknown training setting 'learning_rat'"):
        load_config(None, ["learning_rat=1"])
    with pytest.raises(TrainError, match="not divisible"):
        TrainConfig(train_batch_size=6).micro_batch(4)
    with pytest.raises(TrainError, match="cannot be trained"):
        TrainConfig(task="inpainting").validate()


def test_cli_prints_the_recipe_and_reports_user_errors(tmp_path, capsys):
    import yaml

    from facex_core.cli import main as facex_cli

    assert facex_cli(["train", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["learning_rate"] == 1e-5 and printed["train_batch_size"] == 32
    code = facex_cli(["train", "--set", f"cache={tmp_path}", "--set", f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and "no manifest.json" in capsys.readouterr().err


def test_pairs_are_deterministic_and_assembled_as_head_swap(cache_dir):
    cache = TrainCache(cache_dir)
    ds = PairDataset(cache, task="head_swap", resolution=64, latent_shape=(4, 8, 8), num_train_timesteps=1000,
                     condition_drop_prob=0.5, group_drop_prob=0.0, n_groups=5, use_reference=True, seed=3, start=10, length=4)
    a, b = ds[1], PairDataset(cache, task="head_swap", resolution=64, latent_shape=(4, 8, 8), num_train_timesteps=1000,
                              condition_drop_prob=0.5, group_drop_prob=0.0, n_groups=5, use_reference=True, seed=3,
                              start=0, length=20)[11]
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the global sample index alone decides the sample
    assert a["pixels"].shape == (3, 64, 64) and a["reference"].shape == (3, 64, 64) and a["edit_mask"].shape == (8, 8)
    assert not torch.equal(ds[0]["noise"], ds[1]["noise"])
    drops = torch.stack([ds.draws(i)["drop"] for i in range(2000)]).float().mean()
    assert 0.45 < drops < 0.55


def test_group_drop_replaces_exactly_the_dropped_groups(base_dir, cache_dir):
    base = load_base_model(str(base_dir))
    cfg = _cfg(base_dir, cache_dir, "unused")
    facex = build_facex(base, TrainCache(cache_dir), cfg)
    tokens, null = torch.randn(2, facex.num_tokens, 64), torch.randn(1, facex.num_tokens, 64)
    names = [g.name for g in facex.groups]
    drop = torch.zeros(2, len(names), dtype=torch.bool)
    drop[1, names.index("motion")] = True
    drop[0, names.index("identity")] = True  # required: never dropped alone
    out = drop_groups(facex, tokens, null, drop)
    start = sum(facex.group_size(n) for n in names[:names.index("motion")])
    motion = slice(start, start + facex.group_size("motion"))
    assert torch.equal(out[1, motion], null[0, motion])
    out[1, motion] = tokens[1, motion]
    assert torch.equal(out, tokens)


def _x0_error(base, facex, sample, t=600):
    """Reconstruction of a held-in pair: x0 predicted from one noisy latent, against the real one."""
    frozen_holder = attach_frc(facex.frc, base.unet)
    try:
        with torch.no_grad():
            lat = base.vae.encode(sample["pixels"][None]).latent_dist.mean * base.vae.config.scaling_factor
            tt = torch.tensor([t])
            noisy = base.scheduler.add_noise(lat, sample["noise"][None], tt)
            rep_fields = {k[4:]: v[None] for k, v in sample.items() if k.startswith("rep.")}
            from facex_core.representation import FaceRepresentation

            rep = FaceRepresentation(crop_size=64, backends=dict(FAKE_BACKENDS), **rep_fields)
            tokens = facex.encode(rep, sample["reference"][None])
            text = encode_prompt(base, "", "cpu")
            with frc_conditioning(frozen_holder, tokens):
                eps = base.unet(noisy, tt, encoder_hidden_states=text).sample
            a = base.scheduler.alphas_cumprod[t]
            x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
            return (x0 - lat).square().mean().item()
    finally:
        frozen_holder.detach()


def test_it_learns_and_the_export_has_the_trained_weights(base_dir, cache_dir, tmp_path, figures):
    cfg = _cfg(base_dir, cache_dir, tmp_path / "run", max_steps=20, checkpoint_every=20, learning_rate=1e-2)
    report = train(cfg)
    losses = [row["loss"] for row in read_csv_log(tmp_path / "run" / CSV_LOG)]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    figures["train_tiny_loss_first5_last5"] = [round(first, 4), round(last, 4)]
    assert last < 0.85 * first, f"training loss did not fall clearly: first 5 steps {first:.4f}, last 5 {last:.4f}"

    exported = Path(report["export"])
    meta = read_metadata(exported)
    assert meta["weights"] == "trained" and "astronaut test frames" in meta["licence"] and "public domain" in meta["licence"]
    trained = load_checkpoint(exported)  # what FaceXModelLoader does
    assert not trained.frc.is_zero()
    # the export equals the last training state, and `facex export` of that state gives the same weights
    from facex_core.cli import main as facex_cli

    state = tmp_path / "run" / CHECKPOINTS / "step-0000020"
    assert facex_cli(["export", str(state), "--out", str(tmp_path / "re_random_base.safetensors"), "--data-licence", "CC0"]) == 0
    again = load_checkpoint(tmp_path / "re_random_base.safetensors")
    assert "CC0" in again.licence and read_metadata(tmp_path / "re_random_base.safetensors")["trained_steps"] == "20"
    for k, v in trained.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(TrainError, match="not a FaceX training state"):
        export_state(tmp_path, tmp_path / "x.safetensors")

    # task fine-tuning starts from the generalist checkpoint (lr 0: the weights stay exactly those)
    tuned = train(_cfg(base_dir, cache_dir, tmp_path / "reenact", task="reenactment", init_checkpoint=str(exported),
                       learning_rate=0.0, max_steps=1, checkpoint_every=1))
    tuned_model = load_checkpoint(tuned["export"])
    for k, v in trained.state_dict().items():
        assert torch.equal(v, tuned_model.state_dict()[k]), k

    # held-in pair (sample 0 was trained on): reconstruction better than at step 0 (zero FRC)
    base = load_base_model(str(base_dir))
    cache = TrainCache(cache_dir)
    ds = PairDataset(cache, task="head_swap", resolution=64, latent_shape=(4, 8, 8), num_train_timesteps=1000,
                     condition_drop_prob=0.0, group_drop_prob=0.0, n_groups=len(trained.groups), use_reference=True,
                     seed=0, start=0, length=1)
    fresh = build_facex(base, cache, cfg)
    assert fresh.frc.is_zero()
    before, after = _x0_error(base, fresh, ds[0]), _x0_error(base, trained, ds[0])
    figures["train_tiny_heldin_x0_mse_before_after"] = [round(before, 4), round(after, 4)]
    assert after < 0.9 * before, f"held-in reconstruction did not improve: {before:.4f} -> {after:.4f}"


def test_fair_penalises_change_outside_the_edit_mask_only(base_dir, cache_dir):
    base = load_base_model(str(base_dir))
    cache = TrainCache(cache_dir)
    cfg = _cfg(base_dir, cache_dir, "unused")
    facex = build_facex(base, cache, cfg)
    with torch.no_grad():
        for layer in facex.frc.layers.values():
            layer.zero_out.weight.normal_(0, 0.05)
    holder = attach_frc(facex.frc, base.unet)
    module = FaceXTrainingModule(facex, _Frozen(base, holder, encode_prompt(base, "", "cpu"), torch.float32, 64, cache.backends), 1.0)
    ds = PairDataset(cache, task="head_swap", resolution=64, latent_shape=(4, 8, 8), num_train_timesteps=1000,
                     condition_drop_prob=0.0, group_drop_prob=0.0, n_groups=len(facex.groups), use_reference=True,
                     seed=0, start=0, length=2)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    out = module(batch)
    assert out["fair"] > 0 and torch.isclose(out["loss"], out["mse"] + out["fair"])
    batch["edit_mask"] = torch.ones_like(batch["edit_mask"])  # everything is edited: nothing outside to protect
    assert module(batch)["fair"] == 0
    holder.detach()


def test_two_processes_match_one_resume_and_write_once(base_dir, cache_dir, tmp_path, figures):
    # Adam's first steps are ~lr * sign(gradient): with the default epsilon (1e-8) an entry whose
    # gradient is ~0 turns rounding noise into a full-size update; a larger epsilon keeps such
    # entries still, so the weights can be compared tightly too
    kw = dict(adam_epsilon=1e-4)
    single = train(_cfg(base_dir, cache_dir, tmp_path / "one", **kw))
    assert single["processes"] == 1 and single["micro_batch"] == 4
    curve_one = [r["loss"] for r in read_csv_log(tmp_path / "one" / CSV_LOG)]

    # the same run in two CPU processes (gloo), each with half the batch, through the real CLI
    out = tmp_path / "two"
    dump_config(_cfg(base_dir, cache_dir, out, **kw), tmp_path / "two.yaml")
    proc = subprocess.run(torchrun(2, "facex_core.cli", "train", "--config", str(tmp_path / "two.yaml")),
                          capture_output=True, text=True, env=env_for_subprocess(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    finals = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(finals) == 1, f"the final report should come from rank 0 only: {proc.stdout}"
    rows = read_csv_log(out / CSV_LOG)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], "log rows missing or written twice"
    curve_two = [r["loss"] for r in rows]
    figures["train_loss_curve_1proc_vs_2proc"] = [[round(a, 6) for a in curve_one], [round(b, 6) for b in curve_two]]
    torch.testing.assert_close(torch.tensor(curve_two), torch.tensor(curve_one), rtol=CURVE_RTOL, atol=0)

    # written once: one log, one export, per checkpoint one weights file + one optimizer file (the
    # per-process RNG states are accelerate's own format: one file per rank, by name)
    assert (out / CSV_LOG).read_text().count("step,loss") == 1
    for step in ("step-0000002", "step-0000004"):
        files = sorted(p.name for p in (out / CHECKPOINTS / step).iterdir())
        assert files == ["facex_config.json", "facex_step.json", "model.safetensors", "optimizer.bin",
                         "random_states_0.pkl", "random_states_1.pkl", "train_config.yaml"], files
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["facex_trained_on_random_base.safetensors"]
    two = load_checkpoint(out / "facex_trained_on_random_base.safetensors").state_dict()
    one = load_checkpoint(tmp_path / "one" / "facex_trained_on_random_base.safetensors").state_dict()
    diff = torch.sqrt(sum((two[k] - v).square().sum() for k, v in one.items()))
    norm = torch.sqrt(sum(v.square().sum() for v in one.values()))
    figures["train_weights_rel_diff_1proc_vs_2proc"] = float(diff / norm)
    assert diff / norm < 1e-5, float(diff / norm)

    # resume from the distributed run's step-2 checkpoint: steps 3 and 4 come out as before
    shutil.rmtree(out / CHECKPOINTS / "step-0000004")
    # (with the UNet's gradient checkpointing on: recomputation must not change the numbers)
    resumed = train(_cfg(base_dir, cache_dir, out, gradient_checkpointing=True, **kw), resume="latest")
    assert resumed["start_step"] == 2 and [r["step"] for r in resumed["history"]] == [3, 4]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in resumed["history"]]), torch.tensor(curve_one[2:]),
                               rtol=CURVE_RTOL, atol=0)
    assert [r["step"] for r in read_csv_log(out / CSV_LOG)] == [1, 2, 3, 4]  # the log continues, no duplicates
    with pytest.raises(TrainError, match="already holds checkpoints"):  # a fresh run never mixes with an old one
        train(_cfg(base_dir, cache_dir, out, **kw))


def test_bf16_checkpointing_fair_group_drop_workers_and_tensorboard_run_together(base_dir, cache_dir, tmp_path):
    """The optional engine paths in one short run: accelerate's bf16 autocast (CPU), the UNet's
    gradient checkpointing, FAIR, FaceChain-FACT group drop, DataLoader worker processes, TensorBoard."""
    import math

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # accelerate fixes mixed precision once per process
    try:
        report = train(_cfg(base_dir, cache_dir, tmp_path / "run", mixed_precision="bf16", gradient_checkpointing=True,
                            fair_weight=0.5, group_drop_prob=0.5, num_workers=1, log_with="tensorboard", max_steps=2,
                            learning_rate=1e-3))
    finally:
        AcceleratorState._reset_state(True)
    rows = report["history"]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["fair"] == 0 and rows[1]["fair"] > 0  # a zero bank changes nothing; after one update it does
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert not load_checkpoint(report["export"]).frc.is_zero()
