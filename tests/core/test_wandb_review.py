"""A tiny train -> sample -> evaluate -> pick-sampler chain, then the utility and balance
runs over its samples, logged to wandb offline and read back from wandb's own offline run
files (`wandb_records`): one project, a group per model, a job type per command, the data
report, model and samples artifacts with their log/use edges, and the review tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from ddpm_lesion.balance import pipeline as balance_pipeline
from ddpm_lesion.balance.plan import BalancePlan, ClassPlan
from ddpm_lesion.commands import utility as utility_command
from ddpm_lesion.commands.cli import main
from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.config import config_from_sources, parse_config
from ddpm_lesion.core.figures import encode_png
from ddpm_lesion.evaluate import review_tables
from ddpm_lesion.train.loop import TrainConfig, train
from tests.helpers import REPO, save_tiny_pipeline, write_images
from tests.wandb_records import offline_runs

sys.path.insert(0, str(REPO))
import sample_ddpm  # noqa: E402

NUM_IMAGES, LOG_IMAGES, STEPS = 8, 5, 2


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """train (2 steps, checkpoint KID each step, --log_model) -> sample 8 -> evaluate, with
    an offline wandb writing under a temp folder (torn down around the chain: wandb keeps
    process-wide settings from its first `init`)."""
    import wandb

    tmp_path = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-root"),
                            "WANDB_SILENT": "true", "WANDB_PROJECT": "lesion-review"}.items():
            env.setenv(name, value)
        wandb.teardown()
        try:
            yield _run_chain(tmp_path)
        finally:
            wandb.teardown()


def _run_chain(tmp_path: Path):
    write_images(tmp_path / "images", 6, size=20)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")  # one row of the data-report table
    write_images(tmp_path / "heldout", 6, size=20, seed=9)
    save_tiny_pipeline(tmp_path / "pretrained")
    run = tmp_path / "melanoma"
    train(parse_config(TrainConfig, [
        "--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path", str(tmp_path / "pretrained"),
        "--output_dir", str(run), "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", str(STEPS),
        "--checkpointing_steps", "1", "--save_images_steps", "100", "--num_sample_images", "4",
        "--sample_inference_steps", "1", "--validation_data_dir", str(tmp_path / "heldout"),
        "--validation_features", "pixels", "--validation_num_images", "6", "--cache_dir", str(tmp_path / "cache"),
        "--report_to", "wandb", "--log_model", "--no-choose_sampler"]))  # pick-sampler is run below
    balance_dir = tmp_path / "balance"
    out = balance_dir / "generated" / "mel"  # as `balance` lays out a class's generated set
    assert sample_ddpm.main(["--model_dir", str(run), "--output_dir", str(out), "--num_images", str(NUM_IMAGES),
                             "--batch_size", "8", "--num_inference_steps", "1", "--mixed_precision", "no",
                             "--report_to", "wandb", "--log_images", str(LOG_IMAGES)]) == 0
    assert main(["evaluate", "--real", str(tmp_path / "heldout"), "--synthetic", str(out), "--train",
                 str(tmp_path / "images"), "--output_dir", str(tmp_path / "report"), "--features", "pixels",
                 "--resolution", "16", "--kid_subsets", "5", "--kid_subset_size", "5",
                 "--report_to", "wandb"]) == 0
    assert main(["pick-sampler", "--model_dir", str(run), "--real_dir", str(tmp_path / "heldout"),
                 "--candidates", "ddim:1", "--reference", "ddpm:2", "--num_images", "6", "--features", "pixels",
                 "--kid_subsets", "4", "--kid_subset_size", "5", "--mixed_precision", "no", "--batch_size", "6",
                 "--tolerance", "1e9", "--report_to", "wandb"]) == 0
    _log_utility_and_balance(tmp_path, balance_dir)
    runs = offline_runs(tmp_path / "wandb-root")
    return {r.job_type: r for r in runs}, run


UTILITY_ARMS = {"real": {"roc_auc": (0.70, 0.61, 0.79)}, "real+synthetic": {"roc_auc": (0.74, 0.66, 0.82)}}
BALANCE_CLASSES = [ClassPlan("mel", 6, NUM_IMAGES), ClassPlan("nv", 14, 0)]


def _log_utility_and_balance(tmp_path: Path, balance_dir: Path) -> None:
    """The utility and balance runs for a balance folder whose `mel` set is the chain's
    samples (their own commands are minutes of classifier training and fine-tuning; their
    end-to-end tests live in tests/utility and tests/balance)."""
    (tmp_path / "utility").mkdir()
    (tmp_path / "utility" / "roc.png").write_bytes(encode_png(Image.new("RGB", (8, 8))))
    result = {"config": {"repeats": 3}, "verdict": {"sentence": "no gain shown"},
              "arms": {arm: {"metrics": {m: dict(zip(("mean", "ci_low", "ci_high"), v)) for m, v in metrics.items()}}
                       for arm, metrics in UTILITY_ARMS.items()}}
    utility_command.log_to_wandb(result, balance_dir / "labels.csv", tmp_path / "utility", None)
    cfg = config_from_sources(balance_pipeline.BalanceConfig, {
        "train_data_dir": str(tmp_path / "images"), "labels_csv": "labels.csv", "output_dir": str(balance_dir)})
    plan = BalancePlan(labels_csv="labels.csv", labels_sha256="0" * 64, layout="generic", class_columns="dx",
                       training_split="", training_rows=20, target="max", mode="per_class", dedupe_threshold=None,
                       classes=BALANCE_CLASSES)
    balance_pipeline.log_to_wandb(cfg, plan, balance_pipeline.BalanceLayout(balance_dir))


def test_one_project_one_group_one_job_type_per_command(chain):
    runs, run_dir = chain
    assert sorted(runs) == ["balance", "evaluate", "pick-sampler", "sample", "train", "utility"]
    assert {r.project for r in runs.values()} == {"lesion-review"}
    assert {runs[job].group for job in ("train", "sample", "evaluate", "pick-sampler")} == {"melanoma"}
    assert runs["balance"].group == runs["utility"].group == "balance"  # the balance output folder
    assert runs["train"].name == "melanoma"
    assert wandb_review.read_record(run_dir)["group"] == "melanoma"


def test_artifacts_link_model_to_samples_to_evaluation(chain):
    runs, run_dir = chain
    (final, best) = runs["train"].made("model")
    assert final.name == best.name == "model-melanoma"
    assert "final" in final.aliases and "best" in best.aliases
    recorded = wandb_review.read_record(run_dir)["models"]
    assert recorded["."]["digest"] == final.digest
    # sampling used the final pipeline: the same files, so the same version once synced
    (used_model,) = runs["sample"].used("model")
    assert (used_model.name, used_model.digest) == (final.name, final.digest)
    assert runs["sample"].config["model_artifact"] == "model-melanoma"
    assert len(runs["sample"].config["model_sha256"]) == 64
    (samples,) = runs["sample"].made("dataset")
    assert samples.name == "samples-melanoma-mel"
    references = [c for c in samples.manifest.contents if c.ref]
    assert len(references) == NUM_IMAGES and all(c.ref.startswith("file://") for c in references)
    assert {c.path for c in samples.manifest.contents if not c.ref} == {"manifest.csv", "sample_config.yaml"}
    (judged,) = runs["evaluate"].used("dataset")
    assert (judged.name, judged.digest) == (samples.name, samples.digest)
    assert not runs["evaluate"].made("dataset") and not runs["train"].used("model")
    (balanced,) = runs["balance"].used("dataset")
    assert (balanced.name, balanced.digest) == (samples.name, samples.digest)
    (measured,) = runs["pick-sampler"].used("model")
    assert (measured.name, measured.digest) == (final.name, final.digest)


def test_data_report_is_the_first_node_of_the_lineage(chain):
    runs, run_dir = chain
    (data,) = runs["train"].used("dataset")
    assert data.name == "data-melanoma"
    assert {c.path for c in data.manifest.contents} == {"data_report.json", "data_report.txt"}


def test_review_tables(chain):
    runs, _ = chain
    report = runs["train"].table("data_report/table")
    assert report["columns"] == review_tables.DATA_REPORT_COLUMNS
    assert [row[:2] for row in report["data"]] == [["corrupt", "broken.png"]]
    validation = runs["train"].table("validation/table")
    assert validation["columns"] == review_tables.VALIDATION_COLUMNS
    assert [row[0] for row in validation["data"]] == list(range(1, STEPS + 1))
    assert sum(row[-1] for row in validation["data"]) == 1  # exactly one best
    samples = runs["sample"].table("samples/table")
    assert samples["columns"] == review_tables.SAMPLE_COLUMNS
    assert [row[0] for row in samples["data"]] == list(range(LOG_IMAGES))
    assert all(row[5] is not None and row[6].endswith(".png") and 0 <= row[7] <= 2 for row in samples["data"])
    pairs = runs["evaluate"].table("memorization/pairs")
    assert pairs["columns"] == review_tables.PAIR_COLUMNS
    assert len(pairs["data"]) == NUM_IMAGES
    closeness = [row[5] / row[6] for row in pairs["data"]]  # distance / the threshold that applied
    assert closeness == sorted(closeness)
    assert all(c <= 1 + 1e-5 for c, row in zip(closeness, pairs["data"]) if row[-1])  # a copy is within its threshold
    settings = runs["pick-sampler"].table("settings/table")
    assert [row[0] for row in settings["data"]] == ["ddpm:2", "ddim:1"]
    assert [row[-1] for row in settings["data"]] == [False, True]  # tolerance 1e9: the cheapest wins
    assert runs["pick-sampler"].summary["chosen/scheduler"] == "ddim"
    metrics = runs["utility"].table("metrics/table")
    assert metrics["data"] == [[arm, m, *v] for arm, ms in UTILITY_ARMS.items() for m, v in ms.items()]
    assert runs["utility"].summary["verdict"] == "no gain shown"
    plan = runs["balance"].table("plan/table")
    assert plan["data"] == [[c.name, c.real, c.synthetic] for c in BALANCE_CLASSES]


def test_project_flag_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert wandb_review.project_name(None) == "ddpm-lesion"
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert wandb_review.project_name(None) == "from-env"
    assert wandb_review.project_name("from-flag") == "from-flag"


def test_group_of_a_checkpoint_is_its_training_run(tmp_path):
    run = tmp_path / "melanoma"
    (run / "checkpoint-40" / "pipeline").mkdir(parents=True)
    (run / "train_config.yaml").write_text("seed: 0\n")
    assert wandb_review.group_of(run / "checkpoint-40" / "pipeline") == "melanoma"
    wandb_review.write_record(run, {"group": "renamed-later"})  # the recorded group wins over the folder name
    assert wandb_review.group_of(run) == "renamed-later"
    assert wandb_review.group_of("google/ddpm-ema-imagenet-64") == "ddpm-ema-imagenet-64"


def test_changed_weights_are_not_declared_as_the_logged_model(tmp_path):
    """After the weights change, the old artifact would be a false link: declare nothing
    (the sha256 in the run config still names the weights)."""
    run = save_tiny_pipeline(tmp_path / "run")
    (run / "train_config.yaml").write_text("seed: 0\n")
    logged = wandb_review.model_artifact("run", run)
    wandb_review.write_record(run, {"group": "run", "models": {".": {"name": logged.name,
                                                                     "digest": logged.manifest.digest()}}})
    (run / "sampler.json").write_text("{}")  # pick-sampler's record beside the model is not the model
    assert wandb_review.model_artifact("run", run).manifest.digest() == logged.manifest.digest()
    save_tiny_pipeline(run, seed=1)  # retrained weights
    assert wandb_review.declare_model(run=None, pipeline_dir=str(run)) is None
