"""Samplers as pure functions: noise from (seed, index), a scheduler from the model's own
config, and a denoising loop that turns noise into uint8 pixels.

Reproducibility rests on one rule: every random number image `i` ever sees comes from its
own `torch.Generator`, seeded from (seed, i) alone. The initial noise and the per-step
noise of stochastic samplers (DDPM) are drawn from that generator, never from a shared
stream, so the noise of an image does not depend on which other images share its batch,
how many processes there are, or what was generated before. (The network's float
rounding can still depend on the batch composition; `ddpm_lesion.sample.sharding` handles that.)
"""

from __future__ import annotations

import copy
import enum
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    SchedulerMixin,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from ddpm_lesion.model.conditioning import guided_prediction


class SchedulerName(str, enum.Enum):
    """Samplers offered by `--scheduler`. All read the model's training noise schedule;
    they differ in how many network calls they need for a clean image (Ho et al. 2020 DDPM
    needs hundreds; DDIM, Song et al. 2021, ~50; DPM-Solver++, Lu et al. 2022, and UniPC,
    Zhao et al. 2023, ~20) and in whether they inject fresh noise at every step. DDPM and
    SDE-DPM-Solver++ (the stochastic form of DPM-Solver++, Lu et al. 2022 sec. 5) do; the
    fresh noise washes out part of the network's earlier errors, which is why they beat
    the deterministic ODE solvers on a small or briefly trained model, and on one trained
    with input perturbation, whose noise prediction falls short by design: an ODE solver
    keeps what it misses as visible noise and over-saturated colour (BENCHMARKS.md)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    DPMSOLVER_PP = "dpmsolver++"
    SDE_DPMSOLVER_PP = "sde-dpmsolver++"
    UNIPC = "unipc"
    # Variants the literature recommends for few steps, measured per model by pick-sampler.
    # Timestep spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    # are Flawed", table 2): the models' own "leading" spacing starts a 20-step solver at
    # t = 940-950, never at the pure noise t = 999 the initial noise stands for; "trailing" and
    # "linspace" start at 999. DDIM with η > 0 (Song et al. 2021) re-noises part of each
    # step, between DDIM's determinism (η = 0) and DDPM's ancestral sampling (η = 1).
    DDIM_TRAILING = "ddim-trailing"
    DPMSOLVER_PP_TRAILING = "dpmsolver++-trailing"
    SDE_DPMSOLVER_PP_TRAILING = "sde-dpmsolver++-trailing"
    UNIPC_TRAILING = "unipc-trailing"
    DPMSOLVER_PP_LINSPACE = "dpmsolver++-linspace"
    UNIPC_LINSPACE = "unipc-linspace"
    DDIM_ETA_HALF = "ddim-eta0.5"
    DDIM_ETA_07 = "ddim-eta0.7"
    DDIM_ETA_ONE = "ddim-eta1"


# The default sampler of `sample_ddpm.py`, of the training run's sample grids and of its
# checkpoint KID, so the best checkpoint is picked by the images that will be generated.
# Chosen by KID against held-out images (bench/samplers.py, BENCHMARKS.md): on the
# fine-tuned demo model every deterministic solver had 3-7x the KID of DDPM at 50 steps,
# and DDPM itself below 30 steps was measurably worse. A model that tolerates fewer steps
# gets them from `ddpm-lesion pick-sampler`, which measures it (`sampler_choice`).
DEFAULT_SCHEDULER = SchedulerName.DDPM
DEFAULT_STEPS = 50

class StochasticDDIMScheduler(DDIMScheduler):
    """DDIM whose `step` re-noises with the `eta` of its config (diffusers takes η per call,
    which a sampler chosen by name could not carry). The fresh noise comes from the image's
    own generators, like DDPM's."""

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: list[torch.Generator] | torch.Generator | None = None, return_dict: bool = True):
        return super().step(model_output, timestep, sample, eta=self.eta, generator=generator,
                            return_dict=return_dict)


def _stochastic_ddim(eta: float) -> type[StochasticDDIMScheduler]:
    return type(f"StochasticDDIMScheduler{eta:g}", (StochasticDDIMScheduler,), {"eta": eta})


_TRAILING, _LINSPACE = {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"}
_DPM_PP, _SDE_DPM_PP = {"algorithm_type": "dpmsolver++"}, {"algorithm_type": "sde-dpmsolver++"}

# name -> (scheduler class, options that define the sampler beyond the model's config)
_SCHEDULERS: dict[SchedulerName, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    SchedulerName.DDPM: (DDPMScheduler, {}),
    SchedulerName.DDIM: (DDIMScheduler, {}),
    SchedulerName.DPMSOLVER_PP: (DPMSolverMultistepScheduler, _DPM_PP),
    SchedulerName.SDE_DPMSOLVER_PP: (DPMSolverMultistepScheduler, _SDE_DPM_PP),
    SchedulerName.UNIPC: (UniPCMultistepScheduler, {}),
    SchedulerName.DDIM_TRAILING: (DDIMScheduler, _TRAILING),
    SchedulerName.DPMSOLVER_PP_TRAILING: (DPMSolverMultistepScheduler, {**_DPM_PP, **_TRAILING}),
    SchedulerName.SDE_DPMSOLVER_PP_TRAILING: (DPMSolverMultistepScheduler, {**_SDE_DPM_PP, **_TRAILING}),
    SchedulerName.UNIPC_TRAILING: (UniPCMultistepScheduler, _TRAILING),
    SchedulerName.DPMSOLVER_PP_LINSPACE: (DPMSolverMultistepScheduler, {**_DPM_PP, **_LINSPACE}),
    SchedulerName.UNIPC_LINSPACE: (UniPCMultistepScheduler, _LINSPACE),
    SchedulerName.DDIM_ETA_HALF: (_stochastic_ddim(0.5), {}),
    SchedulerName.DDIM_ETA_07: (_stochastic_ddim(0.7), {}),
    SchedulerName.DDIM_ETA_ONE: (_stochastic_ddim(1.0), {}),
}


def make_scheduler(name: SchedulerName | str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler of kind `name` configured from the model's scheduler config.

    `from_config` keeps the betas, number of training steps, prediction type and x0
    clipping the model was trained with; only the sampling algorithm changes.
    """
    scheduler_cls, options = _SCHEDULERS[SchedulerName(name)]
    config = dict(base_config)
    parameters = inspect.signature(scheduler_cls.__init__).parameters
    if config.get("clip_sample") and "clip_sample" not in parameters and "thresholding" in parameters:
        # DDPM/DDIM clip the predicted clean image to [-1, 1] when the model's config says
        # clip_sample (google/ddpm-* do); DPM-Solver++ and UniPC have no clip_sample, and
        # without it a small model's error at t≈T (amplified ~150x in x0) ruins the image.
        # Thresholding with sample_max_value = the clip range is the same clipping.
        options = {**options, "thresholding": True, "sample_max_value": config.get("clip_sample_range", 1.0)}
    return scheduler_cls.from_config(config, **options)


def image_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for image `index` of a run seeded with `seed`.

    Hashing (rather than `seed + index`) keeps runs with nearby seeds from sharing images:
    with addition, image 1 of seed 0 would be image 0 of seed 1.
    """
    digest = hashlib.sha256(f"ddpm-lesion:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image. CPU generators give the same numbers on every machine,
    so the noise of an image is the same on a laptop and on any GPU."""
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, i)) for i in indices]


def initial_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise of `(len(generators), *shape)`, row `k` drawn from `generators[k]`."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW floats -> [0, 255] NHWC uint8.

    `(x + 1) * 127.5` rounded to nearest is the exact inverse of the training
    normalisation `pixel / 127.5 - 1`, so a real image would round-trip unchanged, and it
    spreads [-1, 1] evenly over all 256 levels (diffusers' `x / 2 + 0.5` then `* 255` does
    the same up to float rounding; we keep one formula and document it).
    """
    return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def denoise(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    generators: Sequence[torch.Generator],
    num_inference_steps: int,
    autocast_dtype: torch.dtype | None = None,
    *,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Run the reverse diffusion from `noise` and return uint8 NHWC images on `noise.device`.

    Args:
        unet: the noise-prediction network, already on the device of `noise`.
        scheduler: a template; it is copied, so the caller's object keeps no state and this
            stays a pure function of its inputs.
        noise: `(B, C, H, W)` initial noise on the sampling device.
        generators: one per row of `noise`; stochastic schedulers draw their per-step noise
            from these (diffusers' `randn_tensor` accepts a list), keeping each image's
            randomness its own.
        num_inference_steps: network calls per image.
        autocast_dtype: `torch.float16`/`torch.bfloat16` to run the network under autocast;
            the sampler arithmetic always stays float32.
        class_labels: one class index per row for a class-conditional UNet (None for an
            unconditional one).
        guidance_scale: classifier-free guidance weight for conditional models (see
            `ddpm_lesion.model.conditioning.guided_prediction`); 1 is the plain conditional output.

    Speed without changing what is computed: the autocast context spans the whole loop, so
    the network's weights are cast to `autocast_dtype` once per call rather than once per
    step (autocast caches the casts while its context is open; the scheduler's arithmetic
    is elementwise and not affected by it); the network sees channels_last inputs, the
    layout oneDNN's and cuDNN's fastest convolutions use; and its timesteps are moved to
    the device once, so a step never waits on the host.

    The loop reads nothing back from the device: the scheduler keeps its own timestep
    table on the CPU and the images are synchronised once, by the caller. The one
    host-to-device copy per step is DDPM's fresh noise, drawn from the CPU generators so an
    image's noise is the same on every machine.
    """
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps)
    step_kwargs = {"generator": list(generators)} if "generator" in inspect.signature(scheduler.step).parameters else {}
    model_timesteps = scheduler.timesteps.to(noise.device)
    sample = noise * scheduler.init_noise_sigma
    with torch.inference_mode(), torch.autocast(noise.device.type, dtype=autocast_dtype or torch.float32,
                                                enabled=autocast_dtype is not None):
        for t, model_t in zip(scheduler.timesteps, model_timesteps):
            model_input = scheduler.scale_model_input(sample, t).contiguous(memory_format=torch.channels_last)
            prediction = guided_prediction(unet, model_input, model_t, class_labels, guidance_scale)
            sample = scheduler.step(prediction.float(), t, sample, **step_kwargs).prev_sample
        return to_uint8(sample)
