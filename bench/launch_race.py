"""Consecutive fresh 2-rank launches of train_ddpm.py: do they all succeed?

    python bench/launch_race.py --launches 20                   # as a user launches
    python bench/launch_race.py --launches 20 --delay 3         # rank 1 held back 3 s after joining
    python bench/launch_race.py --launches 5 --delay 3 --repo /path/to/old/checkout   # the origin

Every launch is `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2
train_ddpm.py` into a new --output_dir, without --resume_from_checkpoint (a new user's first
command): a tiny UNet, 8 images at 16 px, 2 steps, a checkpoint and the final pipeline. With
`--delay`, the test-only hook of tests/launch_utils.py (a sitecustomize.py first on
PYTHONPATH) sleeps on one rank right after its process group is joined, which turns the
rank-ordering race of issue 13 from luck into certainty. Reports each launch's exit code and
seconds, the success count, and the median seconds; an unsuccessful launch's `error:` line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo on sys.path)

from tests import launch_utils  # noqa: E402
from tests.helpers import save_tiny_pipeline, write_images  # noqa: E402


def launch_args(base: Path, run: Path) -> list[str]:
    return ["--train_data_dir", str(base / "images"), "--pretrained_model_name_or_path", str(base / "pretrained"),
            "--output_dir", str(run), "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "2",
            "--checkpointing_steps", "2", "--save_images_steps", "1000", "--num_sample_images", "4",
            "--sample_inference_steps", "2", "--use_ema", "--cache_dir", str(base / "cache")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0, help="Seconds the hook holds --delay_rank back (0: no hook).")
    parser.add_argument("--delay_rank", type=int, default=1)
    parser.add_argument("--repo", type=Path, default=common.REPO, help="Checkout whose train_ddpm.py is launched.")
    args = parser.parse_args()
    repo = args.repo.resolve()
    launch_utils.REPO = repo  # script paths and the working folder
    with tempfile.TemporaryDirectory(prefix="launch_race_") as tmp:
        base = Path(tmp)
        write_images(base / "images", 8, size=20)
        save_tiny_pipeline(base / "pretrained")
        env = {"PYTHONPATH": str(repo)}
        if args.delay > 0:
            env = launch_utils.race_hook_env(base / "hook", delay_rank=args.delay_rank, seconds=args.delay)
            env["PYTHONPATH"] = env["PYTHONPATH"].replace(str(common.REPO), str(repo))
        seconds, failures = [], []
        for i in range(args.launches):
            start = time.perf_counter()
            result = launch_utils.run_script("train_ddpm.py", launch_args(base, base / f"run{i}"), num_processes=2,
                                             env=env, timeout=600, cwd=repo)
            seconds.append(time.perf_counter() - start)
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
            if result.returncode != 0:
                failures.append(i)
            print(f"launch {i + 1:2d}: exit {result.returncode}, {seconds[-1]:.1f} s"
                  + (f"  {errors[0][:150]}" if errors else ""), flush=True)
    print(f"\n{args.launches - len(failures)} of {args.launches} fresh 2-rank launches succeeded "
          f"(repo {repo}, delay {args.delay:g} s on rank {args.delay_rank if args.delay > 0 else '-'}); "
          f"median {statistics.median(seconds):.1f} s per launch [min {min(seconds):.1f}, max {max(seconds):.1f}]")


if __name__ == "__main__":
    main()
