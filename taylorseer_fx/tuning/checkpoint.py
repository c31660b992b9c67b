"""A tuning's progress on disk, so an interrupted tuning resumes where it stopped.

The file (JSON) holds a fingerprint of what is tuned (the model's inputs, seeds, budget, base policy,
inner backend, regions) and every candidate evaluated so far, per step count: ``{"28": {"0,1,2,7,...":
mean relative L2, "threshold 0.125": ...}}`` (a placement's compute steps, or a tuned threshold). The search is deterministic, so a resumed search asks for the same placements
and finds them here instead of running the pipeline. A file written for another tuning is refused
(ValueError naming both fingerprints' differences), never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["Checkpoint", "fingerprint"]


def _digest(value: Any) -> Any:
    """A JSON-able summary of an input value: tensors by shape, dtype and a hash of their bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        raw = t.flatten().view(torch.uint8).numpy().tobytes()
        return {"tensor": list(t.shape), "dtype": str(t.dtype), "sha": hashlib.sha256(raw).hexdigest()[:16]}
    if isinstance(value, Mapping):
        return {str(k): _digest(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return repr(value)


def fingerprint(**what: Any) -> dict:
    """What a tuning depends on, JSON-able (tensors hashed)."""
    return json.loads(json.dumps(_digest(what), sort_keys=True))


class Checkpoint:
    """Placements evaluated so far (``get``/``put`` per step count), written after each new one when a
    ``path`` is given (atomically: a temporary file renamed), read back on creation."""

    def __init__(self, path: str | os.PathLike | None, fingerprint: dict):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self.values: dict = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"tune: checkpoint {self.path} cannot be read ({e}); delete it to start over") from None
            if data.get("fingerprint") != fingerprint:
                old = data.get("fingerprint") or {}
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise ValueError(f"tune: checkpoint {self.path} was written for another tuning (differs in "
                                 f"{diff}); pass another checkpoint path or delete it")
            self.values = {int(n): {k: float(v) for k, v in d.items()}
                           for n, d in data.get("evaluations", {}).items()}

    @property
    def resumed(self) -> int:
        """How many evaluations were read back from the file."""
        return sum(len(d) for d in self.values.values())

    @staticmethod
    def key(candidate) -> str:
        """A placement (steps) as ``"0,1,2,7"``; a string (``"threshold 0.125"``) as it is."""
        return candidate if isinstance(candidate, str) else ",".join(map(str, candidate))

    def get(self, steps: int, candidate) -> float | None:
        return self.values.get(steps, {}).get(self.key(candidate))

    def put(self, steps: int, candidate, value: float) -> None:
        self.values.setdefault(steps, {})[self.key(candidate)] = float(value)
        if self.path is None:
            return
        data = {"fingerprint": self.fingerprint,
                "evaluations": {str(n): dict(d) for n, d in self.values.items()}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)
