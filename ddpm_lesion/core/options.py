"""Option values several commands share, defined once so a flag means the same everywhere."""

from __future__ import annotations

import enum


class MixedPrecision(str, enum.Enum):
    """Autocast precision of the network. `auto` (sampling, distillation, pick-sampler) is
    resolved per machine by `ddpm_lesion.sample.autotune`: bf16 where the device runs it
    natively, else no; training leaves the choice to Accelerate instead (`accelerate config`),
    so it offers the other three only."""

    AUTO = "auto"
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class ReportTo(str, enum.Enum):
    """Where a command also logs what it writes to disk. Training logs through Accelerate's
    trackers (wandb or tensorboard); the other commands through wandb alone."""

    NONE = "none"
    WANDB = "wandb"
    TENSORBOARD = "tensorboard"


def values(kind: type[enum.Enum], *, without: tuple[enum.Enum, ...] = ()) -> list[str]:
    """The flag choices of an enum, less the members a command does not offer."""
    return [member.value for member in kind if member not in without]
