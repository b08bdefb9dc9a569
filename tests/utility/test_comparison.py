"""`ddpm-lesion utility`: classifier metrics against independent computations (pair
counting, scipy, hand-worked cases), the interval machinery, the classifier's training
loop, the leakage refusals and one end-to-end CLI run on tiny constructed data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ddpm_lesion.commands.cli import main
from ddpm_lesion.utility import classifier_metrics as clf_metrics
from ddpm_lesion.utility.classifier import (
    Arch,
    TrainSettings,
    build_classifier,
    draw_order,
    predict_scores,
    train_classifier,
)
from ddpm_lesion.utility.classifier_data import LabelledImages, UtilityData
from ddpm_lesion.utility.comparison import GAIN, LOSS, NO_GAIN, OVERSAMPLED, REAL, SYNTHETIC, arm_training_sets, verdict

SIZE = 16
ISIC2020_HEADER = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
                   "diagnosis", "benign_malignant", "target", "synthetic", "source_model"]


# ------------------------------------------------------------------------ metrics


def brute_force_auc(y: np.ndarray, s: np.ndarray) -> float:
    """P(positive scores above negative) + 1/2 P(tie), by counting every pair."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pair_counting_and_scipy_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.permutation(np.r_[np.ones(7, int), np.zeros(13, int)])
        s = rng.integers(0, 5, size=20).astype(float)  # many ties
        u = scipy.stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
        assert clf_metrics.roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)
        assert clf_metrics.roc_auc(y, s) == pytest.approx(u / (7 * 13), abs=1e-12)


def test_roc_auc_hand_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    # positives .35 .8 .9 vs negatives .1 .4 .8: 1 + (2 + 0.5) + 3 = 6.5 of 9 pairs
    assert clf_metrics.roc_auc(y, np.array([.1, .4, .35, .8, .8, .9])) == pytest.approx(6.5 / 9)
    assert clf_metrics.roc_auc(y, y.astype(float)) == 1.0
    assert clf_metrics.roc_auc(y, -y.astype(float)) == 0.0
    assert clf_metrics.roc_auc(y, np.zeros(6)) == 0.5
    with pytest.raises(ValueError):
        clf_metrics.roc_auc(np.ones(4, int), np.arange(4.0))


def test_roc_curve_hand_case_and_its_area_is_the_auc():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([.1, .4, .35, .8, .8, .9])
    fpr, tpr, thresholds = clf_metrics.roc_curve(y, s)
    # thresholds .9 (1 pos), .8 (+1 pos +1 neg, a tie: diagonal step), .4 (+1 neg), .35 (+1 pos), .1 (+1 neg)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, .9, .8, .4, .35, .1])
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    s = rng.integers(0, 8, 50) / 8
    fpr, tpr, _ = clf_metrics.roc_curve(y, s)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(clf_metrics.roc_auc(y, s))


def test_thresholded_metrics_hand_case():
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])  # TP 3, FN 1, FP 2, TN 4
    assert clf_metrics.confusion_counts(y_true, y_pred) == (3, 2, 4, 1)
    assert clf_metrics.recall(y_true, y_pred) == 0.75
    assert clf_metrics.precision(y_true, y_pred) == 0.6
    assert clf_metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((3 / 4 + 4 / 6) / 2)
    # always predicting the majority class: balanced accuracy 0.5, recall 0, precision 0 by convention
    never = np.zeros(10, int)
    assert clf_metrics.balanced_accuracy(y_true, never) == 0.5
    assert clf_metrics.recall(y_true, never) == 0.0
    assert clf_metrics.precision(y_true, never) == 0.0
    scores = np.array([.9, .8, .5, .2, .7, .6, .1, .3, .4, .0])  # >= 0.5 gives y_pred above
    got = clf_metrics.binary_metrics(y_true, scores, threshold=0.5)
    assert list(got) == list(clf_metrics.METRICS)
    assert got["recall"] == 0.75 and got["precision"] == 0.6


def test_midranks_average_ties():
    np.testing.assert_allclose(clf_metrics.midranks(np.array([5, 7, 7, 1, 7])), [2, 4, 4, 1, 4])
    np.testing.assert_allclose(clf_metrics.midranks(np.array([3.0, 1.0, 2.0])),
                               scipy.stats.rankdata([3.0, 1.0, 2.0]))


# ------------------------------------------------------------------------ intervals


def test_stratified_bootstrap_keeps_class_counts_and_is_seeded():
    y = np.r_[np.ones(5, int), np.zeros(12, int)]
    idx = clf_metrics.stratified_bootstrap_indices(y, 300, seed=3)
    assert idx.shape == (300, 17)
    assert (y[idx].sum(axis=1) == 5).all()
    np.testing.assert_array_equal(idx, clf_metrics.stratified_bootstrap_indices(y, 300, seed=3))
    assert not np.array_equal(idx, clf_metrics.stratified_bootstrap_indices(y, 300, seed=4))


def test_bootstrap_percentile_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Mean of a normal sample: the bootstrap interval should behave like mean +- 1.96 s / sqrt(n)."""
    rng = np.random.default_rng(0)
    n, trials, covered = 200, 100, 0
    y = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
    widths = []
    for trial in range(trials):
        x = rng.normal(1.0, 2.0, n)
        idx = clf_metrics.stratified_bootstrap_indices(y, 400, seed=trial)
        low, high = clf_metrics.percentile_interval(x[idx].mean(axis=1))
        covered += low <= 1.0 <= high
        widths.append((high - low) / (2 * 1.96 * x.std(ddof=1) / np.sqrt(n)))
    assert 0.86 <= covered / trials <= 1.0
    assert np.mean(widths) == pytest.approx(1.0, abs=0.08)
    assert clf_metrics.percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def test_t_distribution_matches_scipy():
    for df in (1, 2, 3, 4, 7, 10, 31):
        for t in (0.0, 0.3, 1.5, 4.0, -2.2):
            assert clf_metrics.t_two_sided_p(t, df) == pytest.approx(2 * scipy.stats.t.sf(abs(t), df), abs=1e-12)
        assert clf_metrics.t_critical(0.95, df) == pytest.approx(scipy.stats.t.ppf(0.975, df), rel=1e-9)


def test_paired_comparison_matches_scipy_and_hand_cases():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03])
    got = clf_metrics.paired_comparison(d)
    expected = scipy.stats.ttest_1samp(d, 0.0)
    interval = expected.confidence_interval(0.95)
    assert got.mean == pytest.approx(d.mean())
    assert got.t_p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert (got.ci_low, got.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    # sign flips by hand: 32 patterns; |mean| >= 0.026 for all-plus, all-minus and the two
    # patterns that flip only -0.01 ((0.02+0.05+0.01+0.04+0.03)/5 = 0.03): 4 of 32
    assert got.sign_flip_p_value == pytest.approx(4 / 32)
    assert got.min_sign_flip_p_value == pytest.approx(2 / 32)
    zero = clf_metrics.paired_comparison(np.zeros(4))
    assert (zero.ci_low, zero.ci_high, zero.t_p_value, zero.sign_flip_p_value) == (0.0, 0.0, 1.0, 1.0)
    constant = clf_metrics.paired_comparison(np.full(3, 0.1))
    assert constant.t_p_value == 0.0 and constant.ci_low == pytest.approx(0.1)
    with pytest.raises(ValueError):
        clf_metrics.paired_comparison(np.array([0.1]))


def test_sign_flip_monte_carlo_agrees_with_full_enumeration():
    d = np.random.default_rng(5).normal(0.3, 1.0, 18)  # > 16 pairs: Monte Carlo path
    signs = np.array(np.meshgrid(*[[1.0, -1.0]] * 18)).reshape(18, -1).T  # all 2**18 patterns
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    assert clf_metrics.sign_flip_p_value(d, seed=0) == pytest.approx(exact, abs=0.01)
    assert clf_metrics.sign_flip_p_value(d, seed=0) == clf_metrics.sign_flip_p_value(d, seed=0)


def test_verdict_needs_both_intervals_on_the_same_side():
    assert verdict((0.01, 0.05), (0.002, 0.04)) == GAIN
    assert verdict((0.01, 0.05), (-0.01, 0.04)) == NO_GAIN
    assert verdict((-0.01, 0.05), (0.01, 0.04)) == NO_GAIN
    assert verdict((-0.05, -0.01), (-0.04, -0.002)) == LOSS
    assert verdict((-0.05, 0.01), (-0.04, -0.002)) == NO_GAIN


def test_arms_draw_only_from_the_training_set_and_only_arm_b_sees_synthetic_rows():
    def images(synthetic: list[bool]) -> LabelledImages:
        n = len(synthetic)
        return LabelledImages(ids=[f"id{i}" for i in range(n)], files=[], pixels=torch.zeros(n, 3, 2, 2),
                              labels=np.zeros(n, int), synthetic=np.array(synthetic), digests=[])

    data = UtilityData(train=images([False, True, False, True, True]), test=images([False] * 3), positive="t=1")
    arms = arm_training_sets(data, oversampled=True)
    assert list(arms) == [REAL, SYNTHETIC, OVERSAMPLED]
    np.testing.assert_array_equal(arms[REAL][0], [0, 2])
    np.testing.assert_array_equal(arms[SYNTHETIC][0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(arms[OVERSAMPLED][0], [0, 2])
    assert [balanced for _, balanced in arms.values()] == [False, False, True]
    assert list(arm_training_sets(data, oversampled=False)) == [REAL, SYNTHETIC]


# ------------------------------------------------------------------------ classifier


def test_resnet18_has_torchvision_layer_shapes_and_small_cnn_runs_at_16px():
    resnet = build_classifier(Arch.RESNET18, seed=0)
    # torchvision resnet18: 11,689,512 weights with a 1000-way head (512*1000 + 1000); ours has one logit
    assert sum(p.numel() for p in resnet.parameters()) == 11_689_512 - 513_000 + 513
    resnet.eval()
    assert resnet(torch.zeros(2, 3, SIZE, SIZE)).shape == (2,)
    assert build_classifier(Arch.SMALL_CNN, seed=0)(torch.zeros(3, 3, SIZE, SIZE)).shape == (3,)


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_classifier(Arch.SMALL_CNN, 7), build_classifier(Arch.SMALL_CNN, 7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_balanced_draw_order_oversamples_the_minority():
    labels = torch.tensor([1] * 10 + [0] * 90)
    generator = torch.Generator().manual_seed(0)
    balanced = draw_order(labels, 4000, generator, balanced=True)
    assert labels[balanced].float().mean().item() == pytest.approx(0.5, abs=0.03)
    plain = draw_order(labels, 250, generator, balanced=False)
    assert sorted(plain[:100].tolist()) == list(range(100))  # whole shuffled passes
    assert sorted(plain[100:200].tolist()) == list(range(100))


def blob_images(n: int, positive: bool, rng: np.random.Generator, darkening: float = 120.0) -> list[np.ndarray]:
    """16-px skin-toned noise; positives carry a 5x5 blob, `darkening` levels darker, at a random place."""
    images = []
    for _ in range(n):
        pixels = rng.normal((190, 150, 130), 12, (SIZE, SIZE, 3))
        if positive:
            r, c = rng.integers(2, SIZE - 7, 2)
            pixels[r:r + 5, c:c + 5] -= darkening
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def test_training_is_deterministic_and_learns_a_scarce_learnable_class():
    rng = np.random.default_rng(0)
    train = blob_images(48, False, rng) + blob_images(16, True, rng)
    test = blob_images(20, False, rng) + blob_images(10, True, rng)
    as_tensor = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    labels = torch.tensor([0] * 48 + [1] * 16)
    settings = TrainSettings(Arch.SMALL_CNN, steps=20, batch_size=16, learning_rate=3e-3, balanced=True)
    cpu = torch.device("cpu")
    first = predict_scores(train_classifier(as_tensor(train), labels, settings, 1, cpu), as_tensor(test), cpu)
    again = predict_scores(train_classifier(as_tensor(train), labels, settings, 1, cpu), as_tensor(test), cpu)
    np.testing.assert_array_equal(first, again)
    assert clf_metrics.roc_auc(np.r_[np.zeros(20, int), np.ones(10, int)], first) > 0.9


# ------------------------------------------------------------------------ end to end and refusals


def save_png(path: Path, pixels: np.ndarray, synthetic: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if synthetic:
        info.add_text("synthetic", "true")
    Image.fromarray(pixels).save(path, pnginfo=info)


def write_csv(path: Path, header: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def isic_row(name: str, patient: str, target: int, synthetic: int) -> dict:
    return {"image_name": name, "patient_id": patient, "sex": "female", "age_approx": "50",
            "anatom_site_general_challenge": "torso", "diagnosis": "melanoma" if target else "nevus",
            "benign_malignant": "malignant" if target else "benign", "target": str(target),
            "synthetic": str(synthetic), "source_model": "tiny-ddpm" if synthetic else ""}


@pytest.fixture
def study(tmp_path: Path) -> dict:
    """Real training set (40 benign, 6 melanoma), 20 synthetic melanomas (PNG-marked) in
    `out/images/`, and a real, patient-disjoint test set (20 benign, 10 melanoma). The blob
    is faint, so two training epochs leave the arms short of a perfect score."""
    rng = np.random.default_rng(42)
    real_dir, out, test_dir = tmp_path / "train", tmp_path / "out", tmp_path / "test"
    rows = []
    for target, count in ((0, 40), (1, 6)):
        for i, pixels in enumerate(blob_images(count, bool(target), rng, darkening=15)):
            name = f"ISIC_{target}{i:06d}"
            save_png(real_dir / f"{name}.png", pixels)
            rows.append(isic_row(name, f"IP_{i % 15:03d}", target, 0))
    for i, pixels in enumerate(blob_images(20, True, rng, darkening=15)):
        name = f"synthetic_{i:05d}"
        save_png(out / "images" / f"{name}.png", pixels, synthetic=True)
        rows.append(isic_row(name, "", 1, 1))
    test_rows = []
    for target, count in ((0, 20), (1, 10)):
        for i, pixels in enumerate(blob_images(count, bool(target), rng, darkening=15)):
            name = f"ISIC_9{target}{i:05d}"
            save_png(test_dir / f"{name}.png", pixels)
            test_rows.append(isic_row(name, f"IP_9{i:02d}", target, 0))
    test_header = [c for c in ISIC2020_HEADER if c not in ("synthetic", "source_model")]
    for row in test_rows:
        del row["synthetic"], row["source_model"]
    return {"labels_csv": write_csv(out / "labels.csv", ISIC2020_HEADER, rows), "train_dir": real_dir,
            "test_csv": write_csv(tmp_path / "test.csv", test_header, test_rows), "test_dir": test_dir,
            "test_rows": test_rows, "test_header": test_header, "report": tmp_path / "report"}


def cli(study: dict, *extra: str) -> int:
    return main(["utility", "--labels_csv", str(study["labels_csv"]), "--train_data_dir", str(study["train_dir"]),
                 "--test_csv", str(study["test_csv"]), "--test_data_dir", str(study["test_dir"]),
                 "--output_dir", str(study["report"]), "--arch", "small-cnn", "--resolution", str(SIZE),
                 "--repeats", "2", "--epochs", "2", "--batch_size", "16", "--bootstrap_resamples", "200", *extra])


def test_cli_end_to_end_writes_every_arm_and_scores_only_real_test_images(study, capsys):
    assert cli(study) == 0
    report = json.loads((study["report"] / "report.json").read_text())
    assert list(report["arms"]) == ["real", "real+synthetic", "real-oversampled"]
    assert report["arms"]["real"]["n_train_synthetic"] == 0
    assert report["arms"]["real+synthetic"]["n_train_synthetic"] == 20
    assert report["arms"]["real-oversampled"]["balanced_sampling"] is True
    assert len({arm["steps"] for arm in report["arms"].values()}) == 1  # same budget for every arm
    assert report["inputs"]["positive"] == "target=1"  # ISIC 2020 default
    assert report["inputs"]["test"] == {"n": 30, "n_positive": 10, "n_real": 30, "n_real_positive": 10,
                                        "n_synthetic": 0, "n_synthetic_positive": 0}
    assert any("patient_id" in check for check in report["leakage_checks"])
    assert [c["versus"] for c in report["comparisons"]] == ["real", "real-oversampled"]
    assert report["verdict"]["real"] in (GAIN, NO_GAIN, LOSS)
    assert report["verdict"]["sentence"] in capsys.readouterr().out

    # The scores in predictions.csv are of exactly the real test images, and recomputing the
    # metrics from them reproduces the report.
    with open(study["report"] / "predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    test_ids = {row["image_name"] for row in study["test_rows"]}
    assert {p["image_id"] for p in predictions} == test_ids
    assert not any(p["image_id"].startswith("synthetic_") for p in predictions)
    for arm, facts in report["arms"].items():
        for repeat in range(2):
            rows = [p for p in predictions if p["arm"] == arm and p["repeat"] == str(repeat)]
            y = np.array([int(p["label"]) for p in rows])
            s = np.array([float(p["score"]) for p in rows])
            assert facts["metrics"]["roc_auc"]["per_repeat"][repeat] == pytest.approx(brute_force_auc(y, s), abs=1e-5)
        metric = facts["metrics"]["roc_auc"]
        assert metric["mean"] == pytest.approx(np.mean(metric["per_repeat"]))
        # a 95% interval over 30 test images is wide, and holds its own point estimate
        assert metric["ci_low"] < metric["mean"] < metric["ci_high"] and metric["ci_high"] - metric["ci_low"] > 0.05
    comparison = report["comparisons"][0]["metrics"]["roc_auc"]
    per_arm = report["arms"]
    assert comparison["per_repeat"] == pytest.approx(
        np.subtract(per_arm[SYNTHETIC]["metrics"]["roc_auc"]["per_repeat"],
                    per_arm["real"]["metrics"]["roc_auc"]["per_repeat"]).tolist())
    page = (study["report"] / "report.html").read_text()
    assert "data:image/png;base64," in page and "real-oversampled" in page
    assert (study["report"] / "roc.png").stat().st_size > 0


def expect_refusal(study: dict, capsys, *fragments: str, extra: tuple[str, ...] = ()) -> None:
    assert cli(study, *extra) == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message
    assert not (study["report"] / "report.json").exists()


def test_refuses_test_row_marked_synthetic(study, capsys):
    header = study["test_header"] + ["synthetic"]
    rows = [dict(row, synthetic="1" if i == 3 else "0") for i, row in enumerate(study["test_rows"])]
    write_csv(study["test_csv"], header, rows)
    expect_refusal(study, capsys, "line 5", rows[3]["image_name"], "real images only")


def test_refuses_test_image_with_synthetic_png_mark(study, capsys):
    victim = study["test_dir"] / f"{study['test_rows'][7]['image_name']}.png"
    save_png(victim, np.asarray(Image.open(victim)), synthetic=True)
    expect_refusal(study, capsys, str(victim), "synthetic=true")


def test_refuses_real_training_image_with_synthetic_png_mark(study, capsys):
    victim = study["train_dir"] / "ISIC_1000002.png"
    save_png(victim, np.asarray(Image.open(victim)), synthetic=True)
    expect_refusal(study, capsys, str(victim), "mark their rows synthetic=1")


def test_refuses_test_id_that_is_in_the_training_csv(study, capsys):
    rows = list(study["test_rows"])
    rows[0] = dict(rows[0], image_name="ISIC_0000003", patient_id="IP_999")
    write_csv(study["test_csv"], study["test_header"], rows)
    expect_refusal(study, capsys, "line 2 (ISIC_0000003)", "also appear in the training CSV")


def test_refuses_patient_overlap_and_names_the_patients(study, capsys):
    rows = [dict(row, patient_id="IP_004") if i in (2, 5) else row for i, row in enumerate(study["test_rows"])]
    write_csv(study["test_csv"], study["test_header"], rows)
    expect_refusal(study, capsys, "IP_004", "patient_id")


def test_refuses_byte_identical_copy_of_a_training_image(study, capsys):
    copy = study["test_dir"] / f"{study['test_rows'][0]['image_name']}.png"
    copy.write_bytes((study["train_dir"] / "ISIC_0000001.png").read_bytes())
    expect_refusal(study, capsys, "byte-identical", str(copy))


def test_refuses_training_csv_without_synthetic_column(study, capsys):
    with open(study["labels_csv"]) as handle:
        rows = [{k: v for k, v in row.items() if k != "synthetic"} for row in csv.DictReader(handle)]
    write_csv(study["labels_csv"], [c for c in ISIC2020_HEADER if c != "synthetic"], rows)
    expect_refusal(study, capsys, "no 'synthetic' column", str(study["labels_csv"]))
