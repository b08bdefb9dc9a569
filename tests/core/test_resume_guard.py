"""The one resume guard: everything must match except what a command lists as free to change."""

from __future__ import annotations

import dataclasses

import pytest

from ddpm_lesion.balance.pipeline import MAY_CHANGE_ON_RESUME as BALANCE_MAY_CHANGE
from ddpm_lesion.balance.pipeline import BalanceConfig
from ddpm_lesion.core.config import to_plain_dict
from ddpm_lesion.core.resume_guard import resume_differences
from ddpm_lesion.sample.sample_config import MAY_CHANGE_ON_RESUME as SAMPLE_MAY_CHANGE
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.train.distill import MAY_CHANGE_ON_RESUME as DISTILL_MAY_CHANGE
from ddpm_lesion.train.distill import DistillConfig
from ddpm_lesion.train.loop import MAY_CHANGE_ON_RESUME as TRAIN_MAY_CHANGE
from ddpm_lesion.train.loop import TrainConfig

COMMANDS = [(TrainConfig, TRAIN_MAY_CHANGE), (DistillConfig, DISTILL_MAY_CHANGE), (SampleConfig, SAMPLE_MAY_CHANGE),
            (BalanceConfig, BALANCE_MAY_CHANGE)]


def test_hand_worked_differences():
    saved = {"seed": 0, "max_train_steps": 100, "learning_rate": 1e-4, "old_option": 1}
    current = {"seed": 1, "max_train_steps": 500, "learning_rate": 1e-4, "new_option": "x"}
    # seed differs and is checked; max_train_steps differs but may change; old/new options are
    # each in one record only, so they say nothing about this run.
    assert resume_differences(saved, current, {"max_train_steps"}) == ["seed: 0 -> 1"]
    assert resume_differences(saved, saved, ()) == []


@pytest.mark.parametrize("config_class,may_change", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_an_option_added_later_is_checked_without_being_listed(config_class, may_change):
    """The point of the polarity: a new field is protected by default."""
    extended = dataclasses.make_dataclass("Extended", [("brand_new_option", int, dataclasses.field(default=1))],
                                          bases=(config_class,))
    saved = to_plain_dict(extended())
    assert resume_differences(saved, {**saved, "brand_new_option": 2}, may_change) == ["brand_new_option: 1 -> 2"]


@pytest.mark.parametrize("config_class,may_change", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_what_may_change_names_real_options(config_class, may_change):
    """A renamed option left in a may-change list would silently stop being free to change."""
    assert may_change <= {f.name for f in dataclasses.fields(config_class)}


@pytest.mark.parametrize("config_class,may_change", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_the_seed_and_the_data_are_never_free_to_change(config_class, may_change):
    fields = {f.name for f in dataclasses.fields(config_class)}
    assert "seed" in fields and not may_change & {"seed", "train_data_dir", "resolution", "labels_csv", "label_filter"}
