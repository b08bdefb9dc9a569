"""`ddpm-lesion pick-sampler`: the fewest sampling steps as good as DDPM-50 (`ddpm_lesion.sample.pick_sampler`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args
from ddpm_lesion.sample.pick_sampler import PickSamplerConfig, pick_sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, PickSamplerConfig)


def run(args: argparse.Namespace) -> int:
    record = pick_sampler(config_from_args(PickSamplerConfig, args))
    print(f"chosen: {record['scheduler']}, {record['num_inference_steps']} steps "
          f"({record['speed_up_vs_reference']:.2f}x fewer network calls than {record['reference']['setting']}); "
          f"written to {Path(record['model']) / run_files.PICKED_SAMPLER}, which sample_ddpm.py now uses by default. "
          f"Report: {record['report']}")
    return 0
