"""`ddpm-lesion pick-sampler`: the fewest sampling steps as good as DDPM-50 (`ddpm_lesion.sample.pick_sampler`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_lesion.core import run_files, wandb_review
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args, to_plain_dict
from ddpm_lesion.sample.pick_sampler import PickSamplerConfig, pick_sampler

SETTING_COLUMNS = ["setting", "network_calls_per_image", "kid", "kid_ci_low", "kid_ci_high",
                   "paired_difference", "chosen"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, PickSamplerConfig)
    wandb_review.add_arguments(parser, "the KID of every setting and the choice")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(PickSamplerConfig, args)
    to_wandb = wandb_review.wanted(args.report_to)
    record = pick_sampler(config)
    if to_wandb:
        log_to_wandb(record, to_plain_dict(config), args.tracker_project_name)
    print(f"chosen: {record['scheduler']}, {record['num_inference_steps']} steps "
          f"({record['speed_up_vs_reference']:.2f}x fewer network calls than {record['reference']['setting']}); "
          f"written to {Path(record['model']) / run_files.PICKED_SAMPLER}, which sample_ddpm.py now uses by default. "
          f"Report: {record['report']}")
    return 0


def setting_rows(record: dict) -> list[list]:
    """One row per measured setting (the reference first), flagging the chosen one."""
    chosen = f"{record['scheduler']}:{record['num_inference_steps']}"
    return [[entry["setting"], entry["network_calls_per_image"], entry["kid"]["mean"], entry["kid"]["ci_low"],
             entry["kid"]["ci_high"], entry.get("paired_difference", {}).get("mean"), entry["setting"] == chosen]
            for entry in [record["reference"], *record["candidates"]]]


def log_to_wandb(record: dict, config: dict, project: str | None) -> None:
    """A `pick-sampler` run in the model's group: the model it measured, every setting's KID
    as a table, the KID-against-steps plot and the choice."""
    wandb_review.log_command_run(
        wandb_review.JobType.PICK_SAMPLER, project, wandb_review.group_of(record["model"]), config,
        models=(record["model"],),
        scalars={"chosen/num_inference_steps": record["num_inference_steps"],
                 "chosen/speed_up_vs_reference": record["speed_up_vs_reference"]},
        summary={"chosen/scheduler": record["scheduler"]},
        tables={"settings/table": (SETTING_COLUMNS, setting_rows(record))},
        images={"kid_vs_steps": Path(record["report"]).parent / "kid_vs_steps.png"})
