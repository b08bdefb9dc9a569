"""The README's Layout section names every module of the package, and nothing else."""

from __future__ import annotations

import re

from tests.helpers import REPO


def readme_modules() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    modules, package = set(), None
    for line in block.splitlines():
        if match := re.fullmatch(r"  (\w+)/\s.*", line):
            package = match[1]
        elif match := re.fullmatch(r"    (\w+\.py)\s.*", line):
            modules.add(f"{package}/{match[1]}")
    return modules


def package_modules() -> set[str]:
    root = REPO / "ddpm_lesion"
    return {str(path.relative_to(root)) for path in root.glob("*/*.py") if path.name != "__init__.py"}


def test_readme_layout_lists_every_module():
    listed, present = readme_modules(), package_modules()
    assert listed - present == set(), "README names modules that do not exist"
    assert present - listed == set(), "modules missing from the README's Layout section"


def test_tests_mirror_the_package():
    """Every test file sits in the folder of the sub-package it tests (or scripts/)."""
    allowed = {path.name for path in (REPO / "ddpm_lesion").iterdir() if path.is_dir() and path.name != "__pycache__"}
    folders = {path.parent.name for path in (REPO / "tests").glob("*/test_*.py")}
    assert folders <= allowed | {"scripts"}
    assert not list((REPO / "tests").glob("test_*.py")), "test files belong in a sub-package folder"
