"""`ddpm-lesion distill`: the grid, the DDIM step and the loss against closed forms and
diffusers, then an end-to-end run on a tiny model with resume."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler

from ddpm_lesion.commands.cli import main as cli_main
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.train import distill as distill_module
from ddpm_lesion.train.distill import DistillConfig, ddim_step, distill, distillation_loss, round_schedule, step_grid
from tests.helpers import save_tiny_pipeline, write_images


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 32])
def test_grid_is_ddim_trailing_and_nests_into_the_finer_grid(steps):
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    assert step_grid(steps, 1000) == scheduler.timesteps.tolist()
    assert step_grid(2 * steps, 1000)[::2] == step_grid(steps, 1000)


def test_rounds_halve_down_to_the_requested_steps():
    assert round_schedule(16, 4) == [8, 4]
    assert round_schedule(8, 1) == [4, 2, 1]
    for teacher, student in [(12, 4), (4, 4), (16, 0)]:
        with pytest.raises(UserError, match="power of two"):
            round_schedule(teacher, student)


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_step_matches_diffusers(clip):
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=clip)
    scheduler.set_timesteps(4)  # 999 -> 749 -> 499 -> 249 -> clean
    gen = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(2, 3, 8, 8, generator=gen) * 3, torch.randn(2, 3, 8, 8, generator=gen)
    alphas = scheduler.alphas_cumprod
    for t, t_next in [(999, 749), (249, -1)]:
        expected = scheduler.step(eps, t, sample).prev_sample
        a_next = alphas[t_next] if t_next >= 0 else torch.tensor(1.0)
        got = ddim_step(sample, eps, alphas[t], a_next, 1.0 if clip else None)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class PointMassDenoiser(torch.nn.Module):
    """The exact epsilon-predictor for data that is one image `c`: eps = (x - sqrt(a) c) / sqrt(1 - a).
    Its DDIM trajectory is exact, so one step lands where two do; `offset` adds a constant error."""

    def __init__(self, clean: torch.Tensor, alphas: torch.Tensor, offset: float = 0.0):
        super().__init__()
        self.clean, self.alphas, self.offset = clean, alphas, offset

    def forward(self, x, t):
        a = self.alphas[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - a.sqrt() * self.clean) / (1 - a).sqrt() + self.offset)


def test_loss_is_the_epsilon_error_of_the_student():
    """Hand-worked case: the exact denoiser as teacher gives loss 0 (one DDIM step of an exact
    denoiser lands where two do); a student off by a constant d in epsilon has loss d**2 at
    every step of the grid, the loss being in epsilon units."""
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    clean = torch.full((8, 3, 4, 4), 0.3)
    teacher = PointMassDenoiser(clean, alphas)
    grid = step_grid(8, 1000)
    for clip in (None, 1.0):  # clean images inside the clip range: clipping changes nothing
        exact = distillation_loss(teacher, teacher, clean, alphas, grid, torch.Generator().manual_seed(0), clip, None)
        assert exact.item() == pytest.approx(0.0, abs=1e-6)
    student = PointMassDenoiser(clean, alphas, offset=0.1)
    off = distillation_loss(student, teacher, clean, alphas, grid, torch.Generator().manual_seed(0), None, None)
    assert off.item() == pytest.approx(0.01, rel=1e-3)


def make_cfg(tmp_path, **overrides) -> DistillConfig:
    if not (tmp_path / "teacher").exists():
        save_tiny_pipeline(tmp_path / "teacher")
        write_images(tmp_path / "images", 6, size=16)
    values = dict(model_dir=str(tmp_path / "teacher"), train_data_dir=tmp_path / "images",
                  output_dir=tmp_path / "distilled", teacher_steps=4, num_inference_steps=1, iterations_per_round=3,
                  train_batch_size=4, num_sample_images=4, cache_dir=tmp_path / "cache")
    return DistillConfig(**{**values, **overrides})


def test_distilled_folder_is_a_plain_ddim_pipeline_and_a_rerun_resumes(tmp_path, monkeypatch):
    out = distill(make_cfg(tmp_path))
    pipeline = DDPMPipeline.from_pretrained(out)
    assert isinstance(pipeline.scheduler, DDIMScheduler)
    config = pipeline.scheduler.config
    assert config.timestep_spacing == "trailing" and config.clip_sample  # the teacher's clipping, as trained
    record = json.loads((out / "distilled.json").read_text())
    assert (record["scheduler"], record["num_inference_steps"], record["teacher_steps"]) == ("ddim", 1, 4)
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["steps-1", "steps-2"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["steps-1.png", "steps-2.png"]
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "round_steps,iteration,loss" and len(rows) == 1 + 2 * 3
    teacher = DDPMPipeline.from_pretrained(tmp_path / "teacher").unet
    changed = [not torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                      pipeline.unet.state_dict().values())]
    assert any(changed), "the student is still the teacher"

    # Interrupted after the first round: the rerun keeps it and trains only the second.
    (out / "distilled.json").unlink()
    shutil.rmtree(out / "rounds" / "steps-1")
    trained = []
    real_round = distill_module.train_round
    monkeypatch.setattr(distill_module, "train_round",
                        lambda cfg, teacher, *a, **k: trained.append(a[-1]) or real_round(cfg, teacher, *a, **k))
    distill(make_cfg(tmp_path))
    assert trained == [1] and (out / "distilled.json").is_file()


def test_changed_settings_and_bad_inputs_are_refused(tmp_path):
    distill(make_cfg(tmp_path, iterations_per_round=1))
    with pytest.raises(UserError, match="learning_rate"):
        distill(make_cfg(tmp_path, iterations_per_round=1, learning_rate=1e-3))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        distill(make_cfg(tmp_path, output_dir=tmp_path / "other"))
    with pytest.raises(UserError, match="power of two"):
        distill(make_cfg(tmp_path, output_dir=tmp_path / "new", teacher_steps=6, num_inference_steps=4))
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="must divide the model's 1000 training timesteps"):
        distill(make_cfg(tmp_path, output_dir=tmp_path / "new", teacher_steps=6, num_inference_steps=3))
    assert not (tmp_path / "new").exists()


def test_cli_runs_distill_and_sampling_uses_the_student_s_sampler(tmp_path, capsys):
    cfg = make_cfg(tmp_path, iterations_per_round=1)
    code = cli_main(["distill", "--model_dir", cfg.model_dir, "--train_data_dir", str(cfg.train_data_dir),
                     "--output_dir", str(cfg.output_dir), "--teacher_steps", "2", "--num_inference_steps", "1",
                     "--iterations_per_round", "1", "--train_batch_size", "2", "--num_sample_images", "1",
                     "--cache_dir", str(cfg.cache_dir)])
    assert code == 0 and "DDIM in 1 steps" in capsys.readouterr().out
    # sample_ddpm.py's defaults pick up the student's sampler by themselves
    summary = generate(SampleConfig(model_dir=str(cfg.output_dir), output_dir=tmp_path / "samples", num_images=2,
                                    batch_size=2))
    saved = yaml.safe_load((tmp_path / "samples" / "sample_config.yaml").read_text())
    assert summary.made == 2 and (saved["scheduler"], saved["num_inference_steps"]) == ("ddim", 1)
    assert cli_main(["distill", "--model_dir", cfg.model_dir, "--output_dir", str(tmp_path / "x")]) == 2
    assert "--train_data_dir is required" in capsys.readouterr().err


def test_help_reads_like_the_task(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["distill", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "progressive distillation" in out and "--teacher_steps" in out
