"""ddpm-lesion: fine-tune pretrained pixel-space DDPMs on rare lesion classes and
generate synthetic images that are reproducible, auditable and never pass for real.

Research use only; never clinical.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`ddpm_lesion.is_synthetic(path)` without making `import ddpm_lesion` load PIL, torch
    or diffusers."""
    if name == "is_synthetic":
        from ddpm_lesion.provenance import is_synthetic

        return is_synthetic
    raise AttributeError(f"module 'ddpm_lesion' has no attribute {name!r}")
