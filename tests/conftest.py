"""Fixtures and the test process's environment; the helpers they use live in `tests/helpers.py`,
a plain module tests import. Nothing here touches a hub: the environment is made offline
before any test runs.

Under pytest-xdist (`make test` runs two workers) each worker computes on one thread, and
so do the subprocesses that inherit its environment (those started through
`tests/launch_utils.py` are set to one thread there): two workers each spinning two OpenMP
threads on two cores slow each other down many times over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import save_tiny_pipeline, write_images

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def tiny_pipeline_dir(tmp_path: Path) -> Path:
    return save_tiny_pipeline(tmp_path / "tiny-ddpm")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 8)
    return folder


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An offline wandb writing under tmp_path. wandb keeps process-wide settings from its
    first `init`, so it is torn down before and after for the environment to take effect."""
    import wandb

    folder = tmp_path / "wandb-root"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    yield folder / "wandb"
    wandb.teardown()
