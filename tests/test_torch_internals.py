"""The one door to torch's private API (``torch_internals.py``): every private symbol resolves on the
torch under test, or the failure names the symbol and the torch version; no other module reaches into
torch's private API (issue 28, item 1)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import torch

from taylorseer_fx import torch_internals as ti

PACKAGE = pathlib.Path(ti.__file__).resolve().parent


@pytest.mark.parametrize("name", sorted(ti.SYMBOLS))
def test_every_private_symbol_resolves(name):
    try:
        obj = ti.symbol(name)
    except ti.TorchInternalsError as e:                  # the message a user would see
        pytest.fail(f"torch {torch.__version__}: {e}")
    if name not in ti.OPTIONAL:
        assert obj is not None, f"torch {torch.__version__}: {ti.SYMBOLS[name]} resolved to None"


def test_a_moved_symbol_fails_loudly_naming_it_and_the_torch_version(monkeypatch):
    monkeypatch.setitem(ti.SYMBOLS, "moved", "torch._guards:NoSuchThing")
    with pytest.raises(ti.TorchInternalsError, match=rf"torch\._guards:NoSuchThing.*torch {re.escape(torch.__version__)}"):
        ti.symbol("moved")


def _private_torch_uses(tree: ast.AST) -> list[str]:
    """Dotted names and imports that reach ``torch._*`` (or a private submodule), except
    ``torch._dynamo.reset`` / ``torch._dynamo.config`` (documented as public)."""
    found, chains = [], set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            names = [mod] if mod else [a.name for a in node.names]
            found += [n for n in names if n and n.startswith("torch") and "._" in n]
        elif isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "torch":
                chains.add(".".join(["torch"] + parts[::-1]))
    for dotted in chains:
        if any(other.startswith(dotted + ".") for other in chains):
            continue                                    # the inner part of a longer chain
        private = [p for p in dotted.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
        if private and not dotted.startswith(("torch._dynamo.reset", "torch._dynamo.config")):
            found.append(dotted)
    return found


def test_no_other_module_reaches_into_torchs_private_api():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "torch_internals.py":
            continue
        uses = _private_torch_uses(ast.parse(path.read_text()))
        if uses:
            offenders[str(path.relative_to(PACKAGE))] = sorted(set(uses))
    assert not offenders, offenders
