"""Fine-tune a pretrained DDPM (diffusers UNet2DModel + scheduler) on a folder of lesion images.

    accelerate launch train_ddpm.py --train_data_dir ISIC/images --labels_csv ISIC/labels.csv \
        --label_filter target=1 --pretrained_model_name_or_path google/ddpm-ema-church-256 \
        --resolution 128 --output_dir runs/melanoma --use_ema --mixed_precision bf16

`python train_ddpm.py ...` works too on one device. Research use only; never clinical.
"""

import sys

from ddpm_lesion.core.config import parse_config
from ddpm_lesion.core.distributed import run_command, same_on_every_process
from ddpm_lesion.train.loop import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    def fine_tune() -> None:
        with same_on_every_process():  # the same command line on every process
            cfg = parse_config(TrainConfig, argv, description=__doc__)
        train(cfg)

    return run_command(fine_tune)


if __name__ == "__main__":
    sys.exit(main())
