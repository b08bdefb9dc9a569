"""UNet architectures to train from scratch (`--model_config`), when no pretrained checkpoint fits.

Fine-tuning a pretrained DDPM is the point of this tool; these exist for the case where no
checkpoint has a usable size or licence. A preset is a plain `UNet2DModel` config, so a run
trained from one is an ordinary diffusers pipeline. A JSON file of any `UNet2DModel` config
(diffusers' own `config.json`, or a hand-written subset of its keys) works the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import UNet2DModel

from ddpm_lesion.core.errors import UserError

# Attention sits at the 16x16 feature map in every preset, as in Ho et al.'s DDPM models.
PRESETS: dict[str, dict[str, Any]] = {
    # The origin's 64 px UNet: 101.1 M parameters, 4 levels (64, 32, 16, 8 px).
    "ddpm-64": dict(sample_size=64, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                    down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                    attention_head_dim=64),
    # google/ddpm-ema-church-256's widths at 128 px, 6 levels (128 ... 4 px), with its attention
    # block one level up, so that it sits at 16x16 again (at 128 px church-256's lands on 8x8);
    # that level is 256 wide, hence 109.7 M parameters instead of 113.7 M.
    "ddpm-128": dict(sample_size=128, block_out_channels=[128, 128, 256, 256, 512, 512], layers_per_block=2,
                     down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                       "DownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D",
                                     "UpBlock2D"],
                     attention_head_dim=64),
    # The bundled demo model's shape: 1.1 M parameters, trains at 32 px on a laptop CPU.
    "cpu-small": dict(sample_size=32, block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=8,
                      down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], attention_head_dim=8),
}

FROM_SCRATCH_WARNING = (
    "trained from scratch (random initial weights, no pretrained checkpoint). A few hundred images are far "
    "too few to learn a diffusion model from scratch: it will memorise them, and its samples will be near "
    "copies of training images (`ddpm-lesion evaluate --train ...` shows it). Prefer fine-tuning a pretrained "
    "checkpoint (README: Pretrained starting points)."
)


def unet_config(spec: str) -> tuple[dict[str, Any], str]:
    """The `UNet2DModel` config named by `spec` (a preset name or a JSON file) and a short
    description of where it came from."""
    if spec in PRESETS:
        return dict(PRESETS[spec]), f"preset {spec}"
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--model_config {spec}: neither a preset ({', '.join(PRESETS)}) nor a JSON file.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--model_config {path} is not valid JSON ({err}). Give a UNet2DModel config.json, "
                        f"e.g. the unet/config.json of a diffusers pipeline.") from None
    if not isinstance(config, dict):
        raise UserError(f"--model_config {path} holds a JSON {type(config).__name__}, not a UNet2DModel config object.")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"--model_config {path} describes a {config['_class_name']}; only UNet2DModel "
                        "(pixel-space, unconditional) configs can be trained here.")
    return config, f"config file {path}"


def unet_from_config(spec: str) -> UNet2DModel:
    """A randomly initialised UNet (torch's default init, seeded by the caller) for `spec`."""
    config, origin = unet_config(spec)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in UNet2DModel._get_init_keys(UNet2DModel))
    if unknown:
        raise UserError(f"--model_config {spec}: unknown UNet2DModel option(s) {', '.join(unknown)} in the {origin}.")
    try:
        return UNet2DModel.from_config(config)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise UserError(f"--model_config {spec}: the {origin} does not build a UNet2DModel "
                        f"({type(err).__name__}: {err}).") from None


def parameter_count(unet: UNet2DModel) -> int:
    return sum(p.numel() for p in unet.parameters())
