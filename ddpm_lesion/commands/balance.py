"""`ddpm-lesion balance`: top up the rare classes with synthetic images (`ddpm_lesion.balance.pipeline`)."""

from __future__ import annotations

import argparse

from ddpm_lesion.balance.pipeline import BalanceConfig, balance
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Options tagged [train_ddpm.py] / [sample_ddpm.py] are passed to fine-tuning / sampling "
                     "unchanged; --seed, --mixed_precision and --report_to apply to both.")
    add_dataclass_arguments(parser, BalanceConfig)


def run(args: argparse.Namespace) -> int:
    balance(config_from_args(BalanceConfig, args))
    return 0
