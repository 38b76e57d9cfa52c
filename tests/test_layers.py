"""The package's layer rule, read from the source (ast): imports point down, never up, and no two
packages import each other.

    cli                     the commands
    analysis                tables, statistics, figures, the findings report
    train                   one run, two rounds, checkpoints, results
    models                  backbones and the LLM branch (torch)
    llm                     token tables
    data, evaluate          datasets and splits; ranking and metrics
    study                   the study config, its grid and checks (torch-free, for the workflow)
    spec                    every name and setting of a run (torch-free)
    errors, io, config_files  the package's own utilities
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mltfr"
LAYERS = (("errors", "io", "config_files", "schemas"), ("spec",), ("study",), ("data", "evaluate"), ("llm",),
          ("models",), ("train",), ("analysis",), ("cli", "__main__"))
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its package under mltfr (or its root module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"   # `mltfr` itself: the version, ground floor


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The mltfr modules `path` imports, at any depth of the file (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("mltfr"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if (SRC.parent / node.module.replace(".", "/") / a.name).exists()
                         or (SRC.parent / f"{node.module.replace('.', '/')}/{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mltfr"))
    return found


EDGES = sorted({(module_name(p), target) for p in SRC.rglob("*.py") for target in imports(p)})


def test_every_package_has_a_layer():
    units = {unit(m) for m, _ in EDGES} | {unit(t) for _, t in EDGES}
    assert units <= set(LEVEL), f"packages without a layer in this test: {units - set(LEVEL)}"


@pytest.mark.parametrize("source, target", [e for e in EDGES if unit(e[0]) != unit(e[1])])
def test_imports_point_down(source, target):
    assert LEVEL[unit(target)] <= LEVEL[unit(source)], f"{source} imports {target}, a higher layer"


def test_no_two_packages_import_each_other():
    pairs = {(unit(s), unit(t)) for s, t in EDGES if unit(s) != unit(t)}
    assert not {frozenset(p) for p in pairs if p[::-1] in pairs}


def test_the_spec_layer_imports_only_the_utilities_and_itself():
    below = {unit(t) for s, t in EDGES if unit(s) == "spec"}
    assert below <= {"spec", "errors"}


def test_no_two_modules_share_a_name():
    """A module's name says what it holds, once: no `variants.py` in three packages."""
    names = [p.name for p in SRC.rglob("*.py") if p.name != "__init__.py"]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
