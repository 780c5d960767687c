"""Imports point one way: backbone <- detector <- eval / runtime <- service, with the commands that need two of
them (training, export) in tools/ on top. A cycle between packages is how a change in one breaks the other."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each package and the project packages it may import (lazily inside a function counts too).
ALLOWED = {
    "backbone": set(),
    "detector": {"backbone"},
    "eval": {"backbone", "detector"},
    "runtime": {"backbone", "detector"},
    "service": {"backbone", "detector", "runtime"},
    "tools": {"backbone", "detector", "eval", "runtime"},
}
# What serving an export needs must not pull torch in through detector: its torch-free modules only.
TORCH_FREE = {"detector.card", "detector.categories", "detector.config"}


def imports_of(path: Path) -> set[str]:
    """The absolute module names ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong


def test_the_onnx_engine_reads_the_model_card_without_torch_modules():
    for name in ("card.py", "onnx.py", "__init__.py"):
        detector_modules = {n for n in imports_of(REPO / "runtime" / name) if n.split(".")[0] == "detector"}
        assert detector_modules <= TORCH_FREE, (name, detector_modules)
