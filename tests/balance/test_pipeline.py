"""`ddpm-lesion balance`: class extraction per layout, plan arithmetic, the output CSV in the
input's layout, near-duplicate removal, the options handed to training and sampling, and
end-to-end runs on tiny data (HAM10000 conditional, interrupted and resumed in-process;
ISIC 2020 per-class under `accelerate launch` with two CPU processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_lesion.balance import pipeline as balance_module
from ddpm_lesion.balance.dedupe import find_duplicates
from ddpm_lesion.balance.pipeline import (
    ADDED_COLUMNS,
    BalanceConfig,
    BalanceLayout,
    SyntheticImage,
    class_seed,
    make_plan,
    output_rows,
    sampling_config,
    training_config,
)
from ddpm_lesion.balance.plan import ClassPlan, class_cells, class_scheme, row_label, slug, synthetic_counts
from ddpm_lesion.commands.cli import main
from ddpm_lesion.core.config import config_from_sources
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.data.label_writer import write_labels
from ddpm_lesion.data.labels import CsvFormat, read_labels
from ddpm_lesion.sample.provenance import is_synthetic, read_manifest, read_png_text
from tests.helpers import save_tiny_pipeline, write_images
from tests.launch_utils import REPO, free_port, race_hook_env, script_env

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,split"
ISIC2020_HEADER = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
                   "benign_malignant,target")
ISIC2019_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
TINY_RUN = ["--resolution", "16", "--max_train_steps", "2", "--train_batch_size", "2", "--lr_warmup_steps", "0",
            "--checkpointing_steps", "1000", "--save_images_steps", "1000", "--num_sample_images", "4",
            "--sample_inference_steps", "2", "--num_inference_steps", "2", "--batch_size", "4"]


def write_csv(path: Path, lines: list[str], newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def config(**values) -> object:
    """A BalanceConfig as the command line would build it (values as typed)."""
    return config_from_sources(BalanceConfig, values)


def isic2019_lines(classes: list[str]) -> list[str]:
    names = ISIC2019_HEADER.split(",")[1:]
    return [ISIC2019_HEADER] + [f"ISIC_{i:07d}," + ",".join("1.0" if n == c else "0.0" for n in names)
                                for i, c in enumerate(classes)]


# ------------------------------------------------------------------------ classes per layout


def test_classes_per_layout(tmp_path):
    ham = read_labels(write_csv(tmp_path / "ham.csv", [HAM_HEADER, "HAM_1,ISIC_1,mel,histo,50,male,back,train",
                                                       "HAM_2,ISIC_2,nv,histo,50,male,back,train"]))
    assert [row_label(ham, class_scheme(ham, None), r) for r in range(2)] == ["mel", "nv"]

    isic2020 = read_labels(write_csv(tmp_path / "2020.csv", [ISIC2020_HEADER,
                                                             "ISIC_1,IP_1,male,45,torso,nevus,benign,0",
                                                             "ISIC_2,IP_2,male,45,torso,melanoma,malignant,1"]))
    scheme = class_scheme(isic2020, None)
    assert (scheme.columns, scheme.twins) == (("target",), ("benign_malignant",))
    assert [row_label(isic2020, scheme, r) for r in range(2)] == ["0", "1"]
    assert class_scheme(isic2020, "benign_malignant").twins == ("target",)

    onehot = read_labels(write_csv(tmp_path / "2019.csv", isic2019_lines(["MEL", "NV", "SCC"])))
    scheme = class_scheme(onehot, None)
    assert scheme.columns == tuple(ISIC2019_HEADER.split(",")[1:])
    assert [row_label(onehot, scheme, r) for r in range(3)] == ["MEL", "NV", "SCC"]

    isic2017 = read_labels(write_csv(tmp_path / "2017.csv", ["image_id,melanoma,seborrheic_keratosis",
                                                             "ISIC_1,1.0,0.0", "ISIC_2,0.0,1.0", "ISIC_3,0.0,0.0",
                                                             "ISIC_4,1.0,1.0"]))
    scheme = class_scheme(isic2017, None)
    labels = [row_label(isic2017, scheme, r) for r in range(3)]
    assert labels == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert class_cells(isic2017, scheme, [0, 1, 2], labels, "nevus") == {"melanoma": "0.0", "seborrheic_keratosis": "0.0"}
    with pytest.raises(UserError, match="line 5: expected exactly one"):
        row_label(isic2017, scheme, 3)


def test_generic_csv_needs_label_column_and_unknown_columns_are_named(tmp_path):
    table = read_labels(write_csv(tmp_path / "g.csv", ["image_id,diagnosis", "ISIC_1,mel"]))
    with pytest.raises(UserError, match="--label_column COL"):
        class_scheme(table, None)
    assert row_label(table, class_scheme(table, "diagnosis"), 0) == "mel"
    with pytest.raises(UserError, match="no column 'dx'.*image_id, diagnosis"):
        class_scheme(table, "dx")


def test_header_less_isic2016_is_refused_with_the_fix(tmp_path):
    table = read_labels(write_csv(tmp_path / "2016.csv", ["ISIC_0000000,benign", "ISIC_0000001,malignant"]))
    with pytest.raises(UserError, match="no header line.*'image_id,label' as line 1"):
        make_plan(config(target="majority"), table, "sha")


# ------------------------------------------------------------------------ plan arithmetic


def test_synthetic_counts():
    real = {"bkl": 2, "mel": 6, "nv": 3}
    assert synthetic_counts(real, "majority") == {"bkl": 4, "mel": 0, "nv": 3}
    assert synthetic_counts(real, "5") == {"bkl": 3, "mel": 0, "nv": 2}  # never negative: mel keeps its 6
    assert synthetic_counts(real, "bkl=10, nv=3") == {"bkl": 8, "mel": 0, "nv": 0}
    with pytest.raises(UserError, match="no class 'df'; its classes are bkl, mel, nv"):
        synthetic_counts(real, "df=10")
    with pytest.raises(UserError, match="expected majority, a number N, or CLASS=N"):
        synthetic_counts(real, "lots")


def test_plan_counts_the_training_split_only(tmp_path):
    lines = [HAM_HEADER] + [f"HAM_{i},ISIC_{i},{dx},histo,50,male,back,{split}" for i, (dx, split) in enumerate(
        [("mel", "train")] * 4 + [("mel", "test")] * 5 + [("nv", "train")] + [("nv", "val")] * 9)]
    table = read_labels(write_csv(tmp_path / "ham.csv", lines))
    plan, _, rows, labels = make_plan(config(split_column="split"), table, "sha")
    assert [(c.name, c.real, c.synthetic) for c in plan.classes] == [("mel", 4, 0), ("nv", 1, 3)]
    assert plan.training_rows == len(rows) == 5 and labels == ["mel"] * 4 + ["nv"]
    with pytest.raises(UserError, match="--train_value training: .*'test', 'train', 'val'"):
        make_plan(config(split_column="split", train_value="training"), table, "sha")


def test_a_patient_in_two_splits_is_refused(tmp_path):
    lines = [ISIC2020_HEADER + ",split", "ISIC_1,IP_1,male,45,torso,nevus,benign,0,train",
             "ISIC_2,IP_1,male,45,torso,nevus,benign,0,test", "ISIC_3,IP_2,male,45,torso,melanoma,malignant,1,train"]
    table = read_labels(write_csv(tmp_path / "2020.csv", lines))
    with pytest.raises(UserError, match=r"1 patient_id value\(s\) occur in several split splits: IP_1 \(test/train\)"):
        balance_module.check_splits(config(split_column="split"), table)


# ------------------------------------------------------------------------ the output CSV


def synthetic(name: str, n: int) -> list[SyntheticImage]:
    return [SyntheticImage(f"synthetic_{name}_{i:06d}", name, "model@sha256:abc") for i in range(n)]


def test_isic2019_one_hot_output_keeps_the_layout_and_spelling(tmp_path):
    source = write_csv(tmp_path / "in.csv", isic2019_lines(["MEL", "NV", "NV", "NV"]), newline="\r\n",
                       encoding="utf-8-sig")
    table = read_labels(source)
    plan, scheme, rows, labels = make_plan(config(), table, "sha")
    assert [(c.name, c.real, c.synthetic) for c in plan.classes] == [("MEL", 1, 2), ("NV", 3, 0)]  # UNK: no class
    out = tmp_path / "out.csv"
    write_labels(table, out, output_rows(table, scheme, rows, labels, None, synthetic("MEL", 2)), ADDED_COLUMNS)
    written = read_labels(out)
    assert (written.format, written.delimiter, written.encoding) == (CsvFormat.ISIC_ONEHOT, ",", "utf-8-sig")
    assert written.columns == table.columns + ["synthetic", "source_model"]
    assert out.read_bytes().count(b"\r\n") == 7
    assert [{k: r[k] for k in table.columns} for r in written.rows[:4]] == table.rows
    assert {r["synthetic"] for r in written.rows[:4]} == {"0"}
    assert written.rows[4] == {"image": "synthetic_MEL_000000", "MEL": "1.0", "NV": "0.0", "BCC": "0.0", "AK": "0.0",
                               "BKL": "0.0", "DF": "0.0", "VASC": "0.0", "SCC": "0.0", "UNK": "0.0",
                               "synthetic": "1", "source_model": "model@sha256:abc"}


def test_isic2020_output_fills_the_twin_column_never_a_patient(tmp_path):
    lines = [ISIC2020_HEADER.replace(",", ";") + ";split"] + [
        f"ISIC_{i};IP_{i};male;45;torso;{d};{bm};{t};{s}" for i, (d, bm, t, s) in enumerate(
            [("nevus", "benign", "0", "train")] * 3 + [("melanoma", "malignant", "1", "train"),
                                                      ("melanoma", "malignant", "1", "test")])]
    table = read_labels(write_csv(tmp_path / "in.csv", lines, encoding="latin-1"))
    plan, scheme, rows, labels = make_plan(config(split_column="split"), table, "sha")
    assert [(c.name, c.real, c.synthetic) for c in plan.classes] == [("0", 3, 0), ("1", 1, 2)]
    out = tmp_path / "out.csv"
    write_labels(table, out, output_rows(table, scheme, rows, labels, "split", synthetic("1", 2)), ADDED_COLUMNS)
    written = read_labels(out)
    assert (written.format, written.delimiter) == (CsvFormat.ISIC2020, ";")
    row = written.rows[-1]
    assert (row["image_name"], row["target"], row["benign_malignant"], row["split"]) == (
        "synthetic_1_000001", "1", "malignant", "train")
    assert row["patient_id"] == row["diagnosis"] == row["sex"] == row["age_approx"] == ""


# ------------------------------------------------------------------------ near-duplicates


def test_find_duplicates_keeps_the_first_copy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    images[3] = images[1][:, ::-1]  # a mirrored copy of 1
    images[5] = images[3]  # a copy of the copy: reported with 1, the kept one
    pairs = find_duplicates(images, threshold=1e-3)
    assert [(p.index, p.kept) for p in pairs] == [(3, 1), (5, 1)]
    assert all(p.distance < 1e-9 for p in pairs)
    assert find_duplicates(images[[0, 1, 2, 4]], threshold=1e-3) == []


# ------------------------------------------------------------------------ options handed on


def test_training_and_sampling_options_pass_through(tmp_path):
    cfg = config(train_data_dir=str(tmp_path), labels_csv="x.csv", output_dir=str(tmp_path / "out"),
                 learning_rate="3e-4", mixed_precision="bf16", seed="7", num_inference_steps="9",
                 guidance_scale="2.5", scheduler="ddim")
    layout = BalanceLayout(tmp_path / "out")
    nv = ClassPlan("nv", 3, 4)
    trained = training_config(cfg, layout, None)
    assert (trained.learning_rate, trained.seed, trained.labels_csv, trained.class_column, trained.label_filter,
            trained.output_dir, trained.resume_from_checkpoint) == (
        3e-4, 7, layout.train_rows, "class", [], tmp_path / "out/model", "latest")
    sampled = sampling_config(cfg, layout, nv)
    assert (sampled.class_label, sampled.num_images, sampled.model_dir, sampled.output_dir, sampled.prefix) == (
        "nv", 4, str(tmp_path / "out/model"), tmp_path / "out/generated/nv", "synthetic_nv")
    assert (sampled.num_inference_steps, sampled.guidance_scale, sampled.scheduler.value) == (9, 2.5, "ddim")
    assert sampled.mixed_precision is MixedPrecision.BF16
    assert sampled.seed == class_seed(7, "nv") != class_seed(7, "mel")  # never the same noise for two classes
    # Copies of the class's own training images are rejected by default.
    assert (sampled.reject_copies, sampled.train_csv, sampled.id_column, sampled.label_filter) == (
        tmp_path, layout.train_rows, "image_id", ["class=nv"])
    kept = sampling_config(config(train_data_dir=str(tmp_path), labels_csv="x.csv", output_dir=str(tmp_path / "out"),
                                  no_reject_copies="true"), layout, nv)
    # ... and with --no_reject_copies not even the sampler's default check of the run's own images.
    assert (kept.reject_copies, kept.no_reject_copies, kept.train_csv, kept.label_filter) == (None, True, None, [])

    per_class = config(train_data_dir=str(tmp_path), labels_csv="x.csv", output_dir=str(tmp_path / "out"),
                       mode="per_class")
    trained = training_config(per_class, layout, nv)
    assert (trained.class_column, trained.label_filter, trained.output_dir) == (None, ["class=nv"],
                                                                               tmp_path / "out/model/nv")
    sampled = sampling_config(per_class, layout, nv)
    assert (sampled.class_label, sampled.model_dir) == (None, str(tmp_path / "out/model/nv"))


def test_flags_set_by_balance_are_not_offered(capsys):
    with pytest.raises(SystemExit):
        main(["balance", "--label_filter", "dx=mel"])
    assert "unrecognized arguments: --label_filter" in capsys.readouterr().err


def test_slug():
    assert slug("mel") == "mel"
    assert slug("Basal cell carcinoma").startswith("Basal-cell-carcinoma-")
    assert slug("a/b") != slug("a b")


# ------------------------------------------------------------------------ end to end


def ham10000(root: Path) -> Path:
    """mel 6 + 1 test, nv 4 (one a copy of another) + 1 val, bkl 2; 16 px."""
    ids = write_images(root / "images", 14, size=16)
    shutil.copy(root / "images" / f"{ids[7]}.png", root / "images" / "ISIC_0000099.png")
    cells = [("mel", "train")] * 6 + [("mel", "test"), ("nv", "train"), ("nv", "train"), ("nv", "val"),
                                      ("nv", "train"), ("bkl", "train"), ("bkl", "train")]
    lines = [HAM_HEADER] + [f"HAM_{i:07d},{ids[i]},{dx},histo,50.0,male,back,{s}" for i, (dx, s) in enumerate(cells)]
    return write_csv(root / "labels.csv", lines + ["HAM_0000099,ISIC_0000099,nv,histo,50.0,male,back,train"])


class Interrupted(Exception):
    pass


def mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ham_run(tmp_path_factory) -> dict:
    """A conditional balance run killed after the first class's images, resumed, then rerun once more."""
    root = tmp_path_factory.mktemp("ham")
    labels = ham10000(root)
    out = root / "out"
    args = ["balance", "--train_data_dir", str(root / "images"), "--labels_csv", str(labels), "--split_column",
            "split", "--dedupe", "--output_dir", str(out), "--pretrained_model_name_or_path",
            str(save_tiny_pipeline(root / "pretrained")), "--guidance_scale", "2", "--cache_dir", str(root / "cache"),
            *TINY_RUN]
    real_generate = balance_module.generate
    calls = []

    def generate_then_die(cfg):
        if calls:
            raise Interrupted
        calls.append(cfg.class_label)
        return real_generate(cfg)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(balance_module, "generate", generate_then_die)
        with pytest.raises(Interrupted):
            main(args)
    first = {"model": mtimes(out / "model" / "checkpoint-2"), "metrics": (out / "model/metrics.csv").read_text(),
             "generated": mtimes(out / "generated"), "labels_written": (out / "labels.csv").exists()}
    assert main(args) == 0
    resumed = {"model": mtimes(out / "model" / "checkpoint-2"), "metrics": (out / "model/metrics.csv").read_text(),
               "generated": mtimes(out / "generated"), "labels": (out / "labels.csv").read_bytes(),
               "images": mtimes(out / "images")}
    assert main(args) == 0
    again = {"labels": (out / "labels.csv").read_bytes(), "images": mtimes(out / "images")}
    return {"root": root, "out": out, "args": args, "interrupted_after": calls, "first": first, "resumed": resumed,
            "again": again}


@pytest.mark.slow
def test_ham10000_plan_and_output_csv(ham_run):
    out, source = ham_run["out"], read_labels(ham_run["root"] / "labels.csv")
    plan = json.loads((out / "plan.json").read_text())
    assert [(c["name"], c["real"], c["synthetic"]) for c in plan["classes"]] == [
        ("bkl", 2, 4), ("mel", 6, 0), ("nv", 4, 2)]
    assert plan["duplicates"] == [{"id": "ISIC_0000099", "duplicate_of": "ISIC_0000007", "distance": pytest.approx(0)}]
    # Fine-tuning saw the training split minus the duplicate, which stays a real row of the output.
    fine_tuned = read_labels(out / "train_rows.csv")
    assert [r["image_id"] for r in fine_tuned.rows] == [f"ISIC_{i:07d}" for i in (0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12)]
    assert json.loads((out / "model/class_labels.json").read_text())["classes"] == ["bkl", "mel", "nv"]

    written = read_labels(out / "labels.csv")
    assert (written.format, written.id_column) == (CsvFormat.HAM10000, "image_id")
    assert written.columns == source.columns + ["synthetic", "source_model"]
    assert [{k: r[k] for k in source.columns} for r in written.rows[:14]] == source.rows
    assert all(r["synthetic"] == "0" and r["source_model"] == "" for r in written.rows[:14])
    made = written.rows[14:]
    assert [(r["image_id"], r["dx"]) for r in made] == [(f"synthetic_bkl_{i:06d}", "bkl") for i in range(4)] + [
        (f"synthetic_nv_{i:06d}", "nv") for i in range(2)]
    assert all(r["split"] == "train" and r["synthetic"] == "1" for r in made)  # never val or test
    assert all(r["lesion_id"] == r["dx_type"] == r["age"] == r["localization"] == "" for r in made)


@pytest.mark.slow
def test_ham10000_images_carry_provenance_and_the_requested_class(ham_run):
    out = ham_run["out"]
    for row in read_labels(out / "labels.csv").rows[14:]:
        image = out / "images" / f"{row['image_id']}.png"
        text = read_png_text(image)
        assert is_synthetic(image)
        assert text["class_label"] == row["dx"] and text["guidance_scale"] == "2.0"  # balance asked for this class
        assert row["source_model"] == f"model@sha256:{text['model_sha256']}"
        assert image.read_bytes() == (out / "generated" / row["dx"] / "individual" / image.name).read_bytes()
    for name in ("bkl", "nv"):
        assert {r["class_label"] for r in read_manifest(out / "generated" / name / "manifest.csv")} == {name}
        # Checked for copies by default: the record is there (empty or not).
        assert (out / "generated" / name / "rejected.csv").read_text().startswith("index,candidate_index,")


@pytest.mark.slow
def test_interrupted_balance_resumes_without_redoing_finished_stages(ham_run):
    first, resumed, again = ham_run["first"], ham_run["resumed"], ham_run["again"]
    assert ham_run["interrupted_after"] == ["bkl"] and not first["labels_written"]
    assert resumed["model"] == first["model"] and resumed["metrics"] == first["metrics"]  # not retrained
    bkl = {k: v for k, v in first["generated"].items() if k.startswith("bkl/individual/")}
    assert len(bkl) == 4 and all(resumed["generated"][k] == v for k, v in bkl.items())  # not regenerated
    assert again["labels"] == resumed["labels"] and again["images"] == resumed["images"]  # nothing rewritten


@pytest.mark.slow
def test_rerun_with_other_settings_names_them(ham_run, capsys):
    assert main([*ham_run["args"], "--target", "9", "--guidance_scale", "3"]) == 2
    err = capsys.readouterr().err
    assert "target: 'majority' -> '9'" in err and "guidance_scale: 2.0 -> 3.0" in err and "--overwrite" in err


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    labels = write_csv(tmp_path / "2019.csv", isic2019_lines(["MEL", "NV", "NV", "NV", "BCC"]))
    assert main(["balance", "--train_data_dir", str(tmp_path / "images"), "--labels_csv", str(labels),
                 "--output_dir", str(tmp_path / "out"), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "isic_onehot layout" in printed and "nothing trained" in printed
    assert [line.split() for line in printed.splitlines() if line.strip().startswith(("MEL", "BCC", "NV "))] == [
        ["BCC", "1", "2", "3"], ["MEL", "1", "2", "3"], ["NV", "3", "0", "3"]]
    assert not (tmp_path / "out").exists()


def test_output_dir_inside_the_training_images_is_refused(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["balance", "--train_data_dir", str(tmp_path / "images"), "--labels_csv", "x.csv",
                 "--output_dir", str(tmp_path / "images" / "out"), "--dry_run"]) == 2
    assert "inside --train_data_dir" in capsys.readouterr().err


@pytest.mark.slow
def test_isic2020_per_class_under_accelerate_launch(tmp_path):
    """Two CPU processes: both train and sample, only the main process writes the CSV. A fresh
    output folder, with rank 1 held back 3 s after joining, so it would see whatever rank 0
    had already written if any rank decided from the folder on its own."""
    ids = write_images(tmp_path / "images", 6, size=16)
    lines = [ISIC2020_HEADER] + [f"{ids[i]},IP_{i // 2},male,45.0,torso,{d},{bm},{t}" for i, (d, bm, t) in enumerate(
        [("nevus", "benign", 0)] * 4 + [("melanoma", "malignant", 1)] * 2)]
    labels = write_csv(tmp_path / "labels.csv", lines)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()),
               "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "ddpm_lesion", "balance", "--mode", "per_class",
               "--train_data_dir", str(tmp_path / "images"), "--labels_csv", str(labels), "--output_dir", str(out),
               "--pretrained_model_name_or_path", str(save_tiny_pipeline(tmp_path / "pretrained")),
               "--cache_dir", str(tmp_path / "cache"), *TINY_RUN, "--train_batch_size", "1"]
    result = subprocess.run(command, env=script_env(race_hook_env(tmp_path / "hook", delay_rank=1)), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training on 2 process(es)" in result.stdout
    assert sorted(p.name for p in (out / "model").iterdir()) == ["1"]  # only the class to top up gets a model
    written = read_labels(out / "labels.csv")
    assert written.format is CsvFormat.ISIC2020
    made = [r for r in written.rows if r["synthetic"] == "1"]
    assert [(r["image_name"], r["target"], r["benign_malignant"], r["patient_id"]) for r in made] == [
        ("synthetic_1_000000", "1", "malignant", ""), ("synthetic_1_000001", "1", "malignant", "")]
    text = read_png_text(out / "images" / "synthetic_1_000000.png")
    assert "class_label" not in text and made[0]["source_model"] == f"model/1@sha256:{text['model_sha256']}"
