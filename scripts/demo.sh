#!/usr/bin/env bash
# `make demo`: fine-tune the bundled tiny pretrained DDPM on the bundled melanoma-like
# images, generate synthetic ones, and audit them -- offline, on a CPU, in a few minutes.
# Rerunning it resumes each stage instead of starting over.
set -euo pipefail
PY=${1:-python}
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}

echo "== 1/3 fine-tune (demo/data, class target=1) =="
"$PY" train_ddpm.py \
  --train_data_dir demo/data/images --labels_csv demo/data/labels.csv --label_filter target=1 \
  --pretrained_model_name_or_path demo/pretrained/ddpm-lesion-tiny-32 --resolution 32 \
  --output_dir runs/demo --train_batch_size 16 --max_train_steps 200 --learning_rate 1e-4 \
  --lr_warmup_steps 20 --use_ema --checkpointing_steps 100 --checkpoints_total_limit 2 \
  --save_images_steps 100 --resume_from_checkpoint latest --seed 0

echo "== 2/3 generate =="
"$PY" sample_ddpm.py --model_dir runs/demo --num_images 64 --output_dir out/demo --seed 0

echo "== 3/3 audit: quality, diversity, copies =="
"$PY" -m ddpm_lesion evaluate --real demo/data/images --real_csv demo/data/labels.csv --label_filter target=1 \
  --train demo/data/images --train_csv demo/data/labels.csv \
  --synthetic out/demo/individual --output_dir out/demo/report --resolution 32

echo
echo "Training samples: runs/demo/samples/   loss curve: runs/demo/loss.png"
echo "Generated grids:  out/demo/grids/       manifest: out/demo/manifest.csv"
echo "Audit report:     out/demo/report/report.html"
