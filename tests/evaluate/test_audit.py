"""`ddpm-lesion evaluate` end to end on tiny folders of procedurally drawn lesions, the
library entry point, the wandb hook, and the errors a user can make."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from ddpm_lesion.commands.cli import main
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.evaluate.audit import EvalConfig, evaluate_folders
from ddpm_lesion.evaluate.features import FeatureSpace
from tests.helpers import EVALUATE_FAST as FAST
from tests.helpers import REPO, draw_folder


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """real (held out) 16, train 16, synthetic 12 new + 2 flipped training images + 1 corrupt file."""
    sets = {name: tmp_path / name for name in ("real", "train", "synthetic")}
    draw_folder(sets["real"], 1, 16)
    train = draw_folder(sets["train"], 2, 16)
    draw_folder(sets["synthetic"], 3, 12, prefix="sample_")
    provenance = PngImagePlugin.PngInfo()
    for key, value in {"synthetic": "true", "model_sha256": "ab" * 32, "seed": "7", "index": "0"}.items():
        provenance.add_text(key, value)
    for i in range(2):
        flipped = Image.open(train[i]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped.save(sets["synthetic"] / f"copy_{i}.png", pnginfo=provenance if i == 0 else None)
    (sets["synthetic"] / "broken.png").write_bytes(b"<html>not an image</html>")
    return sets


def test_cli_end_to_end_writes_the_report(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no Inception weights anywhere
    out = tmp_path / "report"
    code = main(["evaluate", "--real", str(folders["real"]), "--synthetic", str(folders["synthetic"]),
                 "--train", str(folders["train"]), "--output_dir", str(out), *FAST])
    assert code == 0
    captured = capsys.readouterr()
    assert "Inception-v3 weights not found offline" in captured.err and "KID (efficientnet-lite0)" in captured.out

    result = json.loads((out / "metrics.json").read_text())
    assert result["primary"]["feature_space"] == "efficientnet-lite0"
    assert set(result["feature_spaces"]) == {"efficientnet-lite0", "pixels16"}
    kid = result["feature_spaces"]["efficientnet-lite0"]["metrics"]["kid"]
    assert kid["n_real"] == 16 and kid["n_synthetic"] == 14 and kid["ci_low"] <= kid["value"] <= kid["ci_high"]
    assert kid["feature_space"] == "efficientnet-lite0"
    assert result["inputs"]["synthetic"]["skipped_unreadable"] == 1
    assert result["inputs"]["synthetic"]["skipped_files"][0]["file"] == "broken.png"
    assert result["inputs"]["synthetic"]["marked_synthetic"] == 1
    assert result["inputs"]["synthetic"]["model_sha256"] == ["ab" * 32]
    memo = result["memorization"]
    assert memo["n_near_copies"] == 2 and memo["real_vs_train"]["n_near_copies"] == 0

    with (out / "nearest_neighbours.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14
    assert {r["synthetic_file"] for r in rows if r["near_copy"] == "1"} == {"copy_0.png", "copy_1.png"}
    assert all((float(r["pixel_distance"]) <= float(r["copy_threshold"])) == (r["near_copy"] == "1") for r in rows)
    assert rows[0]["nearest_train_file"] in {"ISIC_200000.png", "ISIC_200001.png"} and rows[0]["feature_distance"]

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "src=\"http" not in page and "Research use only" in page and "not found offline" in page
    assert not list(out.glob(".*.tmp"))


def test_a_sampler_output_folder_is_scored_without_its_preview_grids(folders, tmp_path):
    out = tmp_path / "samples"
    draw_folder(out / "individual", 4, 9, prefix="sample_")
    (out / "grids").mkdir()
    Image.new("RGB", (200, 200)).save(out / "grids" / "preview_grid_16.png")
    config = EvalConfig(features=[FeatureSpace.PIXELS], resolution=32, kid_subsets=2, kid_subset_size=8)
    result = evaluate_folders(folders["real"], out, config=config)
    assert result["inputs"]["synthetic"]["n"] == 9
    assert result["inputs"]["synthetic"]["folder"] == str(out / "individual")


def test_library_call_with_labels_csv_filter_and_no_train(folders, tmp_path):
    (tmp_path / "labels.csv").write_text(
        "image_id,dx\n" + "".join(f"ISIC_1{i:05d},{'mel' if i < 10 else 'nv'}\n" for i in range(16)))
    before = sorted(tmp_path.rglob("*"))
    config = EvalConfig(features=[FeatureSpace.PIXELS], resolution=32, kid_subsets=5, kid_subset_size=8,
                        real_csv=tmp_path / "labels.csv", label_filter=["dx=mel"], id_column="image_id")
    result = evaluate_folders(folders["real"], folders["synthetic"], config=config)
    assert result["inputs"]["real"]["n"] == 10
    assert result["primary"]["feature_space"] == "pixels16" and result["memorization"] is None
    assert any("No --train folder" in w for w in result["warnings"])
    assert sorted(tmp_path.rglob("*")) == before  # no output_dir: the library call writes nothing


def test_leaks_into_the_real_set_are_reported(folders):
    for path in sorted(folders["train"].iterdir())[:3]:
        (folders["real"] / f"leaked_{path.name}").write_bytes(path.read_bytes())
    (folders["real"] / "marked.png").write_bytes((folders["synthetic"] / "copy_0.png").read_bytes())
    config = EvalConfig(features=[FeatureSpace.PIXELS], resolution=32, kid_subsets=5, kid_subset_size=8)
    result = evaluate_folders(folders["real"], folders["synthetic"], folders["train"], config)
    assert result["memorization"]["real_vs_train"]["n_near_copies"] == 4  # marked.png is a flipped train image
    assert any("real set is not held out" in w for w in result["warnings"])
    assert any(w.startswith("real: 1 image(s) are marked synthetic=true") for w in result["warnings"])


def test_report_to_wandb_offline(folders, tmp_path, wandb_dir):
    code = main(["evaluate", "--real", str(folders["real"]), "--synthetic", str(folders["synthetic"]),
                 "--output_dir", str(tmp_path / "r"), "--features", "pixels", "--report_to", "wandb", *FAST])
    assert code == 0
    (run_dir,) = wandb_dir.glob("offline-run-*")
    # wandb's service process may still be flushing the run file after finish() returns.
    deadline = time.monotonic() + 30
    while True:
        logged = b"".join(path.read_bytes() for path in run_dir.glob("*.wandb"))
        if b"images/synthetic_grid" in logged or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert b"pixels16/kid" in logged and b"images/synthetic_grid" in logged


@pytest.mark.parametrize("problem, expected", [
    ("missing", "--real .*missing: no such folder"),
    ("empty", "--real .*empty holds no image files"),
    ("corrupt", "--real .*corrupt: none of its 2 image files can be decoded"),
    ("too_few", "--real .*too_few: 3 usable images, but the k-NN metrics need more than --nearest_k=5"),
    ("bad_threshold", "--copy_threshold 'high'"),
    ("csv_without_train", "--train_csv needs --train"),
])
def test_bad_inputs_are_user_errors_without_traceback(folders, tmp_path, problem, expected, capsys):
    real, extra = tmp_path / problem, []
    if problem == "empty":
        real.mkdir()
    elif problem == "corrupt":
        real.mkdir()
        (real / "a.jpg").write_bytes(b"")
        (real / "b.png").write_text("<html>")
    elif problem == "too_few":
        draw_folder(real, 5, 3)
    elif problem == "bad_threshold":
        real = folders["real"]
        extra = ["--train", str(folders["train"]), "--copy_threshold", "high"]
    elif problem == "csv_without_train":
        real = folders["real"]
        extra = ["--train_csv", str(tmp_path / "labels.csv")]
    code = main(["evaluate", "--real", str(real), "--synthetic", str(folders["synthetic"]),
                 "--output_dir", str(tmp_path / "out"), "--features", "pixels", *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and re.search(expected, err), err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_python_m_prints_the_message_not_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "ddpm_lesion", "evaluate", "--real", str(tmp_path / "nope"),
                           "--synthetic", str(tmp_path), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no such folder" in proc.stderr


def test_evaluate_folders_raises_user_error_for_a_missing_synthetic_folder(folders, tmp_path):
    with pytest.raises(UserError, match="--synthetic"):
        evaluate_folders(folders["real"], tmp_path / "none", config=EvalConfig(features=[FeatureSpace.PIXELS]))
