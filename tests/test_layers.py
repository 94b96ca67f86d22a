"""The package's layer order, read from the code's own imports (every import, also inside functions).

A module may import from its own unit (a subpackage, or a top-level module) and from units of a
LOWER layer; never upward and never sideways into another unit of the same layer, so no cycle
can form and the low layers stay usable alone. Command-line and deployment entry points
(``tympan.cli``, ``tympan.launch``, ``tympan.*.cli``, ``tympan.*.modal_app``) sit on top. No
module takes another module's private names (``from x import _y``) or private modules
(``x._y``) from outside their own unit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tympan"

#: lowest first; units in one tuple share a layer and must not import each other
LAYERS: list[tuple[str, ...]] = [
    ("tympan", "tympan.errors"),
    ("tympan.io", "tympan.names", "tympan.warnlog", "tympan.machine", "tympan.progress"),
    ("tympan.download", "tympan.contracts", "tympan.stats", "tympan.features", "tympan.recording_meta",
     "tympan.ports"),
    ("tympan.audio", "tympan.models", "tympan.figures"),
    ("tympan.corruptions", "tympan.bundle", "tympan.cache"),
    ("tympan.datasets",),
    ("tympan.inference",),
    ("tympan.batch",),
    ("tympan.live",),
    ("tympan.training",),
    ("tympan.diagnostics",),
    ("tympan.adaptation",),
    ("tympan.serving",),
    ("tympan.dashboard",),
    ("entry",),
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    if module in ("tympan.cli", "tympan.__main__", "tympan.launch") or module.startswith("tympan.dashboard.entry"):
        return "entry"
    if len(parts) >= 3 and parts[-1] in ("cli", "modal_app"):
        return "entry"
    return ".".join(parts[:2])


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every absolute import of a tympan module in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("tympan")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tympan"):
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in MODULES}
    assert units <= set(RANK), f"put these in LAYERS: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_upward_or_sideways_import(path: Path) -> None:
    me = unit_of(module_name(path))
    bad = []
    for line, target, _ in imports(path):
        other = unit_of(target)
        if other == me:
            continue
        if RANK[other] > RANK[me] or (RANK[other] == RANK[me] and me != "entry"):
            bad.append(f"line {line}: {me} (layer {RANK[me]}) imports {target} (layer {RANK[other]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_names_across_units(path: Path) -> None:
    me = unit_of(module_name(path))
    bad = []
    for line, target, names in imports(path):
        if unit_of(target) == me:
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private or any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
            bad.append(f"line {line}: from {target} import {', '.join(names) or '*'}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """An upward import written into a module is found (the test can fail)."""
    fake = tmp_path / "mod.py"
    fake.write_text("def f():\n    from tympan.serving.app import create_app\n")
    (line, target, names), = imports(fake)
    assert (line, target, names) == (2, "tympan.serving.app", ["create_app"])
    assert RANK[unit_of(target)] > RANK[unit_of("tympan.inference.predictor")]
