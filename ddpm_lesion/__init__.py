"""ddpm-lesion: fine-tune pretrained pixel-space DDPMs on rare lesion classes and
generate synthetic images that are reproducible, auditable and never pass for real.

Research use only; never clinical.
"""

__version__ = "0.1.0"
