"""One case of a cache check (what a pipeline call varies) and the space hypothesis draws cases from.

A :class:`Case` names a run: ``steps`` (``num_inference_steps``), ``seed`` (the generator's), which
of the user's ``inputs`` (an index), and the optional ``batch_size`` (``num_images_per_prompt``),
``resolution`` ((height, width) in pixels), ``strength`` (img2img), ``guidance`` and ``params`` (any
other keyword the user varies). None means "the pipeline's default" and is not passed.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from hypothesis import strategies as st

__all__ = ["Case", "CaseSpace", "dimension", "int_range"]


@dataclass(frozen=True)
class Case:
    """One run of the target. Every field but ``steps`` and ``seed`` is optional (None: not varied)."""

    steps: int
    seed: int = 0
    input: int = 0
    batch_size: int | None = None
    resolution: tuple | None = None
    strength: float | None = None
    guidance: float | None = None
    params: tuple = field(default=())      # ((name, value), ...) sorted by name

    @property
    def extra(self) -> dict:
        """``params`` as a dict."""
        return dict(self.params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution) if self.resolution is not None else None
        d["params"] = {k: v for k, v in self.params}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Case":
        d = dict(d)
        if d.get("resolution") is not None:
            d["resolution"] = tuple(d["resolution"])
        d["params"] = tuple(sorted(dict(d.get("params") or {}).items()))
        return cls(**d)

    def key(self) -> str:
        """A stable text key (baselines are keyed by it)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def short(self) -> str:
        """``steps=7 seed=3 batch=2 ...``: the fields that are set."""
        parts = [f"steps={self.steps}", f"seed={self.seed}", f"input={self.input}"]
        for name, v in (("batch", self.batch_size), ("resolution", self.resolution), ("strength", self.strength),
                        ("guidance", self.guidance)):
            if v is not None:
                parts.append(f"{name}={'x'.join(map(str, v)) if name == 'resolution' else v}")
        parts += [f"{k}={v!r}" for k, v in self.params]
        return " ".join(parts)


def dimension(value, name: str, *, ints: bool = False) -> st.SearchStrategy:
    """The strategy of one case field. ``value``: None (not varied), a hypothesis strategy, one value,
    ``"lo:hi"`` or a ``(lo, hi)`` tuple (integers in that inclusive range; ``ints`` fields only), or a
    list/range of values (drawn from; shrinks toward the first). Raises ValueError naming ``name``."""
    if value is None:
        return st.none()
    if isinstance(value, st.SearchStrategy):
        return value
    if ints:
        value = int_range(value, name)
    if ints and isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value) \
                or value[0] > value[1]:
            raise ValueError(f"{name}: a range is (lo, hi) ints with lo <= hi, got {value!r}")
        return st.integers(int(value[0]), int(value[1]))
    if isinstance(value, (list, range)) or (isinstance(value, tuple) and not ints):
        values = list(value)
        if not values:
            raise ValueError(f"{name}: the list of values is empty")
        return st.sampled_from(values)
    return st.just(value)


def int_range(value, name: str):
    """``"lo:hi"`` as the tuple ``(lo, hi)`` and ``"n"`` as the int ``n``; anything else unchanged.
    Raises ValueError naming ``name`` for a string that is neither."""
    if not isinstance(value, str):
        return value
    lo, sep, hi = value.partition(":")
    try:
        return (int(lo), int(hi)) if sep else int(value)
    except ValueError:
        raise ValueError(f"{name} must be an int or 'lo:hi' (e.g. '20:50'), got {value!r}") from None


def _check_positive(values, name: str) -> None:
    if isinstance(values, (list, range, tuple)):
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1]
    elif isinstance(values, numbers.Integral) and not isinstance(values, bool):
        bad = [values] if values < 1 else []
    else:
        bad = []
    if bad:
        raise ValueError(f"{name} must be ints >= 1, got {bad}")


@dataclass
class CaseSpace:
    """What :func:`~taylorseer_fx.testing.check_cache` varies; each field as :func:`dimension` takes it."""

    steps: Any = (10, 30)
    seeds: Any = range(0, 1000)
    inputs: int = 1                    # how many inputs the user listed
    batch_sizes: Any = None
    resolutions: Any = None
    strengths: Any = None
    guidance: Any = None
    vary: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.steps, self.seeds = int_range(self.steps, "steps"), int_range(self.seeds, "seeds")
        self.batch_sizes = int_range(self.batch_sizes, "batch_sizes")
        _check_positive(self.steps, "steps")
        _check_positive(self.batch_sizes if self.batch_sizes is not None else [], "batch_sizes")
        if not isinstance(self.vary, Mapping) or not all(isinstance(k, str) for k in self.vary):
            raise ValueError(f"vary must be a dict of keyword name -> values, got {self.vary!r}")

    def strategy(self) -> st.SearchStrategy[Case]:
        res = self.resolutions
        if isinstance(res, (list, tuple, range)) and not isinstance(res, st.SearchStrategy):
            res = [r if isinstance(r, tuple) else (int(r), int(r)) for r in res]
        vary = {k: dimension(v, f"vary[{k!r}]") for k, v in sorted(self.vary.items())}
        return st.builds(
            lambda steps, seed, inp, b, r, s, g, extra: Case(steps, seed, inp, b, r, s, g, tuple(sorted(extra.items()))),
            dimension(self.steps, "steps", ints=True), dimension(self.seeds, "seeds", ints=True),
            st.integers(0, max(self.inputs - 1, 0)), dimension(self.batch_sizes, "batch_sizes", ints=True),
            dimension(res, "resolutions"), dimension(self.strengths, "strengths"),
            dimension(self.guidance, "guidance"), st.fixed_dictionaries(vary))


