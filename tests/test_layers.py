"""The package's layers import only downward: forecast < policy < runtime < graph < integrations <
testing, demo < check (its command) < tuning (reuses check's loader) < the package root, with ``torch_internals`` (the one door to torch's
private API) at the bottom. Every import counts, function-level ones included. The check fails on a
deliberate upward import (shown on a copy of the package)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import taylorseer_fx

PACKAGE = Path(taylorseer_fx.__file__).resolve().parent

#: rank of each top-level unit of the package: a module may import its own unit or a lower rank
LAYERS = {"torch_internals": 0, "forecast": 1, "policy": 2, "runtime": 3, "graph": 4, "integrations": 5, "serving": 5,
          "testing": 6, "demo": 6, "check": 7, "tuning": 8, "": 9}


def _module_name(path: Path, root: Path) -> list:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, root: Path) -> list:
    """``(line, dotted target under the package, as a list)`` of every import of the package."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == root.name:
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None:          # from . import x: x is a module of that package
                out += [(node.lineno, target + [a.name]) for a in node.names]
            else:
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == root.name]
    return out


def violations(root: Path) -> list:
    """Every import of ``root`` (a copy of the package) that goes up or sideways between units, and
    every top-level unit not in :data:`LAYERS`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        unit = name[0] if name else ""
        if unit not in LAYERS:
            found.append(f"{path.relative_to(root)}: {unit!r} is in no layer (add it to LAYERS)")
            continue
        for line, target in _imports(path, root):
            to = target[0] if target else ""
            if to != unit and to in LAYERS and LAYERS[to] >= LAYERS[unit]:
                found.append(f"{path.relative_to(root)}:{line} imports taylorseer_fx.{'.'.join(target)} "
                             f"({to or 'the package root'}, rank {LAYERS[to]}) from {unit or 'the root'} "
                             f"(rank {LAYERS[unit]})")
    return found


def test_every_import_of_the_package_goes_down_its_layers():
    assert violations(PACKAGE) == []


def test_the_check_fails_on_a_deliberate_upward_import(tmp_path):
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "__pycache__"))
    assert violations(copy) == []
    forms = copy / "forecast" / "forms.py"
    forms.write_text(forms.read_text() + "\n\ndef _late():\n    from ..graph.backend import taylorseer_backend\n")
    (copy / "runtime" / "steps.py").write_text("from taylorseer_fx import compile_pipeline\n")
    (copy / "policy" / "presets.py").write_text("from ..policy import base\nfrom .. import runtime\n")
    (copy / "loose.py").write_text("")
    found = violations(copy)
    assert any(v.startswith("forecast/forms.py:") and "taylorseer_fx.graph.backend" in v for v in found)
    assert any(v.startswith("runtime/steps.py:1") and "the package root" in v for v in found)
    assert any(v.startswith("policy/presets.py:2") and "taylorseer_fx.runtime" in v for v in found)
    assert any("'loose' is in no layer" in v for v in found)
    assert not any(v.startswith("policy/presets.py:1") for v in found)         # its own layer
    assert len(found) == 4
