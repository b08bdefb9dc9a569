"""The denoising loss, apart from the loop and the network (as in EDM's code layout).

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", eq. 14): draw t uniformly,
noise x0 to x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, and regress the network output on the
target the scheduler was configured for — ε (`epsilon`), x0 (`sample`) or
v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (`v_prediction`, Salimans & Ho 2022).
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ddpm_lesion.core.dihedral import random_orientations


class Augmentation(str, enum.Enum):
    """`--augmentation`: which orientations of a training image are shown. Dermoscopy has
    no canonical orientation, so all 8 (`dihedral`) are equally real; `hflip` (the
    default, diffusers' `--random_flip`) shows 2, `none` the image as stored."""

    DIHEDRAL = "dihedral"
    HFLIP = "hflip"
    NONE = "none"


def diffusion_loss(unet: torch.nn.Module, scheduler: DDPMScheduler, clean: torch.Tensor,
                   generator: torch.Generator, class_labels: torch.Tensor | None = None,
                   snr_gamma: float | None = None, multiscale_weight: float = 0.0,
                   input_perturbation: float = 0.0) -> torch.Tensor:
    """Mean-squared denoising error for a batch of images in [-1, 1].

    `class_labels` (with the null label where dropped) conditions a class-conditional
    UNet; unconditional UNets are called without it. `snr_gamma` weights each image's error
    by `min_snr_weights` instead of equally; `multiscale_weight` adds `multiscale_error`.
    `input_perturbation` noises the input with `noise + input_perturbation * extra` while the
    target stays `noise` (Ning et al. 2023, diffusers' `--input_perturbation`): at sampling time
    the network sees its own slightly wrong images, and training on perturbed inputs narrows
    that gap (exposure bias). Its draw comes last, so 0 leaves every other draw as before.
    All randomness comes from `generator` (a CPU generator, so the draws are the same
    on every device type) which makes a step a pure function of its inputs.
    """
    batch = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(clean.device)
    input_noise = noise
    if input_perturbation:
        extra = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)
        input_noise = noise + input_perturbation * extra
    noisy = scheduler.add_noise(clean, input_noise, timesteps)
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
    if snr_gamma is None and not multiscale_weight:
        return F.mse_loss(prediction.float(), target.float())
    error = prediction.float() - target.float()
    per_image = error.square().mean(dim=(1, 2, 3))
    if multiscale_weight:
        per_image = per_image + multiscale_weight * multiscale_error(error)
    if snr_gamma is None:
        return per_image.mean()
    return (per_image * min_snr_weights(scheduler, timesteps, snr_gamma).to(per_image.device)).mean()


def multiscale_error(error: torch.Tensor) -> torch.Tensor:
    """Per image, the mean over the pooling factors k = 2, 4, ... that divide the image
    size of k² x the mean squared error after k x k average pooling.

    Why: in the plain loss an image's mean colour is 3 numbers among 3·H·W, so a short
    fine-tune barely moves what the pretrained prior says about it; on ph2-dev 15% of the
    samples kept a mean colour no real patch has (blue or green above red), after 1,500
    steps as after 4,500. Pooling the error before squaring weighs each coarser scale as
    much as the full resolution (k² undoes the 1/k² by which pooling shrinks white noise),
    as in the multiscale loss of Hoogeboom et al. 2023 ("simple diffusion"); at a power-of-
    two size the last scale is the mean colour itself. Measured (BENCHMARKS.md): weight
    0.25 cut those samples to 6% at the same KID, but lowered recall 0.34 -> 0.28.
    """
    size = min(error.shape[-2:])
    scales = [2 ** p for p in range(1, size.bit_length()) if size % 2 ** p == 0]
    if not scales:
        return torch.zeros(error.shape[0], device=error.device)
    return torch.stack([k * k * F.avg_pool2d(error, k).square().mean(dim=(1, 2, 3)) for k in scales]).mean(dim=0)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"), as diffusers' train_text_to_image.py computes them.

    With SNR(t) = ᾱ_t / (1 - ᾱ_t), the uniform ε-loss gives the nearly clean, high-SNR
    timesteps as much weight as the ones that decide an image's content; min-SNR caps each
    timestep's weight in x0 terms at γ: min(SNR, γ) for an x0 target, divided by SNR for
    ε and by SNR + 1 for v (their errors are SNR and SNR + 1 times x0's error).
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)[timesteps.cpu()]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    weights = snr.clamp(max=gamma)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1.0)
    return weights.float()


def augment(images_uint8: torch.Tensor, generator: torch.Generator, augmentation: Augmentation) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1], in seeded orientations (`Augmentation`).

    Only flips and quarter turns: they keep the cached pixel grid (no resampling blur),
    unlike random crops or free rotations of an already-cropped image. `hflip` draws
    exactly what it always drew, so runs made before `dihedral` existed resume bit-exactly.
    """
    images = images_uint8.float().div_(127.5).sub_(1.0)
    augmentation = Augmentation(augmentation)
    if augmentation is Augmentation.DIHEDRAL:
        return random_orientations(images, generator)
    if augmentation is Augmentation.HFLIP:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images[flip.to(images.device)] = images[flip.to(images.device)].flip(-1)
    return images
