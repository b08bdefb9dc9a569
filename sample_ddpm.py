r"""Generate synthetic lesion images from a fine-tuned DDPM (research use only).

    accelerate launch sample_ddpm.py --model_dir runs/melanoma --num_images 5900 --output_dir out/melanoma

Image i depends only on the model, --seed, i and the sampler settings (including
--batch_size), so any split across processes (`accelerate launch`) or jobs (`--shard K/N`)
and any restart after a kill give the same bytes. Rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.sample_config import SampleConfig


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(SampleConfig, argv, parser=argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
        generate(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
