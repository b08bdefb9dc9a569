"""Class conditioning: the added embedding starts neutral, guidance follows its formula,
and — the known pitfall — the label really changes what the model generates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.model.conditioning import (
    add_class_embedding,
    class_index,
    drop_labels,
    guided_prediction,
    load_class_names,
)
from ddpm_lesion.model.pretrained import load_pipeline
from ddpm_lesion.sample.samplers import denoise, image_generators, initial_noise, make_scheduler
from ddpm_lesion.train.loop import TrainConfig, train
from tests.helpers import tiny_unet


def test_added_class_embedding_leaves_the_pretrained_output_unchanged():
    unet = tiny_unet().eval()
    conditional = add_class_embedding(unet, num_classes=3).eval()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([5, 200, 600, 999])
    with torch.no_grad():
        reference = unet(x, t).sample
        for label in range(4):  # three classes and the null label
            out = conditional(x, t, class_labels=torch.full((4,), label)).sample
            assert torch.equal(out, reference)


def test_guidance_formula_and_scale_one_is_plain_conditional():
    torch.manual_seed(0)
    unet = add_class_embedding(tiny_unet(), 2).eval()
    torch.nn.init.normal_(unet.class_embedding.weight)  # make classes differ
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor(10), torch.tensor([0, 1])
    with torch.no_grad():
        cond = unet(x, t, class_labels=labels).sample
        uncond = unet(x, t, class_labels=torch.tensor([2, 2])).sample
        assert torch.allclose(guided_prediction(unet, x, t, labels, 1.0), cond)
        assert torch.allclose(guided_prediction(unet, x, t, labels, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
        assert not torch.allclose(cond, uncond)


def test_label_dropout_rate():
    labels = torch.zeros(10_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, null=5, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 5}
    assert 0.08 < (dropped == 5).float().mean().item() < 0.12


def test_class_names_lookup_errors():
    with pytest.raises(UserError, match="unconditional"):
        class_index(None, "MEL", "m")
    with pytest.raises(UserError, match="knows the classes MEL, NV"):
        class_index(["MEL", "NV"], "BCC", "m")


def _two_colour_dataset(folder: Path, per_class: int = 8) -> Path:
    """HAM10000-style CSV: class 'red' images are red, class 'blue' images are blue."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i in range(2 * per_class):
        dx = "red" if i % 2 == 0 else "blue"
        base = np.array([200, 40, 40] if dx == "red" else [40, 40, 200], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 20, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"ISIC_{i:07d}.png")
        rows.append(f"HAM_{i:07d},ISIC_{i:07d},{dx},histo,50,male,back")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.slow
def test_the_class_label_steers_generation_towards_that_class(tmp_path):
    """A model fine-tuned on red and blue images, sampled from the SAME noise with label
    'red' and label 'blue', gives redder and bluer images respectively.

    Only the direction is asserted: a clean split needs thousands of steps, because the
    label carries information only at high noise, where its share of the loss is tiny
    (which is also why the new embedding gets its own, larger learning rate)."""
    data = _two_colour_dataset(tmp_path / "data")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pretrained")
    cfg = parse_config(TrainConfig, [
        "--train_data_dir", str(data), "--labels_csv", str(data / "labels.csv"), "--class_column", "dx",
        "--pretrained_model_name_or_path", str(tmp_path / "pretrained"), "--output_dir", str(tmp_path / "run"),
        "--resolution", "16", "--train_batch_size", "16", "--max_train_steps", "400", "--learning_rate", "2e-3",
        "--class_embedding_lr", "5e-2", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--checkpointing_steps", "1000", "--save_images_steps", "1000", "--num_sample_images", "4",
        "--sample_inference_steps", "2", "--cache_dir", str(tmp_path / "cache")])
    run = train(cfg)
    assert load_class_names(run) == ["blue", "red"]
    assert json.loads((run / "checkpoint-400/pipeline/class_labels.json").read_text())["classes"] == ["blue", "red"]
    pipe, _ = load_pipeline(str(run))
    n = 6
    redness = {}
    for name in ("blue", "red"):
        labels = torch.full((n,), class_index(["blue", "red"], name, "run"))
        noise = initial_noise(image_generators(0, range(n)), (3, 16, 16))
        pixels = denoise(pipe.unet, make_scheduler("ddim", pipe.scheduler.config), noise,
                         image_generators(0, range(n)), 25, class_labels=labels, guidance_scale=10.0).float()
        redness[name] = (pixels[..., 0] - pixels[..., 2]).mean().item()  # NHWC: red minus blue
    assert redness["red"] > 0 > redness["blue"], redness
    assert redness["red"] - redness["blue"] > 5, redness  # an untrained embedding gives exactly 0 (first test)
