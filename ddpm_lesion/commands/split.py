"""`ddpm-lesion split`: a patient-level train/val/test split (`ddpm_lesion.balance.split`)."""

from __future__ import annotations

import argparse

from ddpm_lesion.balance.split import SplitConfig, split_labels
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, SplitConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SplitConfig, args)
    print(split_labels(cfg).to_text())
    return 0
