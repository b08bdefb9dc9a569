"""`ddpm-lesion pick-sampler`: the choice rule on hand-made scores, then an end-to-end run on
a tiny model whose choice `sample_ddpm.py` picks up, with resume and the refusals."""

from __future__ import annotations

import json

import pytest
import yaml
from diffusers import UNet2DModel

from ddpm_lesion.commands.cli import main as cli_main
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.evaluate.metrics import KidEstimate, PairedDifference
from ddpm_lesion.model.pretrained import model_sha256
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.pick_sampler import (
    PickSamplerConfig,
    Scored,
    Setting,
    choose,
    clearly_worse,
    pick_sampler,
    within_tolerance,
)
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.sample.samplers import SchedulerName
from tests.helpers import save_tiny_pipeline, write_images

REFERENCE = Scored(Setting(SchedulerName.DDPM, 50), KidEstimate(0.020, 0.004, 0.013, 0.028), None)


def candidate(spec: str, kid: float, delta: float) -> Scored:
    return Scored(Setting.parse(spec), KidEstimate(kid, 0.004, kid - 0.008, kid + 0.008),
                  PairedDifference(delta, delta - 0.005, delta + 0.005, 0.5))


def test_the_cheapest_candidate_within_tolerance_wins():
    worse = candidate("dpmsolver++:10", 0.030, +0.010)  # 50% worse
    slightly_worse = candidate("dpmsolver++:20", 0.0215, +0.0015)  # 7.5% worse: within 10%
    better = candidate("ddpm:30", 0.018, -0.002)
    assert not within_tolerance(worse, REFERENCE, 0.1)
    assert within_tolerance(slightly_worse, REFERENCE, 0.1) and not within_tolerance(slightly_worse, REFERENCE, 0.05)
    assert choose(REFERENCE, [worse, slightly_worse, better], 0.1) == slightly_worse
    assert choose(REFERENCE, [worse, slightly_worse, better], 0.0) == better
    assert choose(REFERENCE, [worse], 0.1) == REFERENCE


def test_equally_cheap_candidates_are_ranked_by_kid():
    a, b = candidate("dpmsolver++:15", 0.0205, +0.0005), candidate("unipc:15", 0.0195, -0.0005)
    assert choose(REFERENCE, [a, b], 0.1) == b


def test_a_reference_indistinguishable_from_real_leaves_no_tolerance():
    """KID can be <= 0 when the sets are indistinguishable; 10% of it must not become a
    licence to be worse."""
    reference = REFERENCE._replace(kid=KidEstimate(-0.001, 0.004, -0.008, 0.006))
    assert not within_tolerance(candidate("dpmsolver++:20", 0.0001, +0.0011), reference, 0.1)
    assert within_tolerance(candidate("dpmsolver++:20", -0.001, 0.0), reference, 0.1)


def test_clearly_worse_means_outside_tolerance_even_at_the_optimistic_end():
    """Tolerance 10% of KID 0.020 = 0.002; the paired intervals here are delta ± 0.005."""
    assert clearly_worse(candidate("dpmsolver++:10", 0.030, +0.010), REFERENCE, 0.1)  # low end +0.005
    assert not clearly_worse(candidate("dpmsolver++:10", 0.026, +0.006), REFERENCE, 0.1)  # low end +0.001
    assert not clearly_worse(candidate("unipc:10", 0.019, -0.001), REFERENCE, 0.1)


@pytest.mark.parametrize("text", ["dpm:20", "ddim", "ddim:0", "ddim:x", ""])
def test_bad_settings_are_refused_with_the_form_to_use(text):
    with pytest.raises(UserError, match="SCHEDULER:STEPS"):
        Setting.parse(text)


@pytest.fixture
def model_and_real(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model")
    real = tmp_path / "real"
    write_images(real, 12, size=16, seed=4)
    return model, real


def config(model, real, **changes) -> PickSamplerConfig:
    options = dict(model_dir=str(model), real_dir=real, candidates=["ddim:2", "dpmsolver++:2", "ddpm:3"],
                   reference="ddpm:4", num_images=6, features="pixels", kid_subsets=4, kid_subset_size=5,
                   mixed_precision="no", batch_size=4)
    return PickSamplerConfig(**{**options, **changes})


def test_pick_sampler_writes_its_choice_and_sample_ddpm_uses_it(model_and_real, tmp_path):
    model, real = model_and_real
    # A tolerance no candidate can miss: the cheapest step count (2) must win and stop the search.
    record = pick_sampler(config(model, real, tolerance=1e9))
    saved = json.loads((model / "sampler.json").read_text())
    assert saved == record and saved["num_inference_steps"] == 2 and saved["scheduler"] in {"ddim", "dpmsolver++"}
    assert saved["model_sha256"] == model_sha256(UNet2DModel.from_pretrained(model / "unet"))
    assert saved["speed_up_vs_reference"] == 2.0 and saved["feature_space"] == "pixels16"
    assert [c["setting"] for c in saved["candidates"]] == ["ddim:2", "dpmsolver++:2"]  # ddpm:3 never needed
    kids = {c["setting"]: c["kid"]["mean"] for c in saved["candidates"]}
    assert saved["scheduler"] == min(kids, key=kids.get).split(":")[0]

    out = model / "sampler_choice"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["ddim-2", "ddpm-4", "dpmsolver++-2", "features"]
    assert len(list((out / "ddpm-4" / "individual").glob("*.png"))) == 6
    assert (out / "kid_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Chosen: **" in (out / "report.md").read_text()
    assert yaml.safe_load((out / "pick_sampler_config.yaml").read_text())["tolerance"] == 1e9

    images = tmp_path / "generated"
    generate(SampleConfig(model_dir=str(model), output_dir=images, num_images=2, batch_size=2,
                          mixed_precision=MixedPrecision.NO))
    used = yaml.safe_load((images / "sample_config.yaml").read_text())
    assert (used["scheduler"], used["num_inference_steps"]) == (saved["scheduler"], 2)


def test_a_rerun_reuses_the_images_and_features(model_and_real, monkeypatch):
    """Each setting's images resume like any sample_ddpm.py folder and their features are
    cached, and so are the real set's (keyed by its pixels: a changed set is embedded again)."""
    from ddpm_lesion.evaluate import features
    from ddpm_lesion.sample import pick_sampler as sampler_choice

    model, real = model_and_real
    first = pick_sampler(config(model, real, tolerance=1e9))
    monkeypatch.setattr(features, "extract", lambda *args: pytest.fail("generated images were embedded again"))
    made, real_generate = [], sampler_choice.generate
    monkeypatch.setattr(sampler_choice, "generate", lambda cfg: made.append(real_generate(cfg).made))
    second = pick_sampler(config(model, real, tolerance=1e9))
    assert made == [0, 0, 0] and second["candidates"] == first["candidates"]


def test_no_candidate_within_tolerance_keeps_the_reference(model_and_real, monkeypatch):
    """With every candidate scored worse, all are measured and DDPM stays (and is recorded)."""
    from ddpm_lesion.sample import pick_sampler as sampler_choice

    model, real = model_and_real
    monkeypatch.setattr(sampler_choice, "within_tolerance", lambda *args: False)
    record = pick_sampler(config(model, real))
    assert (record["scheduler"], record["num_inference_steps"]) == ("ddpm", 4)
    assert [c["setting"] for c in record["candidates"]] == ["ddim:2", "dpmsolver++:2", "ddpm:3"]


def test_a_candidate_clearly_worse_on_the_first_screen_makes_no_more_images(model_and_real, monkeypatch):
    from ddpm_lesion.sample import pick_sampler as sampler_choice

    model, real = model_and_real
    monkeypatch.setattr(sampler_choice, "clearly_worse", lambda *args: True)
    record = pick_sampler(config(model, real, candidates=["ddim:2", "dpmsolver++:2"], screen_images=3))
    assert (record["scheduler"], record["num_inference_steps"]) == ("ddpm", 4) and record["candidates"] == []
    assert [(c["setting"], c["num_images"]) for c in record["screened_out"]] == [("ddim:2", 3), ("dpmsolver++:2", 3)]
    out = model / "sampler_choice"
    assert len(list((out / "ddim-2" / "individual").glob("*.png"))) == 3
    assert len(list((out / "ddpm-4" / "individual").glob("*.png"))) == 6
    assert "ddim:2 (first screen: 3 images)" in (out / "report.md").read_text()


def test_a_family_clearly_worse_and_flat_in_the_step_count_is_dropped(model_and_real, monkeypatch):
    """Equal KIDs at 2 and 3 steps, both clearly worse: 4 steps of the same sampler is not tried."""
    from ddpm_lesion.evaluate.metrics import KidEstimate
    from ddpm_lesion.sample import pick_sampler as sampler_choice

    model, real = model_and_real
    monkeypatch.setattr(sampler_choice, "clearly_worse", lambda *args: True)
    monkeypatch.setattr(sampler_choice, "within_tolerance", lambda *args: False)
    monkeypatch.setattr(sampler_choice.metrics, "kid", lambda *args: KidEstimate(0.05, 0.01, 0.03, 0.07))
    record = pick_sampler(config(model, real, candidates=["ddim:2", "ddim:3", "ddim:4"]))
    assert [c["setting"] for c in record["candidates"]] == ["ddim:2", "ddim:3"]
    assert "ddim" in record["families_dropped"] and not (model / "sampler_choice" / "ddim-4").exists()


def test_refusals_name_the_problem(model_and_real, tmp_path, capsys):
    model, real = model_and_real
    distilled = save_tiny_pipeline(tmp_path / "distilled")
    (distilled / "distilled.json").write_text(json.dumps({"scheduler": "ddim", "num_inference_steps": 2}))
    cases = [
        (config(model, None), "--real_dir is required"),
        (config(model, real, tolerance=-0.1), "--tolerance -0.1"),
        (config(model, real, candidates=["ddpm:4"]), "at least one setting other than the --reference"),
        (config(model, real, candidates=["fast:4"]), "SCHEDULER:STEPS"),
        (config("google/ddpm-not-in-the-cache", real), "not a local folder"),
        (config(distilled, real), "is a distilled model"),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError, match=message):
            pick_sampler(cfg)
    assert not (model / "sampler.json").exists()
    code = cli_main(["pick-sampler", "--model_dir", str(model), "--real_dir", str(tmp_path / "missing")])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_a_class_conditional_model_is_measured_on_one_class(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_lesion.model.conditioning import add_class_embedding, save_class_names
    from tests.helpers import tiny_unet

    model = tmp_path / "conditional"
    DDPMPipeline(unet=add_class_embedding(tiny_unet(16), num_classes=2),
                 scheduler=DDPMScheduler()).save_pretrained(model, safe_serialization=True)
    save_class_names(model, ["MEL", "NV"])
    real = tmp_path / "real"
    write_images(real, 12, size=16)
    with pytest.raises(UserError, match="--class_label"):
        pick_sampler(config(model, real))
    record = pick_sampler(config(model, real, class_label="NV", guidance_scale=2.0, tolerance=1e9))
    assert record["config"]["class_label"] == "NV" and record["num_inference_steps"] == 2
    folder = model / "sampler_choice" / f"{record['scheduler']}-2"
    assert yaml.safe_load((folder / "sample_config.yaml").read_text())["class_label"] == "NV"


def test_the_benchmark_model_ships_with_the_sampler_measured_on_its_weights():
    """`make bench` times bench/models/ddpm-lesion-tiny-32-long with its own sampler.json; a
    change of the weights without rerunning pick-sampler would silently time DDPM-50."""
    from ddpm_lesion.sample.generation import model_sampler
    from ddpm_lesion.sample.sampler_records import read_distilled
    from tests.helpers import REPO

    folder = REPO / "bench" / "models" / "ddpm-lesion-tiny-32-long"
    sha256 = model_sha256(UNet2DModel.from_pretrained(folder / "unet"))
    record, why = model_sampler(str(folder), sha256, read_distilled(folder))
    assert (record["scheduler"], record["num_inference_steps"]) == ("sde-dpmsolver++", 10)
    assert "measured as good as DDPM-50 on this model" in why
