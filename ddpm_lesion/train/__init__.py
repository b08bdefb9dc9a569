"""Fine-tuning: the training loop, its loss, batches, checkpoints, trackers, checkpoint validation and
progressive distillation. Imports `sample`, `evaluate`, `model`, `data` and `core`.
"""
