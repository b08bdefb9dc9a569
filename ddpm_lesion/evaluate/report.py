"""The evaluation report: `metrics.json`, `nearest_neighbours.csv`, two PNGs and one
self-contained `report.html` (every picture embedded as base64, so the file can be mailed
or archived alone). Every file is written atomically. Optionally the same numbers and
pictures go to Weights & Biases.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.figures import figure_png, html_img, pyplot
from ddpm_lesion.core.fileio import write_bytes_atomic, write_text_atomic
from ddpm_lesion.core.grids import make_grid
from ddpm_lesion.data.evaluation_sets import ImageSet
from ddpm_lesion.evaluate import review_tables
from ddpm_lesion.evaluate.copy_detection import CopyAudit

GRID_IMAGES = 36
GALLERY_PAIRS = 16
CSV_COLUMNS = ["synthetic_file", "nearest_train_file", "pixel_distance", "copy_threshold", "feature_distance",
               "nearest_train_file_by_feature", "near_copy"]


def grid_png(pixels: np.ndarray, columns: int = 6) -> bytes:
    """The first `GRID_IMAGES` images tiled on white, as PNG bytes."""
    buffer = io.BytesIO()
    make_grid(list(pixels[:GRID_IMAGES]), ncols=columns, fill=(255, 255, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def gallery_png(synthetic: ImageSet, train: ImageSet, audit: CopyAudit) -> bytes:
    """The `GALLERY_PAIRS` closest synthetic/training pairs, closest first, each titled
    with its pixel distance and flagged when it is a near copy."""
    plt = pyplot()
    order = np.argsort(audit.closeness, kind="stable")[:GALLERY_PAIRS]
    columns = 4
    rows = -(-len(order) // columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(2 * columns * 1.3, rows * 1.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for slot, s in enumerate(order):
        r, c = divmod(slot, columns)
        t = audit.nearest_index[s]
        flag = " COPY" if audit.near_copy[s] else ""
        axes[r, 2 * c].imshow(synthetic.pixels[s])
        axes[r, 2 * c].set_title(f"#{slot + 1} synth{flag}\nd={audit.pixel_distance[s]:.3f}", fontsize=7,
                                 color="red" if flag else "black")
        axes[r, 2 * c + 1].imshow(train.pixels[t])
        axes[r, 2 * c + 1].set_title(f"train\n{train.names[t][-18:]}", fontsize=7)
    return figure_png(figure)


def histogram_png(audit: CopyAudit, real_vs_train: np.ndarray | None) -> bytes:
    """Nearest-neighbour alignment distances: train-vs-other-train, synthetic-vs-train and,
    when a held-out real set is given, real-vs-train, with the (median) copy threshold."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7, 3.5))
    series = [("train vs other train", audit.train_nn_distance), ("synthetic vs train", audit.pixel_distance)]
    if real_vs_train is not None:
        series.append(("held-out real vs train", real_vs_train))
    series = [(label, values) for label, values in series if len(values)]
    top = max(float(values.max()) for _, values in series)
    bins = np.linspace(0.0, max(top, audit.threshold) * 1.05, 40)
    for label, values in series:
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{label} (n={len(values)})")
    ax.axvline(audit.threshold, color="red", linestyle="--", label=f"copy threshold {audit.threshold:.3f} (median)")
    ax.set_xlabel("nearest-neighbour alignment distance (1 - cos, low-passed 32x32 RGB, best flip/rotation/shift)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return figure_png(figure)


def neighbours_csv(synthetic: ImageSet, train: ImageSet, audit: CopyAudit) -> str:
    """One row per synthetic image, closest pairs (relative to the threshold that applied to
    their training image) first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in np.argsort(audit.closeness, kind="stable"):
        has_feature = audit.feature_distance is not None
        writer.writerow([
            synthetic.names[s], train.names[audit.nearest_index[s]], f"{audit.pixel_distance[s]:.6f}",
            f"{audit.applied_threshold[s]:.6f}", f"{audit.feature_distance[s]:.6f}" if has_feature else "",
            train.names[audit.feature_nearest_index[s]] if has_feature else "",
            int(audit.near_copy[s]),
        ])
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def metrics_table_html(metrics: dict) -> str:
    """One row per (feature space, metric): value, interval, N and the interval's meaning."""
    rows = []
    for space, entry in metrics["feature_spaces"].items():
        for name, m in entry["metrics"].items():
            interval = f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" if m.get("ci_low") is not None else "n/a"
            rows.append(
                f"<tr><td>{html.escape(space)}</td><td>{html.escape(name)}</td><td><b>{_fmt(m['value'])}</b></td>"
                f"<td>{interval}</td><td>{m['n_real']} / {m['n_synthetic']}</td>"
                f"<td>{html.escape(m.get('note', ''))}</td></tr>")
    return ("<table><tr><th>feature space</th><th>metric</th><th>value</th><th>interval</th>"
            "<th>N real / synthetic</th><th>notes</th></tr>" + "".join(rows) + "</table>")


def report_html(metrics: dict, pictures: dict[str, bytes]) -> str:
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in metrics["warnings"])
    inputs = "".join(
        f"<tr><td>{role}</td><td>{html.escape(s['folder'])}</td><td>{s['n']}</td><td>{s['skipped_unreadable']}</td>"
        f"<td>{html.escape(json.dumps(s['unresolved_csv_ids']) if s['unresolved_csv_ids'] else '')}</td>"
        f"<td>{s['marked_synthetic']}</td></tr>"
        for role, s in metrics["inputs"].items() if s is not None)
    memo = metrics.get("memorization")
    if memo:
        memo_html = (
            f"<p>Near copies: <b>{memo['n_near_copies']} of {memo['n_synthetic']} synthetic images "
            f"({100 * memo['copy_rate']:.1f}%)</b> against {memo['n_train']} training images. "
            f"Distance: {html.escape(memo['pixel_distance'])}. Threshold {memo['threshold']:.4f} "
            f"({html.escape(memo['threshold_source'])}). Feature distance: {html.escape(memo['feature_space'])}.</p>"
            + (f"<p>Held-out real vs train, same test: {memo['real_vs_train']['n_near_copies']} of "
               f"{memo['real_vs_train']['n']} flagged (should be about 0; more means the real set overlaps the "
               "training set).</p>" if memo.get("real_vs_train") else "")
            + "<h3>Closest synthetic / training pairs</h3>" + html_img(pictures["nearest_neighbours.png"], "gallery")
            + "<h3>Nearest-neighbour distances</h3>" + html_img(pictures["nn_distances.png"], "histogram")
            + "<p>Per-image results: nearest_neighbours.csv</p>")
    else:
        memo_html = "<p>Not checked: no --train folder was given.</p>"
    primary = metrics["primary"]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ddpm-lesion evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}.warn{{background:#fff3cd;padding:.5em}}
.side{{display:flex;gap:2em}}img{{max-width:100%}}</style></head><body>
<h1>Synthetic lesion images: evaluation</h1>
<p>Research use only. Synthetic images are not real patients and must never be used clinically.</p>
<p>Primary metric: <b>KID = {_fmt(primary['value'])}</b> [{_fmt(primary['ci_low'])}, {_fmt(primary['ci_high'])}]
in {html.escape(primary['feature_space'])} features (lower is better).</p>
{f'<div class="warn"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else ''}
<h2>Inputs</h2><table><tr><th>set</th><th>folder</th><th>images used</th><th>unreadable, skipped</th>
<th>CSV ids not used</th><th>marked synthetic=true</th></tr>{inputs}</table>
<h2>Metrics</h2>{metrics_table_html(metrics)}
<p>KID: unbiased MMD² (Bińkowski et al. 2018), interval = 2.5-97.5th percentile of the subset estimates.
Precision/recall (Kynkäänniemi et al. 2019), coverage (Naeem et al. 2020): Wilson 95% interval over the counted
images, which ignores the uncertainty of the k-NN radii. FID and density have no interval. Diversity: mean
pairwise feature distance, synthetic vs real (ratio near 1 is good; far below 1 suggests mode collapse).</p>
<h2>Real vs synthetic</h2><div class="side"><div><h3>Real ({metrics['inputs']['real']['n']})</h3>
{html_img(pictures['real_grid.png'], 'real')}</div><div><h3>Synthetic ({metrics['inputs']['synthetic']['n']})</h3>
{html_img(pictures['synthetic_grid.png'], 'synthetic')}</div></div>
<h2>Memorisation</h2>{memo_html}
</body></html>
"""


def write_report(output_dir: Path, metrics: dict, real: ImageSet, synthetic: ImageSet, train: ImageSet | None,
                 audit: CopyAudit | None, real_vs_train: np.ndarray | None) -> None:
    """Write every report file into `output_dir`: the pictures as PNG files too, so a
    tracker or a person can pick them up alone."""
    pictures = {"real_grid.png": grid_png(real.pixels), "synthetic_grid.png": grid_png(synthetic.pixels)}
    if audit is not None and train is not None:
        pictures["nearest_neighbours.png"] = gallery_png(synthetic, train, audit)
        pictures["nn_distances.png"] = histogram_png(audit, real_vs_train)
        write_text_atomic(output_dir / "nearest_neighbours.csv", neighbours_csv(synthetic, train, audit))
    for name, png in pictures.items():
        write_bytes_atomic(output_dir / name, png)
    write_text_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(output_dir / "report.html", report_html(metrics, pictures))


def log_to_wandb(metrics: dict, output_dir: Path, config: dict, synthetic: Path, train: Path | None,
                 project: str | None = None, log_images: int = 64) -> None:
    """Log the flat numbers, the report's PNGs and the closest synthetic/training pairs as a
    table to a run of job type `evaluate`; when the synthetic set is a `sample_ddpm.py`
    folder, the run joins its model's group and declares the samples it judged (honours
    WANDB_MODE=offline)."""
    flat = {f"{space}/{name}": m["value"] for space, entry in metrics["feature_spaces"].items()
            for name, m in entry["metrics"].items() if m["value"] is not None}
    if metrics.get("memorization"):
        flat["memorization/copy_rate"] = metrics["memorization"]["copy_rate"]
    images = {f"images/{path.stem}": wandb_review.image_cell(path) for path in sorted(output_dir.glob("*.png"))}
    samples = wandb_review.samples_folder_of(synthetic)
    artifact, group = wandb_review.samples_artifact(samples) if samples is not None else (None, None)
    run = wandb_review.start_run(wandb_review.JobType.EVALUATE, project, group, config)
    if artifact is not None:
        wandb_review.declare_input(run, artifact)
    pairs = output_dir / "nearest_neighbours.csv"
    if train is not None and pairs.is_file():
        rows = review_tables.pair_rows(pairs, Path(metrics["inputs"]["synthetic"]["folder"]), Path(train), log_images)
        images["memorization/pairs"] = wandb_review.table(review_tables.PAIR_COLUMNS, rows)
    run.log({**flat, **images})
    run.finish()
