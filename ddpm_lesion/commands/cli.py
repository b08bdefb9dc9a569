"""The `ddpm-lesion` command: one sub-command per job.

Each sub-command has its own module beside this one (its flags and what it prints; the work
itself is done by the stage package below), which exposes `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their sub-command is chosen, so
`ddpm-lesion --help` stays fast and a heavy optional dependency of one command never
breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": (
        "ddpm_lesion.commands.evaluate",
        "Are the synthetic images good, diverse and not copies of the training images?",
    ),
    "utility": ("ddpm_lesion.commands.utility", "Does adding the synthetic images improve a classifier on real held-out patients?"),
    "balance": ("ddpm_lesion.commands.balance", "Top up the rare classes of a labelled training set with synthetic images."),
    "split": ("ddpm_lesion.commands.split", "Patient-level train/val/test split of a labels CSV, stratified by class."),
    "pick-sampler": ("ddpm_lesion.commands.pick_sampler",
                     "Find the fewest sampling steps that keep a model's DDPM-50 quality; sample_ddpm.py then uses them."),
    "distill": ("ddpm_lesion.commands.distill", "Distil a fine-tuned model into a few-step sampler (progressive distillation)."),
}
# Sub-commands that split their work across the processes of `accelerate launch`; the
# others run on rank 0 alone when launched with several.
MULTI_PROCESS = {"balance"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ddpm-lesion",
        description="Synthetic lesion images from fine-tuned diffusion models (research use only).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = (argv if argv is not None else sys.argv[1:])[:1]
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if chosen == [name]:
            importlib.import_module(module_name).add_arguments(command_parser)
    if chosen and chosen[0] in COMMANDS and _left_to_rank_0(chosen[0]):
        return 0  # before parsing: a usage error or --help is printed by rank 0 alone too
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    from ddpm_lesion.core.distributed import run_command  # imports torch: not for `ddpm-lesion --help`
    return run_command(lambda: module.run(args))


def _left_to_rank_0(command: str) -> bool:
    """True on the processes that leave a one-process sub-command to rank 0 when `accelerate
    launch` started several: each would otherwise do all of the work and write the same files."""
    from ddpm_lesion.core.distributed import global_rank, launched_processes

    if command in MULTI_PROCESS or launched_processes() == 1:
        return False
    if global_rank() == 0:
        print(f"note: ddpm-lesion {command} runs on one process; the other {launched_processes() - 1} "
              "launched process(es) have nothing to do and exited.", file=sys.stderr)
    return global_rank() != 0
