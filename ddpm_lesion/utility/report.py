"""The `ddpm-lesion utility` report: report.json, predictions.csv, roc.png and one
self-contained report.html (the ROC picture embedded as base64, so the file travels
alone). Every file is written atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from ddpm_lesion.core.figures import figure_png, html_img, pyplot
from ddpm_lesion.core.fileio import write_bytes_atomic, write_text_atomic
from ddpm_lesion.utility import classifier_metrics as clf_metrics

_COLOURS = ("tab:blue", "tab:orange", "tab:green")


def roc_png(arms: list[str], y_true: np.ndarray, scores: np.ndarray, auc: dict[str, dict]) -> bytes:
    """One ROC curve per arm and repeat (thin lines of the arm's colour), legend = mean AUC [95% CI]."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for a, (arm, colour) in enumerate(zip(arms, _COLOURS)):
        for r, repeat_scores in enumerate(scores[a]):
            fpr, tpr, _ = clf_metrics.roc_curve(y_true, repeat_scores)
            label = (f"{arm}: AUC {auc[arm]['mean']:.3f} [{auc[arm]['ci_low']:.3f}, {auc[arm]['ci_high']:.3f}]"
                     if r == 0 else None)
            ax.plot(fpr, tpr, color=colour, alpha=0.6, linewidth=1.2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"Real held-out test set: {int(y_true.sum())} positive, {int((1 - y_true).sum())} negative\n"
                 "one line per training seed", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return figure_png(figure)


def predictions_csv(arms: list[str], test_ids: list[str], y_true: np.ndarray, scores: np.ndarray) -> str:
    """One row per (test image, arm, repeat): the raw scores, so any metric can be recomputed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "label", "arm", "repeat", "score"])
    for a, arm in enumerate(arms):
        for r in range(scores.shape[1]):
            for image_id, label, score in zip(test_ids, y_true, scores[a, r]):
                writer.writerow([image_id, int(label), arm, r, f"{score:.6f}"])
    return buffer.getvalue()


def _interval(low: float, high: float, signed: bool = False) -> str:
    return f"[{low:+.3f}, {high:+.3f}]" if signed else f"[{low:.3f}, {high:.3f}]"


def _arm_rows(result: dict) -> str:
    rows = []
    for arm, facts in result["arms"].items():
        cells = "".join(f"<td><b>{m['mean']:.3f}</b> {_interval(m['ci_low'], m['ci_high'])}</td>"
                        for m in facts["metrics"].values())
        rows.append(f"<tr><td>{html.escape(arm)}</td><td>{facts['n_train']} ({facts['n_train_positive']} pos, "
                    f"{facts['n_train_synthetic']} synthetic)</td><td>{facts['steps']}</td>{cells}</tr>")
    header = "".join(f"<th>{m}</th>" for m in clf_metrics.METRICS)
    return f"<table><tr><th>arm</th><th>training images</th><th>steps</th>{header}</tr>{''.join(rows)}</table>"


def _comparison_rows(result: dict) -> str:
    rows = []
    for entry in result["comparisons"]:
        for metric, m in entry["metrics"].items():
            rows.append(
                f"<tr><td>{html.escape(entry['arm'])} vs {html.escape(entry['versus'])}</td><td>{metric}</td>"
                f"<td><b>{m['difference']:+.3f}</b></td><td>{_interval(*m['bootstrap_ci'], signed=True)}</td>"
                f"<td>{_interval(*m['seed_t_ci'], signed=True)}</td><td>{m['t_p_value']:.3g}</td>"
                f"<td>{m['sign_flip_p_value']:.3g} (min {m['min_sign_flip_p_value']:.3g})</td>"
                f"<td>{m['verdict']}</td></tr>")
    return ("<table><tr><th>comparison</th><th>metric</th><th>mean difference</th><th>95% CI, test images "
            "(bootstrap)</th><th>95% CI, seeds (t)</th><th>t-test p</th><th>sign-flip p</th><th>verdict</th></tr>"
            + "".join(rows) + "</table>")


def report_html(result: dict, roc: bytes) -> str:
    config, inputs = result["config"], result["inputs"]
    train, test = inputs["train"], inputs["test"]
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result["warnings"])
    checks = "".join(f"<li>{html.escape(c)}</li>" for c in result["leakage_checks"])
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ddpm-lesion utility</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}.warn{{background:#fff3cd;padding:.5em}}
.verdict{{font-size:1.15em;background:#eef;padding:.7em}}img{{max-width:100%}}</style></head><body>
<h1>Do the synthetic images help a classifier?</h1>
<p>Research use only. A classifier trained here is an experiment, not a diagnostic device.</p>
<p class="verdict">{html.escape(result['verdict']['sentence'])}</p>
{f'<div class="warn"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else ''}
<h2>Data</h2>
<p>Positive class: <b>{html.escape(inputs['positive'])}</b>. Training CSV {html.escape(inputs['labels_csv'])}:
{train['n_real']} real images ({train['n_real_positive']} positive) and {train['n_synthetic']} synthetic
({train['n_synthetic_positive']} positive). Test CSV {html.escape(inputs['test_csv'])}: {test['n']} real images
({test['n_positive']} positive).</p>
<p>Checked before training:</p><ul>{checks}</ul>
<h2>Arms</h2>
<p>Classifier {html.escape(str(config['arch']))} from scratch, {config['repeats']} seeds per arm (the same seeds,
initial weights and augmentations in every arm), {config['resolution']} px, every arm the same number of optimiser
steps. Thresholded metrics flag a case at predicted probability &ge; {config['threshold']}.
Mean over seeds, with a 95% stratified-bootstrap interval over test images.</p>
{_arm_rows(result)}
<h2>Comparisons</h2>{_comparison_rows(result)}
<p>A difference is called significant only when both 95% intervals exclude zero on the same side: the bootstrap
interval (which test images were sampled; {config['bootstrap_resamples']} stratified resamples, percentile
interval, the same resamples for every arm; images, not patients, are resampled, so where a patient has several
test images this interval is somewhat too narrow) and the Student t-interval of the per-seed paired differences (which
training seed was drawn). The exact sign-flip test is shown as a check that does not assume normality. Two
comparisons are made at 95% each, without correction.</p>
<h2>ROC curves</h2>{html_img(roc, 'ROC curves')}
<p>Raw test scores for every arm and seed: predictions.csv.</p>
</body></html>
"""


def write_utility_report(output_dir: Path, result: dict, test_ids: list[str], y_true: np.ndarray,
                         scores: np.ndarray) -> None:
    """Write report.json, predictions.csv, roc.png and report.html into `output_dir`."""
    arms = list(result["arms"])
    roc = roc_png(arms, y_true, scores, {arm: facts["metrics"]["roc_auc"] for arm, facts in result["arms"].items()})
    write_bytes_atomic(output_dir / "roc.png", roc)
    write_text_atomic(output_dir / "predictions.csv", predictions_csv(arms, test_ids, y_true, scores))
    write_text_atomic(output_dir / "report.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(output_dir / "report.html", report_html(result, roc))
