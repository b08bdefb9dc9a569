"""The file names of the folders the commands write, defined once.

A training run folder is read back by sampling, distillation, `pick-sampler`, `balance` and
the checkpoint code; a sampling output folder by `evaluate`, `balance` and `utility`. Each
name lives here so that a writer and its readers can never disagree, and so that a reader in
a low layer (evaluate) needs no import from the stage that writes the folder (sample).
"""

# A training run folder (`train_ddpm.py --output_dir`); its top is the final EMA pipeline
# (diffusers' model_index.json, unet/, scheduler/), as diffusers' examples leave it.
TRAIN_CONFIG = "train_config.yaml"
DATA_REPORT_TEXT = "data_report.txt"
DATA_REPORT_JSON = "data_report.json"
METRICS_CSV = "metrics.csv"
LOSS_PLOT = "loss.png"
SAMPLES_DIR = "samples"
VALIDATION_CSV = "validation.csv"
VALIDATION_PLOT = "validation.png"
BEST_CHECKPOINT = "best_checkpoint.json"
MODEL_CARD = "README.md"
BASE_MODEL = "base_model.json"
WANDB_RECORD = "wandb.json"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_STATE = "trainer_state.json"
CHECKPOINT_PIPELINE = "pipeline"

# Beside any pipeline: what it was conditioned on, and the sampler to use with it.
CLASS_LABELS = "class_labels.json"
PICKED_SAMPLER = "sampler.json"
DISTILLED = "distilled.json"

# A distillation folder (`ddpm-lesion distill --output_dir`).
DISTILL_CONFIG = "distill_config.yaml"
DISTILL_ROUNDS_DIR = "rounds"
DISTILL_LOSSES = "losses.csv"

# A `pick-sampler` work folder.
PICK_SAMPLER_CONFIG = "pick_sampler_config.yaml"

# A sampling output folder (`sample_ddpm.py --output_dir`).
SAMPLE_CONFIG = "sample_config.yaml"
SAMPLE_IMAGES_DIR = "individual"
SAMPLE_GRIDS_DIR = "grids"
SAMPLE_MANIFEST = "manifest.csv"
SAMPLE_REJECTED = "rejected.csv"
