"""The loss's min-SNR-γ and multiscale weightings and the training augmentations, checked against
computations written out independently of the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lesion.train.losses import Augmentation, augment, diffusion_loss, min_snr_weights, multiscale_error


class Predicts(torch.nn.Module):
    """A network whose prediction is `rule(noisy)`: zeros err by the whole target; the input
    itself shows in the error exactly what the network was shown."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, noisy, timesteps):
        return type("Out", (), {"sample": self.rule(noisy)})


def hand_snr(t: int) -> float:
    """SNR(t) of diffusers' default linear schedule (betas 1e-4 .. 0.02 over 1000 steps), from numpy."""
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t]
    return alpha_bar / (1.0 - alpha_bar)


@pytest.mark.parametrize("prediction_type, divide_by", [("epsilon", lambda s: s), ("v_prediction", lambda s: s + 1),
                                                        ("sample", lambda s: 1.0)])
def test_min_snr_weights_match_a_hand_computation(prediction_type, divide_by):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    timesteps = torch.tensor([0, 100, 300, 999])
    expected = [min(hand_snr(t), 5.0) / divide_by(hand_snr(t)) for t in timesteps.tolist()]
    # rel 1e-3: the scheduler keeps ᾱ in float32, and 1 - ᾱ_0 = 1e-4 keeps only ~4 digits of it
    assert min_snr_weights(scheduler, timesteps, 5.0).tolist() == pytest.approx(expected, rel=1e-3)
    if prediction_type == "epsilon":  # SNR(999) ~ 4e-5 < 5: uncapped, weight 1; SNR(0) ~ 1e4: weight 5/SNR
        assert expected[-1] == pytest.approx(1.0) and expected[0] == pytest.approx(5.0 / hand_snr(0))


def test_snr_weighted_loss_is_the_weighted_mean_of_per_image_errors():
    """A network that predicts zeros errs by the whole target; the weighted loss must be
    mean_i(w_i * mean(target_i²)) with the noise and timesteps the generator gives."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.rand(4, 3, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(11)
    noise = torch.randn(clean.shape, generator=generator)
    t = torch.randint(0, 1000, (4,), generator=generator)
    weights = [min(hand_snr(i), 2.0) / hand_snr(i) for i in t.tolist()]
    expected = np.mean([w * float((n ** 2).mean()) for w, n in zip(weights, noise)])
    loss = diffusion_loss(Predicts(torch.zeros_like), scheduler, clean, torch.Generator().manual_seed(11), snr_gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    plain = diffusion_loss(Predicts(torch.zeros_like), scheduler, clean, torch.Generator().manual_seed(11))
    assert plain.item() == pytest.approx(float((noise ** 2).mean()), rel=1e-6)


def block_means(image: np.ndarray, k: int) -> np.ndarray:
    """Means of the k x k blocks of a (C, H, W) array, by explicit loops."""
    c, h, w = image.shape
    return np.array([[[image[ch, i:i + k, j:j + k].mean() for j in range(0, w, k)] for i in range(0, h, k)]
                     for ch in range(c)])


def hand_multiscale(error: torch.Tensor) -> list[float]:
    """Per 8x8 image: the mean over k = 2, 4, 8 of k² x the mean square of its k x k block means."""
    return [np.mean([k * k * (block_means(e, k) ** 2).mean() for k in (2, 4, 8)]) for e in error.double().numpy()]


def test_multiscale_error_matches_block_means_written_out():
    error = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert multiscale_error(error).tolist() == pytest.approx(hand_multiscale(error), rel=1e-5)


def test_multiscale_error_weighs_a_colour_cast_by_the_pixel_count_and_white_noise_like_the_plain_loss():
    # A constant error c on 8x8: pooling keeps c at every scale, so scale k adds k²c²:
    # (4 + 16 + 64) / 3 x c². White noise: each pooled scale's k² x MSE has the noise's variance.
    cast = torch.full((1, 3, 8, 8), 0.1)
    assert multiscale_error(cast).item() == pytest.approx((4 + 16 + 64) / 3 * 0.01, rel=1e-5)
    noise = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert multiscale_error(noise).mean().item() == pytest.approx(1.0, abs=0.05)


def test_multiscale_loss_adds_its_weight_times_the_multiscale_error_to_the_plain_loss():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    expected = float((noise ** 2).mean()) + 0.5 * float(np.mean(hand_multiscale(noise)))
    loss = diffusion_loss(Predicts(torch.zeros_like), scheduler, clean, torch.Generator().manual_seed(3), multiscale_weight=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_input_perturbation_noises_the_input_but_not_the_target(gamma):
    """Error of a network that echoes its input, written out with numpy and the schedule's
    own ᾱ_t: sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·(ε + γ·ξ) - ε, ξ drawn after ε and t."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.rand(3, 3, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(clean.shape, generator=generator).numpy().astype(np.float64)
    t = torch.randint(0, 1000, (3,), generator=generator).numpy()
    extra = torch.randn(clean.shape, generator=generator).numpy().astype(np.float64) if gamma else 0.0
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t][:, None, None, None]
    echoed = np.sqrt(alpha_bar) * clean.numpy() + np.sqrt(1 - alpha_bar) * (noise + gamma * extra)
    loss = diffusion_loss(Predicts(lambda noisy: noisy), scheduler, clean, torch.Generator().manual_seed(5), input_perturbation=gamma)
    assert loss.item() == pytest.approx(float(((echoed - noise) ** 2).mean()), rel=1e-4)


def test_hflip_draws_what_the_flip_only_augmentation_always_drew():
    """Runs started before `--augmentation` existed must resume bit-exactly."""
    images = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    flip = torch.rand(8, generator=torch.Generator().manual_seed(5)) < 0.5
    expected = images.float() / 127.5 - 1.0
    expected[flip] = expected[flip].flip(-1)
    assert torch.equal(augment(images, torch.Generator().manual_seed(5), Augmentation.HFLIP), expected)
    assert torch.equal(augment(images, torch.Generator().manual_seed(5), Augmentation.NONE), images.float() / 127.5 - 1)


def test_dihedral_gives_each_image_one_of_its_8_orientations():
    images = torch.randint(0, 256, (64, 3, 6, 6), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), "dihedral")
    seen = set()
    for image, transformed in zip(images.float() / 127.5 - 1.0, out):
        variants = [torch.rot90(image, k, (1, 2)) for k in range(4)]
        variants += [v.flip(2) for v in variants]
        seen.add(next(i for i, v in enumerate(variants) if torch.equal(transformed, v)))
    assert seen == set(range(8))
