"""The space hypothesis draws the cases of a cache check from.

A :class:`~taylorseer_fx.integrations.targets.Case` names a run: ``steps`` (``num_inference_steps``), ``seed`` (the generator's), which
of the user's ``inputs`` (an index), and the optional ``batch_size`` (``num_images_per_prompt``),
``resolution`` ((height, width) in pixels), ``strength`` (img2img), ``guidance`` and ``params`` (any
other keyword the user varies). None means "the pipeline's default" and is not passed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from hypothesis import strategies as st

from ..integrations.targets import Case

__all__ = ["CaseSpace", "dimension", "int_range"]


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


