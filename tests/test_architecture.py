"""The package's shape: one owner per folder's file names, small modules, and every package installed.

These read the source, not behaviour: they fail when a module starts spelling a run or report folder's file
name instead of asking :mod:`mnist_ray.files.folders`, grows past the size a reader takes in at once, or a new
subpackage is missing from the wheel.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

from mnist_ray.files import folders
from tests.conftest import REPO

LIBRARY = [p for top in ("mnist_ray", "jobs") for p in sorted((REPO / top).rglob("*.py"))]
OWNER = REPO / "mnist_ray" / "files" / "folders.py"
MAX_LINES = 300


def folder_file_names() -> set[str]:
    """Every file name a run, sweep, report or prediction folder holds, as :mod:`~mnist_ray.files.folders` spells it."""
    names = {
        getattr(cls, attr)
        for cls in (folders.RunFolder, folders.ReportFolder)
        for attr, value in vars(cls).items()
        if isinstance(value, folders.File)
    }
    names |= {Path(p).name for p in folders.reports_history("x")} | {folders.PREDICTIONS}
    names |= {n.rsplit("/", 1)[-1] for n in names}
    return {n for n in names if "." in n} | {folders.RAY_CHECKPOINT_PREFIX}  # "train" is a word too


def string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``path`` that is not a docstring (a bare string statement)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_folder_file_names_are_spelled_by_their_owner_only():
    names = folder_file_names()
    assert {"history.parquet", "config.json", "summary.md", "metrics.parquet", "model.pt", "sweep.json"} <= names
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w-])")
    spelled = [
        f"{path.relative_to(REPO)}:{line}: {match.group(1)}"
        for path in LIBRARY
        if path != OWNER
        for line, text in string_constants(path)
        for match in [pattern.search(text)]
        if match
    ]
    assert not spelled, "file names of a folder spelled outside mnist_ray/files/folders.py:\n" + "\n".join(spelled)


def test_the_name_check_finds_a_spelled_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Writes history.parquet (a docstring: allowed)."""\nPATH = "runs/x/history.parquet"\n')
    assert [text for _, text in string_constants(sample)] == ["runs/x/history.parquet"]


def test_no_library_module_is_longer_than_a_reader_takes_in():
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in LIBRARY if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(long)


def test_every_package_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mnist_ray").rglob("__init__.py")}
    assert listed == found
