"""What a run records: `metrics.csv` and `loss.png` on disk, and the same numbers and
sample grids in Accelerate's trackers (wandb, tensorboard).

The CSV holds only values that are a pure function of the run's inputs (no timings), so
an interrupted-and-resumed run leaves exactly the file an uninterrupted one would; speed
goes to the progress bar and the trackers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from accelerate import Accelerator
from PIL import Image

from ddpm_lesion.core.figures import figure_png, pyplot
from ddpm_lesion.core.fileio import write_bytes_atomic, write_csv_atomic

METRIC_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "skipped_steps"]


class MetricsLog:
    """Append-only CSV of per-step metrics that can be cut back to a resumed step."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run redoes them, identically."""
        rows = [r for r in self.read() if int(r["step"]) <= step]
        write_csv_atomic(self.path, METRIC_COLUMNS, rows)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({k: row[k] for k in METRIC_COLUMNS})

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def plot_loss(metrics: MetricsLog, out: Path) -> None:
    """`loss.png`: raw loss and a smoothed curve, so a plateau or a blow-up is visible
    at a glance without opening the dashboard."""
    rows = metrics.read()
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    smooth, value = [], loss[0]
    for x in loss:
        value = 0.95 * value + 0.05 * x if x == x else value  # x == x skips NaN
        smooth.append(value)
    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="EMA(0.95)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("denoising MSE")
    ax.set_yscale("log")
    ax.legend()
    write_bytes_atomic(out, figure_png(fig))




def log_image(accelerator: Accelerator, key: str, image: Image.Image, step: int) -> None:
    """Send a picture to whichever trackers are active (each has its own image type)."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({key: wandb.Image(image)}, step=step)
        elif tracker.name == "tensorboard":
            tracker.writer.add_image(key, np.asarray(image), step, dataformats="HWC")


def log_text(accelerator: Accelerator, key: str, text: str) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.run.summary[key] = text
        elif tracker.name == "tensorboard":
            tracker.writer.add_text(key, f"```\n{text}\n```", 0)
