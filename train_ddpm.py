"""Fine-tune a pretrained DDPM (diffusers UNet2DModel + scheduler) on a folder of lesion images.

    accelerate launch train_ddpm.py --train_data_dir ISIC/images --labels_csv ISIC/labels.csv \
        --label_filter target=1 --pretrained_model_name_or_path google/ddpm-ema-church-256 \
        --resolution 128 --output_dir runs/melanoma --use_ema --mixed_precision bf16

`python train_ddpm.py ...` works too on one device. Research use only; never clinical.
"""

import sys

from ddpm_lesion.config import parse_config
from ddpm_lesion.errors import UserError
from ddpm_lesion.training import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_config(TrainConfig, argv, description=__doc__))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
