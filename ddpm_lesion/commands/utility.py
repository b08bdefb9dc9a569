"""`ddpm-lesion utility`: does adding the synthetic images help a classifier? (`ddpm_lesion.utility.comparison`)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args
from ddpm_lesion.utility.comparison import UtilityConfig, run_utility


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels_csv", type=Path, required=True,
                        help="Training labels CSV with a synthetic (0/1) column, as `ddpm-lesion balance` writes.")
    parser.add_argument("--train_data_dir", type=Path, required=True, help="Folder of the real training images.")
    parser.add_argument("--synthetic_data_dir", type=Path, default=None,
                        help="Folder of the synthetic images (default: images/ beside --labels_csv).")
    parser.add_argument("--test_csv", type=Path, required=True,
                        help="Labels CSV of the real, patient-disjoint test images.")
    parser.add_argument("--test_data_dir", type=Path, default=None,
                        help="Folder of the test images (default: --train_data_dir).")
    parser.add_argument("--output_dir", type=Path, required=True, help="Where report.json, report.html, ... go.")
    add_dataclass_arguments(parser, UtilityConfig)
    wandb_review.add_arguments(parser, "every arm's metrics, the ROC curves and the verdict")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(UtilityConfig, args)
    to_wandb = wandb_review.wanted(args.report_to)
    result = run_utility(args.labels_csv, args.train_data_dir, args.test_csv, args.output_dir, config,
                         args.synthetic_data_dir, args.test_data_dir)
    if to_wandb:
        log_to_wandb(result, args.labels_csv, args.output_dir, args.tracker_project_name)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(result["verdict"]["sentence"])
    print(f"report: {args.output_dir / 'report.html'}")
    return 0


METRIC_COLUMNS = ["arm", "metric", "mean", "ci_low", "ci_high"]


def log_to_wandb(result: dict, labels_csv: Path, output_dir: Path, project: str | None) -> None:
    """A `utility` run, grouped with the `balance` run that wrote --labels_csv (its folder's
    name): every arm's metrics as a table, the ROC curves and the verdict."""
    rows = [[arm, metric, value["mean"], value["ci_low"], value["ci_high"]]
            for arm, facts in result["arms"].items() for metric, value in facts["metrics"].items()]
    wandb_review.log_command_run(
        wandb_review.JobType.UTILITY, project, labels_csv.resolve().parent.name, result["config"],
        scalars={f"{arm}/{metric}": value for arm, metric, value, _, _ in rows},
        summary={"verdict": result["verdict"]["sentence"]},
        tables={"metrics/table": (METRIC_COLUMNS, rows)},
        images={"roc": output_dir / "roc.png"})
