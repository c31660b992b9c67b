"""The backend's arguments: defaults, names and their checks (a ValueError naming the argument and what
it may be). Knows nothing of graphs or of the runtime.
"""

from __future__ import annotations

import os
import re
from typing import Callable

from ..policy.base import Policy
from ..policy.presets import load_policy
from .select import ALIASES, KINDS
from ..torch_internals import backend_registry

__all__ = ["DEFAULT_POLICY", "OPTIONS", "BOUNDARY_KINDS", "resolve_policy", "resolve_inner", "check_regions"]

#: preset used when no policy is given: official TaylorSeer's FLUX schedule (full steps 0-2, then one
#: in 6; order 1, taylor form). Needs no step count.
DEFAULT_POLICY = "official-flux"

#: the backend's keyword options (besides policy, regions, inner), see :func:`taylorseer_backend`
OPTIONS = ("timestep_arg", "num_steps", "per_region", "factor_dtype", "whole_graph", "strict")
_RENAMED = {"fused": "whole_graph"}


def resolve_policy(policy) -> Policy:
    if policy is None:
        policy = DEFAULT_POLICY
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        try:
            return load_policy(policy)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"policy={os.fspath(policy)!r}: {e}") from e
    raise ValueError(f"policy must be a Policy, a preset name or a TOML path, got {type(policy).__name__}")


def resolve_inner(inner) -> Callable:
    if callable(inner):
        return inner
    if isinstance(inner, str):
        _, lookup_backend, list_backends, _, _ = backend_registry()
        if inner in ("taylorseer",):
            raise ValueError("inner='taylorseer' would nest the backend in itself")
        try:
            return lookup_backend(inner)
        except Exception:
            raise ValueError(f"inner={inner!r} is not a dynamo backend; use 'inductor', 'eager', 'aot_eager', "
                             f"one of {list_backends()} or a backend callable") from None
    raise ValueError(f"inner must be a backend name or a callable (gm, example_inputs) -> fn, got {inner!r}")


#: region kinds decided at the model boundary (``boundary.py``), not in a graph
BOUNDARY_KINDS = ("model",)


def check_regions(regions) -> None:
    if isinstance(regions, str):
        if regions in KINDS or regions in BOUNDARY_KINDS:
            return
        try:
            re.compile(regions)
        except re.error as e:
            raise ValueError(f"regions={regions!r} is neither one of {KINDS + BOUNDARY_KINDS} nor a valid "
                             f"regex: {e}") from None
        if re.fullmatch(r"[\w-]+", regions):
            # a bare word that is not a kind: most likely a typo of a kind
            raise ValueError(f"regions={regions!r} is not one of {KINDS + BOUNDARY_KINDS} (or {sorted(ALIASES)}); for a module "
                             r"path pattern use a regex such as 'transformer_blocks\.\d+\.attn' (Flux, SD3) or "
                             r"'blocks\.\d+\.attn1' (Wan)")
        return
    if callable(regions):
        return
    raise ValueError(f"regions must be one of {KINDS + BOUNDARY_KINDS}, a regex string or a callable(path) -> bool, got {regions!r}")
