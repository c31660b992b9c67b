"""Which graph input is what: parameters/buffers (static across calls) and the step coordinate.

Works on the placeholders of a dynamo ``GraphModule`` (torch 2.13); knows nothing of regions or state.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import fx

__all__ = ["TIMESTEP_NAMES", "is_static_placeholder", "find_timestep"]

#: whole placeholder names (lower case, as in ``node.name``) taken as the step coordinate input.
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas")

_STATIC_SOURCES = ("ParamBufferSource", "NNModuleSource")


def is_static_placeholder(node: fx.Node, example=None) -> bool:
    """True for placeholders that hold parameters/buffers (dynamo source through a module), i.e.
    inputs that are constant across calls."""
    if isinstance(example, torch.nn.Parameter):
        return True
    src = getattr(node, "_dynamo_source", None)
    while src is not None:
        name = type(src).__name__
        if any(s in name for s in _STATIC_SOURCES) and "NotNNModule" not in name:
            return True
        src = getattr(src, "base", None)
    return False


def _placeholder_names(node: fx.Node) -> Iterable[str]:
    yield node.name.lower()
    yield str(node.target).lower()


def find_timestep(gm: fx.GraphModule, timestep_arg: str | None = None) -> fx.Node | None:
    """The placeholder holding the step coordinate, or None.

    Matches the *whole* placeholder name ``l_<name>_``, ``l_kwargs_<name>_`` or ``l_stack<k>_1_<name>_``
    for ``<name>`` in :data:`TIMESTEP_NAMES` (in that order of preference), or ``timestep_arg`` when
    given (also matched against the placeholder name itself). The third is a keyword argument of a
    forward that a hook called after a graph break: accelerate's offload hooks
    (``enable_model_cpu_offload``) return ``(args, kwargs)`` from ``pre_forward``, and dynamo names the
    resumed frame's inputs ``stack0[1]['timestep']``. Parameter placeholders
    (``..._timestep_embedder_...``) never match. The value is in the model's own units (e.g. 0..1000 or a
    sigma)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder" and not is_static_placeholder(n)]
    names = (timestep_arg,) if timestep_arg else TIMESTEP_NAMES
    for name in names:
        want = re.compile(r"l_(?:kwargs_|stack\d+_1_)?%s_|%s" % (re.escape(name.lower()), re.escape(name.lower())))
        for n in phs:
            if any(want.fullmatch(s) for s in _placeholder_names(n)):
                return n
    return None
