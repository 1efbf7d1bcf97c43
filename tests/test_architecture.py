"""The folders import one way (docs/architecture.md), and a module holds one whole concern: none past 600 lines, none
below 60 unless it is a package's `__init__` or an entry point.

Every import statement counts, including those inside functions (a lazy import is still a dependency), and
`importlib.import_module("...")` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Layer of each package: a package may import its own layer's modules only where ALLOWED_SIDEWAYS says so.
LAYERS = {
    "common": 0,
    "datasets": 1,
    "backbone": 2,
    "ssdlite": 3,
    "deeplab_mobile": 3,
    "train": 4,
    "eval": 4,
    "demo": 5,
    "tools": 5,
    "bench": 5,
}
# train validates with eval's metrics; the demo and the benchmarks use tools' weight importers and complexity
# counter (tools never imports them back).
ALLOWED_SIDEWAYS = {("train", "eval"), ("demo", "tools"), ("bench", "tools")}
# Layers above datasets that still must not read data: models take tensors, never files.
NEVER = {("backbone", "datasets"), ("ssdlite", "datasets"), ("deeplab_mobile", "datasets")}
MAX_LINES, MIN_LINES = 600, 60
# Modules under MIN_LINES that are each one whole concern of their own (the error types, a head's loss or its table
# of named weights, the allocator tuning, TensorFlow's tensor layouts, the label-name table).
SMALL_BUT_WHOLE = {
    "common/errors.py",
    "common/allocator.py",
    "common/labels.py",
    "backbone/tf/layout.py",
    "deeplab_mobile/loss.py",
    "deeplab_mobile/named_weights.py",
    "ssdlite/named_weights.py",
}


def modules() -> list[Path]:
    return sorted(path for package in LAYERS for path in (REPO / package).rglob("*.py"))


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and "import_module" in (getattr(node.func, "attr", None), getattr(node.func, "id", None))
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported` (two top-level packages of the suite), or None when it may."""
    if importer == imported:
        return None
    if (importer, imported) in NEVER:
        return "model packages never import datasets"
    if LAYERS[imported] < LAYERS[importer]:
        return None
    if LAYERS[imported] == LAYERS[importer] and (importer, imported) in ALLOWED_SIDEWAYS:
        return None
    return "imports a higher layer" if LAYERS[imported] > LAYERS[importer] else "imports a sibling of its layer"


def layering_violations() -> list[str]:
    found = []
    for path in modules():
        importer = path.relative_to(REPO).parts[0]
        for line, name in imported_names(ast.parse(path.read_text(), str(path))):
            top = name.split(".")[0]
            if top in LAYERS and (why := violation(importer, top)):
                found.append(f"{path.relative_to(REPO)}:{line}: {importer} → {name}: {why}")
    return found


def test_folders_import_one_way():
    assert layering_violations() == []


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("train", "eval", True),
        ("eval", "train", False),
        ("ssdlite", "datasets", False),
        ("ssdlite", "deeplab_mobile", False),
        ("deeplab_mobile", "backbone", True),
        ("common", "datasets", False),
        ("demo", "train", True),
        ("tools", "demo", False),
        ("datasets", "common", True),
        ("backbone", "datasets", False),
        ("demo", "bench", False),
        ("tools", "bench", False),
        ("bench", "tools", True),
    ],
)
def test_the_rule_itself(importer, imported, allowed):
    """Guards the walker above: the edges the layering names are judged as docs/architecture.md says."""
    assert (violation(importer, imported) is None) is allowed


def test_the_walker_sees_imports_inside_functions():
    tree = ast.parse(
        "def f():\n    import train.engine\n    from eval import cli\n"
        "    importlib.import_module('demo.video')\n    import_module('bench.run')\n"
    )
    assert sorted(name for _, name in imported_names(tree)) == ["bench.run", "demo.video", "eval", "train.engine"]


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in [*modules(), *REPO.glob("*.py"), *(REPO / "_build").glob("*.py")]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def is_entry_point(path: Path) -> bool:
    return path.name == "__init__.py" or 'if __name__ == "__main__":' in path.read_text()


def test_no_fragments_below_60_lines():
    """Fragments are merged into the module they serve (train/ and tools/ have none left; the few small modules
    elsewhere are listed, so a new one is a decision, not an accident)."""
    short = {
        str(p.relative_to(REPO)): n
        for p in modules()
        if not is_entry_point(p) and (n := len(p.read_text().splitlines())) < MIN_LINES
    }
    assert not [name for name in short if name.startswith(("train/", "tools/"))], short
    assert set(short) <= SMALL_BUT_WHOLE, short
