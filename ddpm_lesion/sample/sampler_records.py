"""The JSON records beside a model that name the sampler to use with it: `distilled.json`
(written by `ddpm-lesion distill`) and `sampler.json` (written by `pick-sampler`).

They are read, and checked, before the model is loaded: a typo would otherwise surface as a
bad sampler after minutes of loading, or silently as poor images.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpm_lesion.core import run_files
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.sample.samplers import SchedulerName


def read_distilled(pipeline_dir: str | Path) -> dict | None:
    """The record of a distilled model (`ddpm-lesion distill`), or None for any other model or a hub id.

    A distilled network learned the jumps of one sampler at one step count (its `scheduler`
    and `num_inference_steps`) and gives poor images with any other, so sampling reads them
    from here.
    """
    return _read_sampler_record(Path(pipeline_dir) / run_files.DISTILLED,
                                "`ddpm-lesion distill` writes it to name the sampler the model was distilled for",
                                "rerun the distillation, or correct the file")


def read_picked_sampler(pipeline_dir: str | Path) -> dict | None:
    """The sampler `ddpm-lesion pick-sampler` measured as good enough for this model (with the
    `model_sha256` of the weights it measured), or None when it was never run here."""
    return _read_sampler_record(Path(pipeline_dir) / run_files.PICKED_SAMPLER,
                                "`ddpm-lesion pick-sampler` writes it to name the fastest sampler as good as "
                                "DDPM-50 on this model", "rerun ddpm-lesion pick-sampler, or delete the file")


def _read_sampler_record(path: Path, written_by: str, fix: str) -> dict | None:
    """A model folder's JSON record of the sampler to use, checked now: a typo would otherwise
    surface as a bad sampler after the model is loaded, or silently as poor images (see the module docstring)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"it is not valid JSON ({err})"
    else:
        problem = _sampler_record_problem(record)
    if problem:
        raise UserError(f"{path} is malformed: {problem}. {written_by}, e.g. {{\"scheduler\": \"ddim\", "
                        f"\"num_inference_steps\": 4, ...}}: {fix}.")
    return record


def _sampler_record_problem(record: object) -> str | None:
    """What is wrong with a parsed sampler record (only the fields sampling uses), or None."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    names = [s.value for s in SchedulerName]
    if record.get("scheduler") not in names:
        return f"'scheduler' is {record.get('scheduler')!r}, not one of {', '.join(names)}"
    steps = record.get("num_inference_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        return f"'num_inference_steps' is {steps!r}, not a positive integer"
    return None
