"""The denoising loss, apart from the loop and the network (as in EDM's code layout).

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", eq. 14): draw t uniformly,
noise x0 to x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, and regress the network output on the
target the scheduler was configured for — ε (`epsilon`), x0 (`sample`) or
v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (`v_prediction`, Salimans & Ho 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def diffusion_loss(unet: torch.nn.Module, scheduler: DDPMScheduler, clean: torch.Tensor,
                   generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-squared denoising error for a batch of images in [-1, 1].

    `class_labels` (with the null label where dropped) conditions a class-conditional
    UNet; unconditional UNets are called without it. All randomness comes from `generator` (a CPU generator, so the draws are the same
    on every device type) which makes a step a pure function of its inputs.
    """
    batch = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = clean
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    conditioning = {} if class_labels is None else {"class_labels": class_labels}
    prediction = unet(noisy, timesteps, **conditioning).sample
    return F.mse_loss(prediction.float(), target.float())


def augment(images_uint8: torch.Tensor, generator: torch.Generator, random_flip: bool) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1], with seeded horizontal flips.

    Only flips: dermoscopy has no canonical left/right, and flips keep the cached
    pixel grid (no resampling blur), unlike random crops of an already-cropped image.
    """
    images = images_uint8.float().div_(127.5).sub_(1.0)
    if random_flip:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images[flip.to(images.device)] = images[flip.to(images.device)].flip(-1)
    return images
