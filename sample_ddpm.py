r"""Generate synthetic lesion images from a fine-tuned DDPM (research use only).

    accelerate launch sample_ddpm.py --model_dir runs/melanoma --num_images 5900 --output_dir out/melanoma

Image i depends only on the model, --seed, i and the sampler settings (including
--batch_size), so any split across processes (`accelerate launch`) or jobs (`--shard K/N`)
and any restart after a kill give the same bytes. Rerun the same command to resume.
"""

from __future__ import annotations

import argparse

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.distributed import run_command, same_on_every_process
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.sample_config import SampleConfig


def main(argv: list[str] | None = None) -> int:
    def sample() -> None:
        with same_on_every_process():  # the same command line on every process
            cfg = parse_config(SampleConfig, argv, parser=argparse.ArgumentParser(
                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
        generate(cfg)

    return run_command(sample)


if __name__ == "__main__":
    raise SystemExit(main())
