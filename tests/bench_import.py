"""Import a script of ``benchmarks/`` in a test (the benchmarks import their ``common`` by path)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent.parent / "benchmarks")


@contextlib.contextmanager
def benchmark_module(name: str):
    """``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on ``sys.path`` while in use."""
    sys.path.insert(0, BENCH)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)
