"""Where a pretrained model's files are, in which layout, and whether its weights are safe to read.

Two layouts exist for the same `DDPMPipeline`: the one `save_pretrained` writes (`unet/`,
`scheduler/`, `model_index.json`) and the flat one the original Google checkpoints
(`google/ddpm-cifar10-32`, `google/ddpm-ema-church-256`, ...) ship: the UNet's `config.json`
and weights and a `scheduler_config.json` side by side at the top. Both are resolved here
once, to a local folder, so loading, the resolution check and the model card all see the
same files, and a hub id is pinned to the snapshot commit that was actually read.

Several of those checkpoints ship only a pickled `diffusion_pytorch_model.bin`. diffusers
0.42 reads it with `torch.load(weights_only=True)`, but turns a refusal into "Unable to
locate the file", and an older diffusers would not refuse at all; so the file is checked
here, with the same restricted unpickler, before diffusers ever sees it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm_lesion.core.errors import UserError

SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
# What a DDPM pipeline needs from a hub repository (not its sample images or README):
# configs first, safetensors if there are any; the pickled weights only when they are all there is.
_HUB_FILES = ["model_index.json", UNET_CONFIG, SCHEDULER_CONFIG, f"unet/{UNET_CONFIG}",
              f"scheduler/{SCHEDULER_CONFIG}", SAFETENSORS_WEIGHTS, f"unet/{SAFETENSORS_WEIGHTS}"]
_HUB_PICKLE_FILES = [PICKLE_WEIGHTS, f"unet/{PICKLE_WEIGHTS}"]


@dataclass(frozen=True)
class ModelSource:
    """A pretrained model resolved to local files."""

    name: str  # as the user gave it: a hub id or a folder
    folder: Path  # the local folder (for a hub id, its snapshot in the Hugging Face cache)
    revision: str | None  # the snapshot's commit hash for a hub id, None for a local folder
    unet_subfolder: str | None  # "unet" in the save_pretrained layout, None in the flat one
    scheduler_config: Path | None  # None for a bare UNet folder: diffusers' default schedule applies

    @property
    def unet_folder(self) -> Path:
        return self.folder / self.unet_subfolder if self.unet_subfolder else self.folder

    @property
    def weights(self) -> Path | None:
        """The file diffusers reads: safetensors where present (its own preference), else the pickle."""
        for name in (SAFETENSORS_WEIGHTS, PICKLE_WEIGHTS):
            if (self.unet_folder / name).is_file():
                return self.unet_folder / name
        return None


def is_hub_id(name: str) -> bool:
    return not Path(name).exists()


def resolve(name: str, revision: str | None = None) -> ModelSource:
    """The local files of `name`, a folder or a hub id (read from the Hugging Face cache, or
    downloaded unless `HF_HUB_OFFLINE` is set), with pickled weights checked. Raises
    `OSError`/`ValueError` when there is nothing to load, for the caller to turn into its
    own message, and `UserError` for weights that must not be read."""
    source = locate(name, revision)
    if source.weights is not None and source.weights.name == PICKLE_WEIGHTS:
        check_pickle_weights(source.weights)
    return source


def locate(name: str, revision: str | None = None) -> ModelSource:
    """`resolve` without reading the weights: for describing a model already loaded."""
    folder = _hub_snapshot(name, revision) if is_hub_id(name) else Path(name)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if (folder / "unet" / UNET_CONFIG).is_file():
        subfolder: str | None = "unet"
    elif (folder / UNET_CONFIG).is_file():
        subfolder = None
    else:
        raise FileNotFoundError(f"no {UNET_CONFIG} in {folder} or {folder / 'unet'}")
    scheduler = next((p for p in (folder / "scheduler" / SCHEDULER_CONFIG, folder / SCHEDULER_CONFIG) if p.is_file()),
                     None)
    in_cache = folder.parent.name == "snapshots"
    return ModelSource(name, folder, folder.name if in_cache else None, subfolder, scheduler)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of a hub model: configs and safetensors, plus the pickled weights
    only for a model that has no safetensors (both would double a 455 MB download)."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES))
    if not any((folder / f).is_file() for f in (SAFETENSORS_WEIGHTS, f"unet/{SAFETENSORS_WEIGHTS}")):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES + _HUB_PICKLE_FILES))
    return folder


def check_pickle_weights(path: Path) -> None:
    """Refuse a pickled weights file that holds anything but tensors, without running it.

    `torch.load(weights_only=True)` unpickles only tensors, containers and numbers and
    stops at the first other global (e.g. `os.system` in a planted `__reduce__`) before
    calling anything. Zip-format files are memory-mapped, so the check reads little."""
    try:
        mmap = zipfile.is_zipfile(path)
        torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # torch's message goes on to suggest weights_only=False, the one thing not to do: keep its diagnosis
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unpickler error" in line]
        reason = "torch.load(weights_only=True) refused it" + (f": {found[0]}" if found else "")
        raise UserError(
            f"refusing to load {path}: this pickled weights file holds more than tensors, so reading it could "
            f"run code ({reason}). Nothing was loaded or trained. Use a model that ships "
            f"{SAFETENSORS_WEIGHTS}, or convert this file to safetensors on a machine where you trust its source."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a readable torch weights file ({type(err).__name__}: {err}). Download it "
                        "again (delete it from the Hugging Face cache first) or use another model.") from None


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
