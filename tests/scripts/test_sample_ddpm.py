"""`sample_ddpm.py` end to end on a tiny 16 px model: layout, provenance, manifest, grids,
byte-identity across shards / processes / a SIGKILL, and clear errors for bad input.

What is guaranteed, and tested here: image i's bytes depend only on the model, seed, i and
the sampler settings (scheduler, steps, batch size, mixed precision, class and guidance,
output size) on a given device and software stack (on CPU: the same thread count) -- not on
--num_images, the number of processes, --shard, or interruptions. Different batch sizes share the same noise
but may differ by float rounding, so a folder refuses a changed --batch_size.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import save_tiny_pipeline, tiny_unet
from tests.launch_utils import REPO, race_hook_env, run_script, start_script

sys.path.insert(0, str(REPO))
import sample_ddpm  # noqa: E402
from ddpm_lesion.sample.provenance import is_synthetic, read_manifest, read_png_text  # noqa: E402
from ddpm_lesion.sample.samplers import SchedulerName  # noqa: E402

FAST = ["--num_inference_steps", "3", "--batch_size", "4"]


@pytest.fixture(autouse=True)
def one_thread():
    """CPU float results depend on the thread count; subprocesses run with OMP_NUM_THREADS=1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("model") / "tiny-ddpm")


def sample(model: Path, out: Path, *args: str) -> int:
    return sample_ddpm.main(["--model_dir", str(model), "--output_dir", str(out), *args])


def pngs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "individual").iterdir())


def assert_same_images(a: Path, b: Path, names: list[str] | None = None) -> None:
    """Byte-compare the images `names` of two runs (default: all, and the lists must match)."""
    if names is None:
        names = pngs(a)
        assert pngs(b) == names
    mismatch = [n for n in names if not filecmp.cmp(a / "individual" / n, b / "individual" / n, shallow=False)]
    assert not mismatch, f"differ: {mismatch}"


def without_created(manifest: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "created"} for row in read_manifest(manifest)]


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    """One uninterrupted single-process run that the split/killed runs must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse `one_thread`
    try:
        assert sample(model, out, "--num_images", "18", *FAST) == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_layout_provenance_manifest_and_grids(reference, model):
    names = pngs(reference)
    assert names == [f"synthetic_{i:06d}.png" for i in range(18)]
    assert sorted(p.name for p in (reference / "grids").iterdir()) == ["preview_grid_16.png"]
    assert is_synthetic(reference / "grids" / "preview_grid_16.png")

    text = read_png_text(reference / "individual" / "synthetic_000007.png")
    assert text["synthetic"] == "true" and text["generator"].startswith("ddpm-lesion ")
    assert (text["index"], text["seed"], text["scheduler"], text["steps"]) == ("7", "0", "ddpm", "3")
    assert len(text["model_sha256"]) == 64 and text["resolution"] == "16x16"
    assert not any(k.lower() in ("date", "time", "created", "creation time") for k in text)

    rows = read_manifest(reference / "manifest.csv")
    assert [r["file"] for r in rows] == [f"individual/{n}" for n in names]
    assert [r["index"] for r in rows] == [str(i) for i in range(18)]
    assert {r["model_sha256"] for r in rows} == {text["model_sha256"]}
    assert all(r["created"] for r in rows)

    saved = (reference / "sample_config.yaml").read_text()
    assert "num_images: 18" in saved and "scheduler: ddpm" in saved and f"model_dir: {model}" in saved


def test_output_size_resizes_and_is_recorded(model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "2", "--output_size", "24", "--prefix", "mel", *FAST) == 0
    path = out / "individual" / "mel_000001.png"
    assert Image.open(path).size == (24, 24)
    text = read_png_text(path)
    assert (text["native_resolution"], text["resolution"]) == ("16x16", "24x24")
    assert read_manifest(out / "manifest.csv")[1]["resolution"] == "24x24"
    assert not (out / "grids" / "preview_grid_16.png").exists()


def test_image_does_not_depend_on_num_images(reference, model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "6", *FAST) == 0
    assert_same_images(out, reference, pngs(out))


def test_shards_together_equal_one_run(reference, model, tmp_path):
    out = tmp_path / "out"
    for k in range(3):
        assert sample(model, out, "--num_images", "18", "--shard", f"{k}/3", *FAST) == 0
    assert pngs(out) == pngs(reference)
    assert_same_images(reference, out)
    assert without_created(out / "manifest.csv") == without_created(reference / "manifest.csv")
    assert filecmp.cmp(out / "grids" / "preview_grid_16.png", reference / "grids" / "preview_grid_16.png", shallow=False)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["flags", "config_file"])
def test_two_processes_equal_one(reference, model, tmp_path, launch):
    """`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`, and the
    shipped config file without that variable (ranks then choose the CPU themselves). Into a
    fresh folder, with rank 1 (then rank 0) held back 3 s after joining: a rank that checked
    the folder after the other had started writing would refuse it or plan other work."""
    out = tmp_path / "out"
    how = ({"num_processes": 2, "env": race_hook_env(tmp_path / "hook", delay_rank=1)} if launch == "flags" else
           {"config_file": REPO / "accelerate_configs" / "cpu_2proc.yaml",
            "env": {"ACCELERATE_USE_CPU": "false", **race_hook_env(tmp_path / "hook", delay_rank=0)}})
    result = run_script("sample_ddpm.py", ["--model_dir", str(model), "--output_dir", str(out),
                                           "--num_images", "18", *FAST], **how)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert_same_images(reference, out)
    assert without_created(out / "manifest.csv") == without_created(reference / "manifest.csv")


@pytest.mark.slow
def test_resume_after_sigkill_is_byte_identical(model, tmp_path):
    args = ["--model_dir", str(model), "--num_images", "32", "--batch_size", "2", "--scheduler", "ddpm",
            "--num_inference_steps", "15"]
    full = tmp_path / "full"
    assert sample_ddpm.main([*args, "--output_dir", str(full)]) == 0

    out = tmp_path / "killed"
    proc = start_script("sample_ddpm.py", [*args, "--output_dir", str(out)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "individual").is_dir() and len([n for n in pngs(out) if not n.startswith(".")]) >= 4:
            break  # some images written, others (and maybe a temp file) not yet
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    finished = [n for n in pngs(out) if not n.startswith(".")]
    assert 4 <= len(finished) < 32, "the kill should land mid-run"
    for name in finished:  # nothing partial under a final name
        with Image.open(out / "individual" / name) as image:
            image.load()
    assert_same_images(full, out, finished)

    assert sample_ddpm.main([*args, "--output_dir", str(out)]) == 0
    assert pngs(out) == pngs(full)  # no temp leftovers either
    assert_same_images(full, out)


def test_rerun_makes_only_missing_images(reference, model, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "8", *FAST) == 0
    (out / "individual" / "synthetic_000002.png").unlink()
    (out / "individual" / "synthetic_000007.png").unlink()
    kept = (out / "individual" / "synthetic_000003.png").stat().st_mtime_ns
    capsys.readouterr()
    assert sample(model, out, "--num_images", "8", *FAST) == 0
    assert "made 2 image(s) (6 were already there)" in capsys.readouterr().out
    assert (out / "individual" / "synthetic_000003.png").stat().st_mtime_ns == kept
    assert_same_images(out, reference, pngs(out))
    # the saved config alone reproduces the run: nothing left to make
    assert sample_ddpm.main(["--config", str(out / "sample_config.yaml")]) == 0
    assert "made 0 image(s) (8 were already there)" in capsys.readouterr().out


@pytest.mark.parametrize("scheduler", [s.value for s in SchedulerName])
def test_every_scheduler_runs(model, tmp_path, scheduler):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "2", "--scheduler", scheduler, "--num_inference_steps", "2",
                  "--batch_size", "2") == 0
    assert read_png_text(out / "individual" / "synthetic_000001.png")["scheduler"] == scheduler


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_is_recorded(model, tmp_path, precision):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "1", "--batch_size", "1", "--num_inference_steps", "2",
                  "--mixed_precision", precision) == 0
    assert read_png_text(out / "individual" / "synthetic_000000.png")["mixed_precision"] == precision


def test_auto_settings_are_recorded_and_a_resume_reuses_them(model, tmp_path, monkeypatch):
    """`auto` batch size and precision become concrete values in the folder; a resume on a
    machine that would choose differently still makes byte-identical images."""
    import yaml

    from ddpm_lesion.sample.autotune import CPU_BATCH_SIZE

    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "5", "--num_inference_steps", "2") == 0
    saved = yaml.safe_load((out / "sample_config.yaml").read_text())
    assert saved["batch_size"] == CPU_BATCH_SIZE and saved["mixed_precision"] in ("bf16", "no")
    text = read_png_text(out / "individual" / "synthetic_000004.png")
    assert (text["batch_size"], text["mixed_precision"]) == (str(CPU_BATCH_SIZE), saved["mixed_precision"])

    before = (out / "individual" / "synthetic_000004.png").read_bytes()
    (out / "individual" / "synthetic_000004.png").unlink()
    monkeypatch.setattr("ddpm_lesion.sample.generation.auto_batch_size", lambda *a, **k: 2)
    monkeypatch.setattr("ddpm_lesion.sample.generation.bf16_is_fast", lambda device: saved["mixed_precision"] != "bf16")
    assert sample(model, out, "--num_images", "5", "--num_inference_steps", "2") == 0
    assert (out / "individual" / "synthetic_000004.png").read_bytes() == before


def test_torch_compile_is_applied_and_recorded(model, tmp_path, monkeypatch, capsys):
    """The flag reaches `torch.compile` (stubbed: compiling takes minutes on a CPU) and, since
    compiled kernels round differently, becomes part of the images' identity."""
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: modes.append(kwargs))
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "2", *FAST, "--torch_compile", "reduce-overhead") == 0
    assert modes == [{"mode": "reduce-overhead"}]
    assert read_png_text(out / "individual" / "synthetic_000001.png")["torch_compile"] == "reduce-overhead"
    assert [r["torch_compile"] for r in read_manifest(out / "manifest.csv")] == ["reduce-overhead"] * 2
    assert "torch_compile:" in error_of(capsys, sample(model, out, "--num_images", "2", *FAST))
    assert "torch_compile" not in read_png_text(sample_one(model, tmp_path / "plain"))


def sample_one(model: Path, out: Path) -> Path:
    assert sample(model, out, "--num_images", "1", "--batch_size", "1", "--num_inference_steps", "1") == 0
    return out / "individual" / "synthetic_000000.png"


def test_grids_and_throughput_go_to_wandb_offline(model, tmp_path, wandb_dir):
    assert sample(model, tmp_path / "out", "--num_images", "16", "--num_inference_steps", "1", "--batch_size", "16",
                  "--report_to", "wandb") == 0
    runs = list(wandb_dir.glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def error_of(capsys, rc: int) -> str:
    """The `error: ...` the script printed for exit code 2 (stderr also holds progress bars)."""
    err = capsys.readouterr().err
    assert rc == 2 and "\nerror: " in f"\n{err}" and "Traceback" not in err, err
    return err


def test_missing_model(tmp_path, capsys):
    err = error_of(capsys, sample(tmp_path / "nope", tmp_path / "out", "--num_images", "1"))
    assert f"'{tmp_path / 'nope'}' is neither a local folder nor a model in the Hugging Face cache" in err
    assert "save_pretrained" in err  # ... and the fix
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "not a DDPMPipeline" in error_of(capsys, sample(tmp_path / "empty", tmp_path / "out"))
    assert "checkpoint" in error_of(capsys, sample(tmp_path / "empty", tmp_path / "out", "--checkpoint", "latest"))


@pytest.mark.parametrize("flags,message", [
    (["--num_images", "0"], "--num_images must be a positive"),
    (["--num_images", "-3"], "--num_images must be a positive"),
    (["--batch_size", "0"], "--batch_size must be a positive"),
    (["--shard", "2/2"], "--shard"),
    (["--shard", "0/2", "--overwrite"], "cannot be combined"),
    (["--num_inference_steps", "5000"], "exceeds"),
])
def test_bad_numbers(model, tmp_path, capsys, flags, message):
    assert message in error_of(capsys, sample(model, tmp_path / "out", *flags))
    assert not (tmp_path / "out" / "individual").exists()


def test_refuses_folder_with_other_files_unless_overwrite(model, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "individual").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(out / "individual" / "ISIC_0000001.png")
    (out / "notes.txt").write_text("mine")
    err = error_of(capsys, sample(model, out, "--num_images", "2", *FAST))
    assert "did not write" in err and "ISIC_0000001.png" in err
    assert sample(model, out, "--num_images", "2", *FAST, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "individual" / "ISIC_0000001.png").exists()
    assert [r["index"] for r in read_manifest(out / "manifest.csv")] == ["0", "1"]


@pytest.mark.parametrize("changed,named", [
    (["--seed", "1"], "seed"),
    (["--scheduler", "ddim"], "scheduler"),
    (["--batch_size", "2"], "batch_size"),
    (["--prefix", "other"], "prefix"),
])
def test_refuses_to_resume_with_other_settings(model, tmp_path, capsys, changed, named):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "4", *FAST) == 0
    before = {n: (out / "individual" / n).read_bytes() for n in pngs(out)}
    err = error_of(capsys, sample(model, out, "--num_images", "4", *FAST, *changed))
    assert f"{named}:" in err and "--overwrite" in err
    assert {n: (out / "individual" / n).read_bytes() for n in pngs(out)} == before
    assert sample(model, out, "--num_images", "4", *FAST, *changed, "--overwrite") == 0


def test_resumes_a_folder_recorded_before_an_option_existed(model, tmp_path):
    """A folder whose sample_config.yaml predates `--torch_compile` (and the automatic batch
    size and precision) resumes with the values it recorded."""
    import yaml

    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "4", *FAST, "--mixed_precision", "no") == 0
    record = yaml.safe_load((out / "sample_config.yaml").read_text())
    del record["torch_compile"], record["max_batch_size"]
    (out / "sample_config.yaml").write_text(yaml.safe_dump(record))
    (out / "individual" / "synthetic_000003.png").unlink()
    assert sample(model, out, "--num_images", "4", "--num_inference_steps", "3") == 0
    assert read_png_text(out / "individual" / "synthetic_000003.png")["mixed_precision"] == "no"


def test_refuses_images_of_another_model(model, tmp_path, capsys):
    out = tmp_path / "out"
    other = save_tiny_pipeline(tmp_path / "other", seed=1)
    assert sample(model, out, "--num_images", "2", *FAST) == 0
    assert "model_sha256:" in error_of(capsys, sample(other, out, "--num_images", "2", *FAST))


# ------------------------------------------------------------------------ the automatic sampler, distilled models

DISTILLED = {"scheduler": "ddim", "num_inference_steps": 2, "teacher": "runs/tiny", "teacher_sha256": "0" * 64,
             "rounds": []}


def save_distilled_pipeline(path: Path, record: str = json.dumps(DISTILLED)) -> Path:
    """A tiny model laid out as `ddpm-lesion distill` writes one: a DDIM scheduler config with
    trailing timesteps and `distilled.json` (raw text here, so a test can break it)."""
    from diffusers import DDIMScheduler, DDPMPipeline

    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(path, safe_serialization=True)
    (path / "distilled.json").write_text(record)
    return path


@pytest.fixture(scope="module")
def distilled_model(tmp_path_factory) -> Path:
    return save_distilled_pipeline(tmp_path_factory.mktemp("distilled") / "tiny-distilled")


@pytest.fixture
def denoise_calls(monkeypatch) -> list[tuple[str, str, int]]:
    """(scheduler class, its timestep spacing, steps) of every batch `generate` denoises."""
    from ddpm_lesion.sample import generation

    calls, real = [], generation.denoise

    def spy(unet, scheduler, noise, generators, num_inference_steps, *args, **kwargs):
        calls.append((type(scheduler).__name__, scheduler.config.timestep_spacing, num_inference_steps))
        return real(unet, scheduler, noise, generators, num_inference_steps, *args, **kwargs)

    monkeypatch.setattr(generation, "denoise", spy)
    return calls


def recorded_sampler(out: Path) -> tuple[tuple[str, int], set[tuple[str, str]]]:
    """(scheduler, steps) in sample_config.yaml, and the set of (scheduler, steps) in the manifest."""
    import yaml

    saved = yaml.safe_load((out / "sample_config.yaml").read_text())
    return ((saved["scheduler"], saved["num_inference_steps"]),
            {(row["scheduler"], row["steps"]) for row in read_manifest(out / "manifest.csv")})


def test_an_ordinary_model_gets_the_default_sampler(model, tmp_path, capsys, denoise_calls):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "2", "--batch_size", "2") == 0
    assert recorded_sampler(out) == (("ddpm", 50), {("ddpm", "50")})
    assert denoise_calls == [("DDPMScheduler", "leading", 50)]
    log = capsys.readouterr().out
    assert "sampler ddpm, 50 steps (auto: the default; ddpm-lesion pick-sampler finds" in log and "warning" not in log


def test_a_distilled_model_brings_its_own_sampler(distilled_model, tmp_path, capsys, denoise_calls):
    out = tmp_path / "out"
    assert sample(distilled_model, out, "--num_images", "3", "--batch_size", "2") == 0
    assert recorded_sampler(out) == (("ddim", 2), {("ddim", "2")})
    assert denoise_calls == [("DDIMScheduler", "trailing", 2)] * 2
    log = capsys.readouterr().out
    assert "sampler ddim, 2 steps (auto: distilled model)" in log and "warning" not in log


def test_other_settings_on_a_distilled_model_are_used_with_a_warning(distilled_model, tmp_path, capsys,
                                                                      denoise_calls):
    out = tmp_path / "out"
    assert sample(distilled_model, out, "--num_images", "2", "--batch_size", "2", "--num_inference_steps", "3") == 0
    assert recorded_sampler(out) == (("ddim", 3), {("ddim", "3")})
    assert denoise_calls == [("DDIMScheduler", "trailing", 3)]
    log = capsys.readouterr().out
    assert "sampler ddim (auto: distilled model)" in log
    assert "warning: " in log and "distilled for 2 steps of ddim" in log and "poor images" in log


def test_a_resume_keeps_the_recorded_sampler(model, tmp_path, capsys, denoise_calls):
    """A folder made with a sampler given explicitly resumes with it when the flags are left
    out, rather than with today's automatic choice (DDPM-50), which it would refuse."""
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "3", "--batch_size", "2", "--scheduler", "ddim",
                  "--num_inference_steps", "2") == 0
    before = (out / "individual" / "synthetic_000002.png").read_bytes()
    (out / "individual" / "synthetic_000002.png").unlink()
    capsys.readouterr()
    assert sample(model, out, "--num_images", "3", "--batch_size", "2") == 0
    assert "sampler ddim, 2 steps (auto: as recorded in the folder)" in capsys.readouterr().out
    assert (out / "individual" / "synthetic_000002.png").read_bytes() == before
    assert recorded_sampler(out) == (("ddim", 2), {("ddim", "2")})
    assert denoise_calls[-1] == ("DDIMScheduler", "leading", 2)


@pytest.mark.parametrize("record,problem", [
    ("{not json", "not valid JSON"),
    ("[]", "not an object"),
    (json.dumps({**DISTILLED, "scheduler": "lcm"}), "'scheduler' is 'lcm'"),
    (json.dumps({**DISTILLED, "num_inference_steps": 0}), "'num_inference_steps' is 0"),
    (json.dumps({"scheduler": "ddim"}), "'num_inference_steps' is None"),
])
def test_a_malformed_distilled_record_is_refused(tmp_path, capsys, record, problem):
    folder = save_distilled_pipeline(tmp_path / "model", record)
    err = error_of(capsys, sample(folder, tmp_path / "out", "--num_images", "1"))
    assert f"{folder / 'distilled.json'} is malformed: " in err and problem in err and "ddpm-lesion distill" in err
    assert not (tmp_path / "out").exists()


def save_picked_pipeline(path: Path, sha256: str | None = None) -> Path:
    """A tiny model whose folder holds a `sampler.json` as `ddpm-lesion pick-sampler` writes it,
    for these weights (or, given `sha256`, for other ones)."""
    from diffusers import UNet2DModel

    from ddpm_lesion.model.pretrained import model_sha256

    save_tiny_pipeline(path)
    own = model_sha256(UNet2DModel.from_pretrained(path / "unet"))
    (path / "sampler.json").write_text(json.dumps({"scheduler": "dpmsolver++", "num_inference_steps": 3,
                                                   "model_sha256": sha256 or own}))
    return path


def test_a_sampler_picked_for_the_model_is_used_by_default(tmp_path, capsys, denoise_calls):
    folder = save_picked_pipeline(tmp_path / "model")
    out = tmp_path / "out"
    assert sample(folder, out, "--num_images", "2", "--batch_size", "2") == 0
    assert recorded_sampler(out) == (("dpmsolver++", 3), {("dpmsolver++", "3")})
    assert denoise_calls == [("DPMSolverMultistepScheduler", "leading", 3)]  # spacing: the model's config
    assert "sampler dpmsolver++, 3 steps (auto: measured as good as DDPM-50 on this model, sampler.json)" in \
        capsys.readouterr().out


def test_a_sampler_picked_for_other_weights_is_ignored_and_said_so(tmp_path, capsys, denoise_calls):
    folder = save_picked_pipeline(tmp_path / "model", sha256="f" * 64)
    out = tmp_path / "out"
    assert sample(folder, out, "--num_images", "2", "--batch_size", "2") == 0
    assert recorded_sampler(out) == (("ddpm", 50), {("ddpm", "50")})
    assert "sampler.json there was measured on other weights, rerun ddpm-lesion pick-sampler" in \
        capsys.readouterr().out


def test_a_malformed_picked_sampler_is_refused(tmp_path, capsys):
    folder = save_picked_pipeline(tmp_path / "model")
    (folder / "sampler.json").write_text(json.dumps({"scheduler": "ddpm", "num_inference_steps": "fifty"}))
    err = error_of(capsys, sample(folder, tmp_path / "out", "--num_images", "1"))
    assert f"{folder / 'sampler.json'} is malformed: 'num_inference_steps' is 'fifty'" in err
    assert "ddpm-lesion pick-sampler" in err and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def conditional_model(tmp_path_factory) -> Path:
    """A tiny class-conditional pipeline (classes MEL, NV) as train_ddpm.py writes it."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_lesion.model.conditioning import add_class_embedding, save_class_names
    from tests.helpers import tiny_unet

    folder = tmp_path_factory.mktemp("conditional") / "pipeline"
    unet = add_class_embedding(tiny_unet(16), num_classes=2)
    torch.nn.init.normal_(unet.class_embedding.weight, std=3.0)  # make the classes differ
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder, safe_serialization=True)
    save_class_names(folder, ["MEL", "NV"])
    return folder


def test_class_conditional_sampling(conditional_model, tmp_path, capsys):
    err = error_of(capsys, sample(conditional_model, tmp_path / "none", "--num_images", "2", *FAST))
    assert "--class_label" in err and "MEL, NV" in err
    assert "MEL, NV" in error_of(capsys, sample(conditional_model, tmp_path / "x", "--class_label", "BCC"))

    for name in ("MEL", "NV"):
        assert sample(conditional_model, tmp_path / name, "--num_images", "2", "--class_label", name,
                      "--guidance_scale", "2", *FAST) == 0
    text = read_png_text(tmp_path / "MEL" / "individual" / "synthetic_000000.png")
    assert (text["class_label"], text["guidance_scale"]) == ("MEL", "2.0")
    assert read_manifest(tmp_path / "NV" / "manifest.csv")[0]["class_label"] == "NV"
    assert not filecmp.cmp(tmp_path / "MEL" / "individual" / "synthetic_000000.png",
                           tmp_path / "NV" / "individual" / "synthetic_000000.png", shallow=False)
    err = error_of(capsys, sample(conditional_model, tmp_path / "MEL", "--num_images", "2", "--class_label", "NV",
                                  "--guidance_scale", "2", *FAST))
    assert "class_label:" in err


def test_unconditional_model_refuses_class_options(model, tmp_path, capsys):
    assert "unconditional" in error_of(capsys, sample(model, tmp_path / "a", "--class_label", "MEL"))
    assert "unconditional" in error_of(capsys, sample(model, tmp_path / "b", "--guidance_scale", "3"))


@pytest.mark.slow
def test_cli_error_has_no_traceback(tmp_path):
    result = run_script("sample_ddpm.py", ["--model_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])
    assert result.returncode == 2
    assert "\nerror: " in f"\n{result.stderr}" and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def copied_train(reference, tmp_path_factory) -> Path:
    """A 'training set' holding generated images 1 and 6 of the reference run (one mirrored)
    and a few unrelated pictures: sampling with --reject_copies must turn those two down."""
    folder = tmp_path_factory.mktemp("train")
    for i, flip in ((1, False), (6, True)):
        image = Image.open(reference / "individual" / f"synthetic_{i:06d}.png").convert("RGB")
        (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image).save(folder / f"copied_{i}.png")
    for k in range(4):
        pixels = torch.Generator().manual_seed(k)
        Image.fromarray(torch.randint(0, 256, (16, 16, 3), generator=pixels, dtype=torch.uint8).numpy()).save(
            folder / f"other_{k}.png")
    return folder


def test_reject_copies_replaces_copies_and_keeps_every_other_image(reference, model, copied_train, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "8", "--reject_copies", str(copied_train), *FAST) == 0
    assert pngs(out) == pngs(reference)[:8]
    kept = [f"synthetic_{i:06d}.png" for i in (0, 2, 3, 4, 5, 7)]
    assert_same_images(out, reference, kept)
    for i in (1, 6):
        name = f"synthetic_{i:06d}.png"
        assert not filecmp.cmp(out / "individual" / name, reference / "individual" / name, shallow=False)
        assert int(read_png_text(out / "individual" / name)["source_index"]) >= 1 << 40
    with open(out / "rejected.csv", newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert [(r["index"], r["candidate_index"], r["nearest_train_file"]) for r in rejected] == [
        ("1", "1", "copied_1.png"), ("6", "6", "copied_6.png")]
    assert all(float(r["distance"]) <= float(r["threshold"]) for r in rejected)
    rows = read_manifest(out / "manifest.csv")
    assert [r["rejected_copies"] for r in rows] == ["0", "1", "0", "0", "0", "0", "1", "0"]
    assert "2 near copies of training images rejected" in capsys.readouterr().out

    # Shards and a resume after losing a replacement give the same bytes.
    split = tmp_path / "split"
    for k in range(2):
        assert sample(model, split, "--num_images", "8", "--shard", f"{k}/2", "--reject_copies", str(copied_train),
                      *FAST) == 0
    assert_same_images(out, split)
    (split / "individual" / "synthetic_000006.png").unlink()
    assert sample(model, split, "--num_images", "8", "--reject_copies", str(copied_train), *FAST) == 0
    assert_same_images(out, split)
    assert (split / "rejected.csv").read_text() == (out / "rejected.csv").read_text()


def test_reject_copies_is_part_of_a_folders_identity(model, copied_train, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(model, out, "--num_images", "2", *FAST) == 0
    assert sample(model, out, "--num_images", "2", "--reject_copies", str(copied_train), *FAST) == 2
    assert "reject_copies" in capsys.readouterr().err
    assert sample(model, tmp_path / "o2", "--num_images", "2", "--train_csv", "x.csv", *FAST) == 2
    assert "give --reject_copies" in capsys.readouterr().err


@pytest.mark.slow
def test_reject_copies_under_two_processes_equals_one(model, copied_train, tmp_path):
    """The index is built on the main process and shared: both ranks replace the same copies."""
    args = ["--num_images", "8", "--reject_copies", str(copied_train), *FAST]
    one = tmp_path / "one"
    assert sample(model, one, *args) == 0
    two = tmp_path / "two"
    result = run_script("sample_ddpm.py", ["--model_dir", str(model), "--output_dir", str(two), *args],
                        num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_images(one, two)
    assert (two / "rejected.csv").read_text() == (one / "rejected.csv").read_text()
    assert len((one / "rejected.csv").read_text().splitlines()) == 3  # header + the two copies


def as_training_run(model: Path, run: Path, train_data_dir: Path) -> Path:
    """The tiny pipeline as a training run folder whose train_config.yaml names its images."""
    shutil.copytree(model, run)
    (run / "train_config.yaml").write_text(f"train_data_dir: {train_data_dir}\nlabels_csv: null\nlabel_filter: []\n"
                                           "id_column: null\nresolution: 16\n")
    return run


def test_a_training_runs_own_images_are_checked_by_default(reference, model, copied_train, tmp_path, capsys):
    """Without --reject_copies, a training run's recorded images are the reference: the same
    images as asking for them, recorded in the folder; --no_reject_copies turns it off; a run
    whose images are not here is sampled unchecked with a warning, never silently."""
    run = as_training_run(model, tmp_path / "run", copied_train)
    explicit, default = tmp_path / "explicit", tmp_path / "default"
    assert sample(run, explicit, "--num_images", "8", "--reject_copies", str(copied_train), *FAST) == 0
    capsys.readouterr()
    assert sample(run, default, "--num_images", "8", *FAST) == 0
    assert f"copies of the training images in {copied_train} rejected (auto: from" in capsys.readouterr().out
    assert_same_images(explicit, default)
    assert (default / "rejected.csv").read_text() == (explicit / "rejected.csv").read_text()
    assert yaml.safe_load((default / "sample_config.yaml").read_text())["reject_copies"] == str(copied_train)
    # Resumed after losing a replacement, the folder checks what it recorded, with the same bytes.
    (default / "individual" / "synthetic_000006.png").unlink()
    assert sample(run, default, "--num_images", "8", *FAST) == 0
    assert "rejected (as recorded in the folder)" in capsys.readouterr().out
    assert_same_images(explicit, default)

    unchecked = tmp_path / "unchecked"
    assert sample(run, unchecked, "--num_images", "8", "--no_reject_copies", *FAST) == 0
    assert "copies not checked (--no_reject_copies)" in capsys.readouterr().out
    assert_same_images(unchecked, reference, pngs(unchecked)) and not (unchecked / "rejected.csv").exists()
    # A folder resumed without the flag keeps what it recorded: unchecked.
    (unchecked / "individual" / "synthetic_000001.png").unlink()
    assert sample(run, unchecked, "--num_images", "8", *FAST) == 0
    assert "copies not checked (as recorded in the folder)" in capsys.readouterr().out
    assert_same_images(unchecked, reference, pngs(unchecked))

    elsewhere = as_training_run(model, tmp_path / "moved", tmp_path / "not-here")
    assert sample(elsewhere, tmp_path / "o3", "--num_images", "8", *FAST) == 0
    assert "warning: copies not checked: the training images of" in capsys.readouterr().out
    assert_same_images(tmp_path / "o3", reference, pngs(tmp_path / "o3"))
    assert sample(run, tmp_path / "o4", "--num_images", "2", "--no_reject_copies", "--reject_copies",
                  str(copied_train), *FAST) == 2
    assert "contradict" in capsys.readouterr().err
