"""ddpm-lesion: fine-tune pretrained pixel-space DDPMs on rare lesion classes and
generate synthetic images that are reproducible, auditable and never pass for real.

Research use only; never clinical.

Where a module goes: one sub-package per stage of the job, layered so that imports only go
down (import-linter checks it; see `[importlinter]` in setup.cfg):

    commands              the `ddpm-lesion` command line
    balance | utility     balanced training sets; does a classifier gain from them?
    train                 fine-tuning, checkpoints, checkpoint validation, distillation
    sample                samplers, sharded generation, provenance, sampler choice
    model | evaluate      networks and schedules | metrics, features, copy detection
    data                  images and labels in
    core                  errors, file writes, configs, processes, figures

A module belongs to the lowest stage that needs it; code two stages share moves down to the
lower one rather than being imported upwards.
"""

from ddpm_lesion.core.version import __version__

__all__ = ["__version__", "is_synthetic"]


def __getattr__(name: str):
    """`ddpm_lesion.is_synthetic(path)` without making `import ddpm_lesion` load PIL, torch
    or diffusers."""
    if name == "is_synthetic":
        from ddpm_lesion.sample.provenance import is_synthetic

        return is_synthetic
    raise AttributeError(f"module 'ddpm_lesion' has no attribute {name!r}")
