"""`ddpm-lesion distill`: a few-step sampler by progressive distillation (`ddpm_lesion.train.distill`)."""

from __future__ import annotations

import argparse

from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args
from ddpm_lesion.train.distill import DistillConfig, distill


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Example: ddpm-lesion distill --model_dir runs/melanoma --train_data_dir ISIC/train "
                     "--labels_csv ISIC/train.csv --label_filter target=1 --output_dir runs/melanoma-4step")
    add_dataclass_arguments(parser, DistillConfig)


def run(args: argparse.Namespace) -> int:
    distill(config_from_args(DistillConfig, args))
    return 0
