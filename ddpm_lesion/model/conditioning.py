"""One class-conditional model instead of one model per class.

A pretrained *unconditional* UNet gets a class embedding added to its timestep
embedding (diffusers' `num_class_embeds`). The embedding starts at zero, so at step 0
the network computes exactly what the pretrained one did, and fine-tuning only has to
learn how each class shifts it. One extra "null" class is the unconditional label used
for label dropout in training and for classifier-free guidance in sampling
(Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"):

    ε̂ = ε(x, t, ∅) + w · (ε(x, t, c) - ε(x, t, ∅))

The class names travel with the model in `class_labels.json` beside `model_index.json`,
so a sampler asks for "MEL", not for index 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel

from ddpm_lesion.core import run_files
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_text_atomic


def add_class_embedding(unet: UNet2DModel, num_classes: int) -> UNet2DModel:
    """A copy of `unet` with `num_classes` + 1 (null) zero-initialised class embeddings."""
    if unet.config.num_class_embeds is not None:
        if unet.config.num_class_embeds != num_classes + 1:
            raise UserError(f"the pretrained UNet is already class-conditional with {unet.config.num_class_embeds - 1} "
                            f"classes, but the data has {num_classes}. Start from an unconditional model.")
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    conditional = UNet2DModel.from_config({**config, "num_class_embeds": num_classes + 1})
    missing, unexpected = conditional.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("class_embedding") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(conditional.class_embedding.weight)
    return conditional.to(unet.device, unet.dtype)


def null_label(unet: UNet2DModel) -> int:
    return unet.config.num_class_embeds - 1


def drop_labels(labels: torch.Tensor, probability: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label with `probability`, so the same network
    also learns the unconditional prediction that guidance needs."""
    drop = (torch.rand(labels.shape[0], generator=generator) < probability).to(labels.device)
    return torch.where(drop, torch.full_like(labels, null), labels)


def guided_prediction(unet: torch.nn.Module, sample: torch.Tensor, timestep: torch.Tensor,
                      labels: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The network output, with classifier-free guidance when `guidance_scale` != 1.

    Unconditional models (`labels` None) are called as they are; a scale of 1 is the
    plain conditional prediction (one forward pass instead of two).
    """
    if labels is None:
        return unet(sample, timestep).sample
    if guidance_scale == 1.0:
        return unet(sample, timestep, class_labels=labels).sample
    null = torch.full_like(labels, unet.config.num_class_embeds - 1)
    both = unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([labels, null])).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def save_class_names(folder: Path, names: list[str]) -> None:
    write_text_atomic(folder / run_files.CLASS_LABELS, json.dumps({"classes": names}, indent=2))


def load_class_names(folder: str | Path) -> list[str] | None:
    """Class names of a conditional pipeline folder, or None for an unconditional one."""
    path = Path(folder) / run_files.CLASS_LABELS
    if not path.is_file():
        return None
    return list(json.loads(path.read_text(encoding="utf-8"))["classes"])


def class_index(names: list[str] | None, wanted: str, source: str) -> int:
    if names is None:
        raise UserError(f"--class_label {wanted}: the model in {source} is unconditional (no {run_files.CLASS_LABELS}); "
                        "drop --class_label or sample from a class-conditional run.")
    if wanted not in names:
        raise UserError(f"--class_label {wanted}: the model in {source} knows the classes {', '.join(names)}.")
    return names.index(wanted)
