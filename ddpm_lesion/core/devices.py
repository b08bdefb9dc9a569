"""Which torch device a command runs on: one rule for every `--device` flag."""

from __future__ import annotations

import torch

from ddpm_lesion.core.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is the GPU when torch sees one, else the CPU. An explicit CUDA device on a
    machine without one is refused by name, rather than failing later inside a kernel."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch sees no CUDA GPU. Use --device auto or cpu.")
    return torch.device(name)
