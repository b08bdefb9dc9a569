"""`ddpm-lesion evaluate`: are the synthetic images good, diverse and not copies? (`ddpm_lesion.evaluate.audit`)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.config import add_dataclass_arguments, config_from_args, to_plain_dict
from ddpm_lesion.evaluate.audit import EvalConfig, evaluate_folders
from ddpm_lesion.evaluate.report import log_to_wandb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", type=Path, required=True, help="Real images (ideally held out from training).")
    parser.add_argument("--synthetic", type=Path, required=True, help="Synthetic images to evaluate.")
    parser.add_argument("--output_dir", type=Path, required=True, help="Where metrics.json, report.html, ... go.")
    parser.add_argument("--train", type=Path, default=None, help="The fine-tuning images, for the copy check.")
    wandb_review.add_arguments(parser, "the metrics, pictures and closest pairs")
    parser.add_argument("--log_images", type=int, default=64,
                        help="With --report_to wandb: closest synthetic/training pairs in the review table "
                             "(default: 64).")
    add_dataclass_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(EvalConfig, args)
    to_wandb = wandb_review.wanted(args.report_to)
    result = evaluate_folders(args.real, args.synthetic, args.train, config, args.output_dir)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if to_wandb:
        log_to_wandb(result, args.output_dir, to_plain_dict(config), args.synthetic, args.train,
                     args.tracker_project_name, args.log_images)
    primary = result["primary"]
    print(f"KID ({primary['feature_space']}) = {primary['value']:.5f} "
          f"[{primary['ci_low']:.5f}, {primary['ci_high']:.5f}]")
    if result["memorization"]:
        memo = result["memorization"]
        print(f"near copies: {memo['n_near_copies']} of {memo['n_synthetic']} ({100 * memo['copy_rate']:.1f}%)")
    print(f"report: {args.output_dir / 'report.html'}")
    return 0
