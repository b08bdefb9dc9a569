"""Typed configs that become command-line flags, YAML files and the run's saved record.

One dataclass per script is the single source of truth: its fields (with `help` in the
field metadata) generate the argparse flags, `--config FILE.yaml` fills the same fields,
and the resolved values are written next to the results. Precedence is the one users
expect from HF scripts: dataclass defaults < YAML file < flags typed on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_text_atomic

T = TypeVar("T")


def option(default: Any, help: str, *, choices: list[str] | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that carries its own `--help` text."""
    meta = {"help": help, "choices": choices, "metavar": metavar}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) for `int`, `str | None`, `list[str]`, `Path | None`, enums."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    return annotation, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add `--config` and one `--field_name` flag per dataclass field.

    Defaults are SUPPRESSed so that `parse_config` can tell a flag the user typed from
    a default, which is what lets flags override a YAML file.
    """
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE.yaml",
                        help="Read options from a YAML file (keys are the flag names); flags typed here override it.")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, is_list = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = default.value if isinstance(default, enum.Enum) else default
        text = f.metadata.get("help", "")
        if "(default:" not in text:  # a help text that explains its own default (e.g. automatic) keeps it
            text += f" (default: {shown})"
        # argparse %-formats help texts: a literal "%" must be doubled
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if isinstance(kind, type) and issubclass(kind, enum.Enum) else kind
            if f.metadata.get("choices"):  # a command may offer fewer values than the enum has
                kwargs["choices"] = f.metadata["choices"]
            elif isinstance(kind, type) and issubclass(kind, enum.Enum):
                kwargs["choices"] = [e.value for e in kind]
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            if is_list:
                kwargs["action"] = "append"
        parser.add_argument(f"--{f.name}", **kwargs)


def _coerce(cls: type, values: dict[str, Any], source: str) -> Any:
    """Build `cls` from a dict, converting YAML/flag values to the annotated types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UserError(f"{source}: unknown option '{unknown[0]}'.{suggestion} Run with --help for the list of options.")
    converted = {}
    for name, value in values.items():
        kind, is_list = _base_type(hints[name])
        try:
            if value is None:
                converted[name] = None
            elif is_list:
                items = value if isinstance(value, list) else [value]
                converted[name] = [kind(v) for v in items]
            elif isinstance(kind, type) and issubclass(kind, enum.Enum):
                converted[name] = kind(value)
            else:
                converted[name] = kind(value)
        except (TypeError, ValueError) as err:
            raise UserError(f"{source}: option '{name}' has an invalid value {value!r} ({err}).") from None
    return cls(**converted)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str = "",
                 parser: argparse.ArgumentParser | None = None) -> T:
    """Parse flags (and an optional `--config` YAML) into an instance of `cls`."""
    parser = parser or argparse.ArgumentParser(description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, cls)
    typed = vars(parser.parse_args(argv))
    return config_from_sources(cls, typed)


def config_from_sources(cls: type[T], typed: dict[str, Any]) -> T:
    """Merge a `--config` YAML (if named in `typed`) with the flags the user typed."""
    values: dict[str, Any] = {}
    config_path = typed.pop("config", None)
    if config_path is not None:
        values.update(load_yaml(Path(config_path)))
    values.update(typed)
    return _coerce(cls, values, str(config_path) if config_path else "command line")


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """`cls` from a sub-command's parsed arguments, which may hold options of other
    dataclasses too (positional arguments, the sub-command's name)."""
    names = {f.name for f in dataclasses.fields(cls)} | {"config"}
    return config_from_sources(cls, {k: v for k, v in vars(args).items() if k in names})


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist.") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value, not a {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def to_plain_dict(cfg: Any) -> dict[str, Any]:
    """The config as YAML-safe builtins (paths and enums become strings)."""
    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(to_plain_dict(cfg), sort_keys=False))

