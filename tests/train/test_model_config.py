"""Training from scratch only when asked (`--model_config PRESET|config.json`), and the model
card every run folder gets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.model.unet_presets import PRESETS, parameter_count, unet_from_config
from ddpm_lesion.train.loop import TrainConfig, train
from ddpm_lesion.train.model_card import render_model_card
from tests.helpers import tiny_unet, write_images


def scratch_cfg(tmp_path: Path, *extra: str, model_config: str = "cpu-small") -> TrainConfig:
    if not (tmp_path / "images").exists():
        write_images(tmp_path / "images", 5, size=20)
    args = ["--train_data_dir", str(tmp_path / "images"), "--output_dir", str(tmp_path / "run"),
            "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2",
            "--num_sample_images", "1", "--sample_inference_steps", "2", "--lr_warmup_steps", "0",
            "--cache_dir", str(tmp_path / "cache"), *extra]
    if model_config:
        args += ["--model_config", model_config]
    return parse_config(TrainConfig, args)


@pytest.mark.parametrize("name, millions, levels, attention_px", [
    ("ddpm-64", 101.1, 4, 16), ("ddpm-128", 109.7, 6, 16), ("cpu-small", 1.1, 3, 8)])
def test_presets_have_the_documented_size_and_attention_level(name, millions, levels, attention_px):
    with torch.device("meta"):  # the architecture without allocating 400 MB of weights
        unet = unet_from_config(name)
    assert parameter_count(unet) / 1e6 == pytest.approx(millions, abs=0.05)
    config = unet.config
    assert len(config.block_out_channels) == levels
    attention_level = [i for i, t in enumerate(config.down_block_types) if t.startswith("Attn")]
    assert [config.sample_size // 2 ** i for i in attention_level] == [attention_px]


def test_from_scratch_preset_trains_says_so_and_the_card_warns(tmp_path, capsys):
    run = train(scratch_cfg(tmp_path))
    log = capsys.readouterr().out
    assert "trained from scratch" in log and "memorise" in log
    base = json.loads((run / "base_model.json").read_text())
    assert base["from_scratch"] is True and base["model_config"] == "cpu-small"
    assert base["parameters"] == parameter_count(unet_from_config("cpu-small"))
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "from-scratch" in front["tags"] and "base_model" not in front and front["license"] == "other"
    assert "trained from scratch" in card and "memorise" in card and "Research use only" in card
    assert json.loads((run / "unet/config.json").read_text())["block_out_channels"] == [32, 64, 64]


def test_the_seed_fixes_the_initial_weights(tmp_path):
    """Every rank (and a rerun) must build the same random UNet, so the seed is applied first."""
    from ddpm_lesion.train.loop import build_model

    cfg = scratch_cfg(tmp_path)
    first, _, _ = build_model(cfg, None, torch.device("cpu"))
    second, _, _ = build_model(cfg, None, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_any_unet2dmodel_config_json_trains_from_scratch(tmp_path):
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    (tmp_path / "unet.json").write_text(json.dumps({"_class_name": "UNet2DModel", **config}))
    run = train(scratch_cfg(tmp_path, model_config=str(tmp_path / "unet.json")))
    assert json.loads((run / "unet/config.json").read_text())["block_out_channels"] == [8, 16]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
    ('{"_class_name": "UNet2DConditionModel"}', "describes a UNet2DConditionModel"),
    ('{"block_out_chanels": [8, 16]}', "unknown UNet2DModel option.*block_out_chanels"),
])
def test_bad_model_config_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "unet.json").write_text(content)
    with pytest.raises(UserError, match=message):
        train(scratch_cfg(tmp_path, model_config=str(tmp_path / "unet.json")))
    assert not (tmp_path / "run" / "unet").exists()


def test_model_source_flags_exclude_each_other_and_one_is_required(tmp_path):
    with pytest.raises(UserError, match="neither a preset \\(ddpm-64, ddpm-128, cpu-small\\) nor a JSON file"):
        train(scratch_cfg(tmp_path, model_config="ddpm-96"))
    with pytest.raises(UserError, match="exclude each other"):
        train(scratch_cfg(tmp_path, "--pretrained_model_name_or_path", "google/ddpm-cifar10-32"))
    with pytest.raises(UserError, match="google/ddpm-ema-church-256.*--model_config"):
        train(scratch_cfg(tmp_path, model_config=""))  # "": no --model_config flag
    assert sorted(PRESETS) == ["cpu-small", "ddpm-128", "ddpm-64"]


def test_model_card_reports_the_run_and_links_only_what_exists(tmp_path):
    run = train(scratch_cfg(tmp_path))
    report = json.loads((run / "data_report.json").read_text())
    card = render_model_card(run)
    assert f"**{report['used']} images used**" in card
    assert "2 optimizer steps" in card and "`resolution=16`" in card and "`train_batch_size=2`" in card
    assert "Not measured during training" in card  # no --validation_data_dir
    assert "DDPM with 50 steps" in card  # no sampler.json
    links = re.findall(r"\]\(([^)]+)\)", card)
    assert "loss.png" in links and "samples/step-0000002.png" in links
    assert all((run / link).is_file() for link in links), links
