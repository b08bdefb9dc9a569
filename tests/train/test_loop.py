"""Training on tiny UNets: batching maths, the loss, an end-to-end run, exact resume,
NaN handling, disk errors, hostile checkpoints, configs and trackers."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.model.pretrained import set_dropout
from ddpm_lesion.train import batching, checkpoints
from ddpm_lesion.train import loop as training
from ddpm_lesion.train.loop import TrainConfig, train
from ddpm_lesion.train.losses import diffusion_loss
from tests.helpers import REPO, save_tiny_pipeline, tiny_unet, write_images

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def make_cfg(tmp_path: Path, *extra: str, steps: int = 4) -> TrainConfig:
    if not (tmp_path / "images").exists():
        write_images(tmp_path / "images", 6, size=20)
        save_tiny_pipeline(tmp_path / "pretrained")
    args = ["--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path", str(tmp_path / "pretrained"),
            "--output_dir", str(tmp_path / "run"), "--resolution", "16", "--train_batch_size", "2",
            "--max_train_steps", str(steps), "--checkpointing_steps", "2", "--save_images_steps", "100",
            "--num_sample_images", "4", "--sample_inference_steps", "2", "--learning_rate", "1e-3",
            "--lr_warmup_steps", "1", "--cache_dir", str(tmp_path / "cache"), *extra]
    return parse_config(TrainConfig, args)


# --- pure pieces ------------------------------------------------------------------

def test_micro_batches_cover_each_epoch_once_and_ranks_are_disjoint():
    n, batch, world = 10, 2, 2
    seen = [batching.micro_batch_indices(n, batch, m, r, world, seed=3) for m in range(5) for r in range(world)]
    first_epoch = torch.cat(seen)  # 5 micro-steps x 2 ranks x 2 = 20 = two epochs
    assert sorted(first_epoch[:10].tolist()) == list(range(10))
    assert sorted(first_epoch[10:].tolist()) == list(range(10))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    again = batching.micro_batch_indices(n, batch, 3, 1, world, seed=3)
    assert torch.equal(again, seen[3 * world + 1])
    assert not torch.equal(batching.epoch_permutation(n, 3, 0), batching.epoch_permutation(n, 3, 1))


def test_batch_straddling_an_epoch_boundary():
    idx = batching.micro_batch_indices(5, 4, 1, 0, 1, seed=0)  # positions 4..7: epoch 0 tail + epoch 1 head
    assert idx[0] == batching.epoch_permutation(5, 0, 0)[4]
    assert torch.equal(idx[1:], batching.epoch_permutation(5, 0, 1)[:3])


def test_steps_per_epoch_rounds_up():
    assert batching.steps_per_epoch(374, 16, 1, 1) == 24
    assert batching.steps_per_epoch(374, 16, 2, 2) == 6


def draws(step: int, world: int, accumulation: int, n: int = 37, batch: int = 3, seed: int = 5) -> list[tuple]:
    """(image indices, first noise draws) of each micro-batch of one optimizer step, in slot order."""
    out = []
    for micro in range(accumulation):
        for rank in range(world):
            micro_step = step * accumulation + micro
            generator = batching.slot_generator(seed, micro_step, rank, world)
            out.append((micro_step * world + rank, batching.micro_batch_indices(n, batch, micro_step, rank, world, seed),
                        torch.randn(6, generator=generator)))
    return [(indices, noise) for _, indices, noise in sorted(out, key=lambda slot: slot[0])]


@pytest.mark.parametrize("world, accumulation", [(4, 1), (2, 2)])
def test_any_split_of_the_global_batch_sees_the_same_images_and_noise(world, accumulation):
    """4 processes x 1 accumulation step, 2 x 2 and 1 x 4: same images, same noise per step."""
    for step in range(5):  # 5 steps x 12 images > one epoch of 37: crosses an epoch boundary
        reference, split = draws(step, 1, 4), draws(step, world, accumulation)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, split, strict=True))
    assert not torch.equal(draws(0, 1, 4)[0][1], draws(0, 1, 4)[1][1])  # micro-batches still differ


def test_one_process_runs_keep_their_draws():
    for micro_step in range(3):
        assert torch.equal(torch.randn(4, generator=batching.slot_generator(9, micro_step, 0, 1)),
                           torch.randn(4, generator=batching.micro_batch_generator(9, micro_step, 0)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_regresses_the_configured_target(prediction_type):
    """Hand-built check: a 'network' that returns exactly the target has zero loss."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    clean = torch.rand(3, 3, 8, 8) * 2 - 1
    seed = 7

    class Oracle(torch.nn.Module):
        def forward(self, noisy, timesteps):
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(clean.shape, generator=g)
            t = torch.randint(0, 1000, (3,), generator=g)
            alpha = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
            sigma = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
            assert torch.allclose(noisy, alpha * clean + sigma * noise, atol=1e-6)
            target = {"epsilon": noise, "sample": clean, "v_prediction": alpha * noise - sigma * clean}[prediction_type]
            return type("Out", (), {"sample": target})

    loss = diffusion_loss(Oracle(), scheduler, clean, torch.Generator().manual_seed(seed))
    assert loss.item() < 1e-10


# --- end to end --------------------------------------------------------------------

def test_end_to_end_run_folder_loads_with_plain_diffusers(tmp_path):
    run = train(make_cfg(tmp_path, "--use_ema", "--save_images_steps", "2"))
    pipe = DDPMPipeline.from_pretrained(run, use_safetensors=True)
    assert pipe.unet.config.sample_size == 16
    assert not list(run.rglob("*.bin")) or all("optimizer" in p.name or "scheduler" in p.name for p in run.rglob("*.bin"))
    assert [p.name for _, p in checkpoints.list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    # The published weights are the EMA weights of the last checkpoint, not the live model.
    top = load_file(run / WEIGHTS)
    ckpt = load_file(run / "checkpoint-4/pipeline" / WEIGHTS)
    live = load_file(run / "checkpoint-4/model.safetensors")
    assert all(torch.equal(top[k], ckpt[k]) for k in top)
    assert any(not torch.equal(top[k], live[k]) for k in top)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss,lr,grad_norm,skipped_steps" and len(rows) == 5
    assert all(math.isfinite(float(r.split(",")[2])) for r in rows[1:])
    for name in ("loss.png", "samples/step-0000002.png", "samples/step-0000004.png", "train_config.yaml",
                 "data_report.json", "data_report.txt"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "train_config.yaml").read_text())
    assert saved["resolution"] == 16 and saved["use_ema"] is True


def test_torch_compile_flag_compiles_the_unet_in_place(tmp_path, monkeypatch):
    """Wiring only (compiling takes minutes on a CPU): the flag reaches `Module.compile`,
    which compiles in place, so checkpoints keep the plain diffusers layout."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append(type(self).__name__))
    train(make_cfg(tmp_path, "--torch_compile", steps=2))
    assert compiled == ["UNet2DModel"]
    assert DDPMPipeline.from_pretrained(tmp_path / "run", use_safetensors=True).unet.config.sample_size == 16


def test_training_changes_the_weights_and_lowers_the_loss_on_a_fixed_batch(tmp_path):
    """The loop really optimises: same data, same noise, more steps -> lower loss."""
    run = train(make_cfg(tmp_path, "--learning_rate", "3e-3", "--lr_scheduler", "constant", steps=30))
    before = load_file(tmp_path / "pretrained" / WEIGHTS)
    after = load_file(run / WEIGHTS)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    losses = [float(r.split(",")[2]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    cfg = make_cfg(tmp_path, "--use_ema", steps=6)
    run = train(cfg)
    reference = {k: v.clone() for k, v in load_file(run / WEIGHTS).items()}
    reference_live = load_file(run / "checkpoint-6/model.safetensors")
    reference_metrics = (run / "metrics.csv").read_text()
    # Pretend the process died after checkpoint-2: later checkpoints and the export are gone.
    for leftover in ("checkpoint-4", "checkpoint-6", "unet", "scheduler", "model_index.json"):
        path = run / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(make_cfg(tmp_path, "--use_ema", "--resume_from_checkpoint", "latest", steps=6))
    resumed = load_file(run / WEIGHTS)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    live = load_file(run / "checkpoint-6/model.safetensors")
    assert all(torch.equal(reference_live[k], live[k]) for k in live)
    assert (run / "metrics.csv").read_text() == reference_metrics


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path, capsys):
    train(make_cfg(tmp_path, "--resume_from_checkpoint", "latest", steps=2))
    assert "starting a fresh run" in capsys.readouterr().out


def test_rerun_into_an_existing_run_is_refused_and_resume_with_changed_settings_names_them(tmp_path):
    train(make_cfg(tmp_path, steps=2))
    with pytest.raises(UserError, match="already holds a training run"):
        train(make_cfg(tmp_path, steps=2))
    with pytest.raises(UserError, match=r"resolution: 16 -> 32"):
        train(make_cfg(tmp_path, "--resume_from_checkpoint", "latest", "--resolution", "32", steps=4))


def test_checkpoints_total_limit_keeps_newest(tmp_path):
    run = train(make_cfg(tmp_path, "--checkpoints_total_limit", "2", "--checkpointing_steps", "1", steps=4))
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [3, 4]


# --- failures -----------------------------------------------------------------------

def test_nan_steps_are_skipped_then_the_run_stops_without_saving_nan(tmp_path, monkeypatch):
    real = training.diffusion_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (2, 5, 6, 7) else loss

    monkeypatch.setattr(training, "diffusion_loss", flaky)
    run = train(make_cfg(tmp_path, "--max_bad_steps", "4", steps=8))
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[5] for r in rows] == ["0", "1", "1", "1", "2", "3", "4", "4"]
    assert all(torch.isfinite(t).all() for t in load_file(run / WEIGHTS).values())

    calls["n"] = 0
    monkeypatch.setattr(training, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(UserError, match="3 steps in a row.*learning rate.*fp16"):
        train(make_cfg(tmp_path / "second", "--max_bad_steps", "3", steps=8))
    for _, path in checkpoints.list_checkpoints(tmp_path / "second" / "run"):  # skipped steps never touch weights
        assert all(torch.isfinite(t).all() for t in load_file(path / "pipeline" / WEIGHTS).values())


def test_disk_error_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    real = checkpoints.save_pipeline

    def failing(unet, scheduler, folder, class_names=None):
        if "checkpoint-4" in str(folder):
            raise OSError(28, "No space left on device")
        real(unet, scheduler, folder, class_names)

    monkeypatch.setattr(checkpoints, "save_pipeline", failing)
    with pytest.raises(UserError, match="No space left on device.*checkpoint-2 is intact"):
        train(make_cfg(tmp_path, steps=4))
    run = tmp_path / "run"
    assert [p.name for _, p in checkpoints.list_checkpoints(run)] == ["checkpoint-2"]
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint")]
    DDPMPipeline.from_pretrained(run / "checkpoint-2/pipeline")


def test_planted_pickle_in_a_checkpoint_is_refused_without_running(tmp_path):
    train(make_cfg(tmp_path, steps=2))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Evil()}, tmp_path / "run/checkpoint-2/optimizer.bin")
    with pytest.raises(UserError, match="refusing to load.*could run code"):
        train(make_cfg(tmp_path, "--resume_from_checkpoint", "latest", steps=4))
    assert not marker.exists()


def test_planted_pickle_as_pretrained_model_is_refused_without_running(tmp_path):
    model = save_tiny_pipeline(tmp_path / "pretrained")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (model / WEIGHTS).unlink()
    torch.save({"conv_in.weight": Evil()}, model / "unet/diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="refusing to load .*diffusion_pytorch_model.bin.*could run code"):
        from ddpm_lesion.model.pretrained import load_unet
        load_unet(str(model))
    assert not marker.exists()


def test_bad_flags_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="--output_dir is required"):
        train(parse_config(TrainConfig, ["--train_data_dir", "x", "--pretrained_model_name_or_path", "y"]))
    with pytest.raises(UserError, match="multiple of 2. Use --resolution 16 or 18|multiple of 2"):
        train(make_cfg(tmp_path, "--resolution", "17"))
    with pytest.raises(UserError, match="neither a local folder nor a model in the Hugging Face cache"):
        train(make_cfg(tmp_path, "--pretrained_model_name_or_path", "nobody/no-such-model", "--output_dir",
                       str(tmp_path / "other")))


def test_yaml_config_with_flag_override(tmp_path):
    (tmp_path / "c.yaml").write_text("resolution: 32\nlearning_rate: 0.002\nlabel_filter: [target=1]\n")
    cfg = parse_config(TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--resolution", "16"])
    assert (cfg.resolution, cfg.learning_rate, cfg.label_filter) == (16, 0.002, ["target=1"])
    (tmp_path / "bad.yaml").write_text("resolutoin: 32\n")
    with pytest.raises(UserError, match="unknown option 'resolutoin'. Did you mean 'resolution'"):
        parse_config(TrainConfig, ["--config", str(tmp_path / "bad.yaml")])


def test_dry_run_validates_data_and_writes_nothing(tmp_path, capsys):
    cfg = make_cfg(tmp_path, "--dry_run")
    train(cfg)
    out = capsys.readouterr().out
    assert "resolution: 16" in out and not (tmp_path / "run").exists()


def test_hub_id_loads_offline_from_a_prefilled_cache(tmp_path, monkeypatch):
    """The same `from_pretrained(hub_id)` path a user hits, served from HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--lab--tiny-ddpm" / "snapshots" / ("a" * 40)
    save_tiny_pipeline(snapshot)
    (cache / "models--lab--tiny-ddpm" / "refs").mkdir(parents=True)
    (cache / "models--lab--tiny-ddpm" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    from ddpm_lesion.model.pretrained import load_noise_scheduler, load_unet

    unet = load_unet("lab/tiny-ddpm")
    assert list(unet.config.block_out_channels) == list(tiny_unet().config.block_out_channels)
    assert load_noise_scheduler("lab/tiny-ddpm").config.num_train_timesteps == 1000


def test_wandb_offline_logging(tmp_path, wandb_dir):
    train(make_cfg(tmp_path, "--report_to", "wandb", "--save_images_steps", "2", steps=2))
    runs = list(wandb_dir.glob("offline-run-*"))
    assert runs and list(runs[0].rglob("*.wandb"))
    media = list(runs[0].rglob("samples_*.png"))
    assert media, "sample grid was not logged"


def test_checkpoints_are_scored_by_kid_and_the_best_one_is_kept_and_sampleable(tmp_path):
    from ddpm_lesion.model.pretrained import load_pipeline, read_best

    write_images(tmp_path / "heldout", 6, size=20, seed=9)
    run = train(make_cfg(tmp_path, "--validation_data_dir", str(tmp_path / "heldout"), "--validation_features",
                         "pixels", "--validation_num_images", "6", "--checkpointing_steps", "1",
                         "--checkpoints_total_limit", "1", "--sampler_choice_images", "4", steps=4))
    rows = [r.split(",") for r in (run / "validation.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4] and all(r[4] == "pixels16" for r in rows)
    assert all(0.0 <= float(r[5]) <= 1.0 for r in rows) and (run / "validation.png").is_file()
    kids = {int(r[0]): float(r[1]) for r in rows}
    best = read_best(run)
    assert best["step"] == min(kids, key=kids.get) and best["kid"] == pytest.approx(kids[best["step"]], rel=1e-4)
    kept = {s for s, _ in checkpoints.list_checkpoints(run)}
    assert kept == {4, best["step"]}  # the newest (limit 1) and the best survive rotation
    _, source = load_pipeline(str(run), "best")
    assert source.endswith(f"checkpoint-{best['step']}/pipeline")


def test_the_end_of_training_chooses_the_sampler_on_the_validation_images(tmp_path):
    """With --validation_data_dir the run ends with pick-sampler on its final weights:
    sampler.json names a measured setting for exactly those weights, and sample_ddpm.py's
    defaults then use it."""
    from ddpm_lesion.model.pretrained import load_pipeline, model_sha256
    from ddpm_lesion.sample.generation import generate
    from ddpm_lesion.sample.sample_config import SampleConfig

    write_images(tmp_path / "heldout", 6, size=20, seed=9)
    run = train(make_cfg(tmp_path, "--validation_data_dir", str(tmp_path / "heldout"), "--validation_features",
                         "pixels", "--validation_num_images", "4", "--sampler_choice_images", "4",
                         "--use_ema", steps=2))
    record = json.loads((run / "sampler.json").read_text())
    pipeline, _ = load_pipeline(str(run))
    assert record["model_sha256"] == model_sha256(pipeline.unet) and record["feature_space"] == "pixels16"
    assert record["real"]["dir"] == str(tmp_path / "heldout") and record["num_images"] == 4
    measured = {record["reference"]["setting"]} | {c["setting"] for c in record["candidates"]}
    assert f"{record['scheduler']}:{record['num_inference_steps']}" in measured
    generate(SampleConfig(model_dir=str(run), output_dir=tmp_path / "out", num_images=2, batch_size=2,
                          mixed_precision=MixedPrecision.NO))
    used = yaml.safe_load((tmp_path / "out" / "sample_config.yaml").read_text())
    assert (used["scheduler"], used["num_inference_steps"]) == (record["scheduler"], record["num_inference_steps"])


@pytest.mark.parametrize("flags,expected", [((), "DDPMScheduler"), (("--sample_scheduler", "ddim"), "DDIMScheduler")])
def test_sample_grids_and_checkpoint_kid_use_the_generation_sampler(tmp_path, monkeypatch, flags, expected):
    """By default the grids and the KID that picks the best checkpoint come from the sampler
    sample_ddpm.py uses by default (a checkpoint ranked by DDIM images may not be the best
    under DDPM: their KIDs differed 4x on the demo model)."""
    from ddpm_lesion.sample.samplers import DEFAULT_SCHEDULER, DEFAULT_STEPS
    from ddpm_lesion.train import checkpoint_kid as validation

    assert (TrainConfig().sample_scheduler, TrainConfig().sample_inference_steps) == (DEFAULT_SCHEDULER, DEFAULT_STEPS)
    used = []

    def recording(unet, scheduler, *args, **kwargs):
        used.append(type(scheduler).__name__)
        return training_denoise(unet, scheduler, *args, **kwargs)

    training_denoise = training.denoise
    monkeypatch.setattr(training, "denoise", recording)
    monkeypatch.setattr(validation, "denoise", recording)
    write_images(tmp_path / "heldout", 6, size=20, seed=9)
    train(make_cfg(tmp_path, "--validation_data_dir", str(tmp_path / "heldout"), "--validation_features", "pixels",
                   "--validation_num_images", "4", "--checkpointing_steps", "2", "--no-choose_sampler", *flags,
                   steps=2))
    assert len(used) >= 2 and set(used) == {expected}  # one KID, one grid at least


def test_loss_and_regularisation_options_run_and_are_guarded_on_resume(tmp_path, monkeypatch):
    modes = []

    def recording(unet, *args):
        modes.append(unet.training)  # dropout acts only in training mode
        return diffusion_loss(unet, *args)

    monkeypatch.setattr(training, "diffusion_loss", recording)
    run = train(make_cfg(tmp_path, "--augmentation", "dihedral", "--snr_gamma", "5", "--multiscale_loss_weight", "1",
                         "--dropout", "0.3", "--input_perturbation", "0.1"))
    assert (run / "model_index.json").is_file() and modes and all(modes)
    saved = yaml.safe_load((run / "train_config.yaml").read_text())
    assert (saved["augmentation"], saved["snr_gamma"], saved["multiscale_loss_weight"], saved["dropout"],
            saved["input_perturbation"]) == ("dihedral", 5.0, 1.0, 0.3, 0.1)
    assert UNet2DModel.from_pretrained(run / "unet").config.dropout == 0.3  # the published model says so
    with pytest.raises(UserError, match="augmentation: 'dihedral' -> 'hflip'.*dropout: 0.3 -> 0.0.*"
                                        "input_perturbation: 0.1 -> 0.0.*multiscale_loss_weight: 1.0 -> 0.0"):
        train(make_cfg(tmp_path, "--resume_from_checkpoint", "latest", steps=6))
    with pytest.raises(UserError, match="--snr_gamma must be positive"):
        train(make_cfg(tmp_path, "--snr_gamma", "0", "--output_dir", str(tmp_path / "other")))
    with pytest.raises(UserError, match="--multiscale_loss_weight must be 0"):
        train(make_cfg(tmp_path, "--multiscale_loss_weight", "-1", "--output_dir", str(tmp_path / "other")))
    with pytest.raises(UserError, match="--dropout is a probability"):
        train(make_cfg(tmp_path, "--dropout", "1", "--output_dir", str(tmp_path / "other")))
    with pytest.raises(UserError, match="--input_perturbation must be 0"):
        train(make_cfg(tmp_path, "--input_perturbation", "-0.1", "--output_dir", str(tmp_path / "other")))


def test_small_data_recipe_config_trains_from_the_repository_root(tmp_path, monkeypatch):
    """configs/small-data.yaml as the README runs it, for two steps: every key is a training
    option, and the bundled starting model it names (relative to the root) loads."""
    monkeypatch.chdir(REPO)
    write_images(tmp_path / "images", 6, size=32)
    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / "small-data.yaml"),
                                     "--train_data_dir", str(tmp_path / "images"), "--resolution", "32",
                                     "--output_dir", str(tmp_path / "run"), "--max_train_steps", "2",
                                     "--checkpointing_steps", "2", "--cache_dir", str(tmp_path / "cache")])
    assert (cfg.augmentation, cfg.input_perturbation, cfg.use_ema) == ("dihedral", 0.2, True)
    assert cfg.pretrained_model_name_or_path == "bench/models/ddpm-lesion-tiny-32-long"  # the start it was measured from
    assert (train(cfg) / "model_index.json").is_file()


def dropout_probabilities(unet: UNet2DModel) -> list[tuple[str, float]]:
    return [(name, module.p) for name, module in unet.named_modules() if isinstance(module, torch.nn.Dropout)]


def test_set_dropout_matches_a_unet_built_with_that_dropout():
    unet = tiny_unet()
    set_dropout(unet, 0.3)
    arguments = {key: value for key, value in unet.config.items() if not key.startswith("_")}
    built = UNet2DModel(**arguments | {"dropout": 0.3})  # diffusers' own placement
    assert dropout_probabilities(unet) == dropout_probabilities(built)
    assert 0.3 in dict(dropout_probabilities(unet)).values() and unet.config.dropout == 0.3


def test_exported_weights_sample_without_dropout():
    """Checkpoint KID and sample grids run on `export_unet`'s copy of the training model: a
    copy left in training mode would drop activations at every sampling step."""
    unet = tiny_unet()
    set_dropout(unet, 0.5)
    exported = checkpoints.export_unet(unet.train(), None)
    sample, timestep = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(exported(sample, timestep).sample, exported(sample, timestep).sample)
    assert unet.training and not exported.training


@pytest.mark.parametrize(("random_flip", "refused"), [(True, False), (False, True)])
def test_a_run_saved_with_random_flip_resumes_only_with_the_same_augmentation(tmp_path, random_flip, refused):
    """Runs saved before --augmentation replaced --random_flip: `random_flip: true` is
    `hflip` (the default), `false` is `none`, and the resume guard compares them as such."""
    cfg = make_cfg(tmp_path, "--resume_from_checkpoint", "latest")  # --augmentation left at hflip
    saved = {k: v for k, v in yaml.safe_load(yaml.safe_dump(training.to_plain_dict(cfg))).items()
             if k != "augmentation"}
    cfg.output_dir.mkdir(parents=True)
    (cfg.output_dir / "train_config.yaml").write_text(yaml.safe_dump({**saved, "random_flip": random_flip}))
    if refused:
        with pytest.raises(UserError, match="augmentation: 'none' -> 'hflip'"):
            training.prepare_run_dir(cfg)
    else:
        training.prepare_run_dir(cfg)
        assert yaml.safe_load((cfg.output_dir / "train_config.yaml").read_text())["augmentation"] == "hflip"
