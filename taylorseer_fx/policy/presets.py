"""Presets: policies stored as TOML (``policies/*.toml``), loaded by name or by path.

A preset file holds ``kind = "fixed" | "official" | "openvino" | "diffusers" | "seed" | "mask" | "auto"``
plus the constructor's fields (the anchors' own parameter names for ``official`` / ``openvino`` /
``diffusers`` / ``seed``) and an optional ``description``. The shipped presets live in the package's
``policies/`` folder (and the repository's, for an editable checkout); :func:`available_policies`
lists them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from .auto import AutoPolicy
from .policies import ANCHOR_OVERRIDES, FixedPolicy, MaskPolicy
from .base import Policy

__all__ = ["load_policy", "policy_from_dict", "policy_to_dict", "policy_to_toml", "available_policies"]

_KINDS: dict[str, Callable[..., Policy]] = {
    "fixed": FixedPolicy, "mask": MaskPolicy, "auto": AutoPolicy,
    "official": FixedPolicy.official, "openvino": FixedPolicy.openvino,
    "diffusers": FixedPolicy.diffusers, "seed": FixedPolicy.seed,
}


def _fields_of(factory: Callable[..., Policy]) -> set[str]:
    """The keys a preset of this kind may hold: a policy class's fields (MaskPolicy: and
    compute_steps), an anchor's own parameters plus :data:`~taylorseer_fx.policy.policies.ANCHOR_OVERRIDES`."""
    if isinstance(factory, type):
        names = {f.name for f in dataclasses.fields(factory)}
        return names | ({"compute_steps"} if factory is MaskPolicy else set())
    params = inspect.signature(factory).parameters.values()
    names = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
    return names | (set(ANCHOR_OVERRIDES) if len(names) < len(params) else set())


def policy_to_dict(policy: Policy) -> dict:
    """The preset form of a policy: ``{"kind": "fixed" | "mask" | "auto", <fields>}`` with every field
    it relies on pinned to its resolved value (``form``, ``coordinate``, ``warmup``, the order choice,
    ``pacing`` ...: a later change of those defaults never changes a written preset); fields whose
    value is None and has no resolved value (``num_steps``, ``max_forecast_run``, ``final_compute``,
    whose rule :func:`~taylorseer_fx.policy.budget.final_free` is the code's) are left out; lists for
    tuples. A field added after a preset was written takes its default when read; where that changes
    decisions (a budget preset from before ``pacing``) :func:`policy_from_dict` warns.
    :func:`policy_from_dict` reads it back to a policy that decides and forecasts the same."""
    kind = {FixedPolicy: "fixed", MaskPolicy: "mask", AutoPolicy: "auto"}.get(type(policy))
    if kind is None:
        raise ValueError(f"policy_to_dict: no preset kind for {type(policy).__name__}")
    resolved = dataclasses.asdict(policy.forecast)
    resolved["warmup"] = policy.warmup_steps
    out: dict = {"kind": kind}
    for f in dataclasses.fields(policy):
        v = resolved.get(f.name, getattr(policy, f.name))
        if v is None:
            continue
        if f.name in ("placements", "thresholds"):    # {"N": [steps] | threshold}: TOML keys are strings
            out[f.name] = {str(n): list(x) if isinstance(x, tuple) else x for n, x in v}
        else:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)                       # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"policy_to_toml: cannot write {v!r}")


def policy_to_toml(policy: Policy, description: str | None = None) -> str:
    """A preset file's text for ``policy``, every resolved field pinned (:func:`load_policy` reads it
    back to a policy that decides and forecasts the same)."""
    spec = policy_to_dict(policy)
    lines = [f"description = {_toml_value(description)}"] if description else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    for k, table in spec.items():              # tables (placements) after every plain field
        if isinstance(table, dict):
            lines += ["", f"[{k}]"] + [f"{key} = {_toml_value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


def policy_from_dict(spec: Mapping[str, Any], source: str = "policy spec") -> Policy:
    """Build a policy from ``{"kind": ..., <fields>}`` (the TOML preset format; ``description`` ignored)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: a policy spec is a table of fields, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    spec.pop("description", None)
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{source}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    bad_keys = [k for k in spec if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"{source}: field names must be strings, got {bad_keys[0]!r}")
    allowed = _fields_of(_KINDS[kind])
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r} for kind {kind!r}; "
                         f"allowed: {sorted(allowed)}")
    if kind == "auto" and "budget" in spec and "pacing" not in spec and "form" in spec:
        # a written preset (every resolved field pinned) from before pacing existed: told, not guessed
        warnings.warn(f"{source}: a budget preset written before AutoPolicy.pacing existed (it pins form "
                      "but not pacing): its free computes are now placed at the budget's even spacing (the "
                      "default, measured better on both shipped models: docs/auto.md); add "
                      "pacing = \"estimate\" to keep the placement it was written with", UserWarning,
                      stacklevel=3)
    try:
        return _KINDS[kind](**spec)
    except ValueError as e:           # the constructor names the field; say which file too
        raise ValueError(f"{source}: {e}") from None
    except (TypeError, OverflowError, AttributeError) as e:   # a missing field, a value of a wrong type
        raise ValueError(f"{source}: kind {kind!r}: {e}") from None


def _preset_dirs() -> list[Path]:
    """The package's own presets (installed: ``taylorseer_fx/policies``), then, in a source checkout
    only (a ``pyproject.toml`` of this project beside the package), the repository's ``policies/``:
    never the ``policies/`` folder of another distribution installed beside this one."""
    here = Path(__file__).resolve().parent.parent          # the taylorseer_fx package
    dirs = [here / "policies"]
    project = here.parent / "pyproject.toml"
    try:
        if project.is_file() and 'name = "taylorseer-fx"' in project.read_text(errors="replace")[:4096]:
            dirs.append(here.parent / "policies")
    except OSError:
        pass
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


#: what a preset file may be: its size, its nesting (arrays and inline tables) and its dotted keys
MAX_PRESET_BYTES = 64 * 1024
MAX_PRESET_DEPTH = 8


def _check_shape(text: str, path) -> None:
    """ValueError for a preset nested deeper than :data:`MAX_PRESET_DEPTH` (arrays, inline tables,
    dotted keys): TOML parsers recurse on nesting and are quadratic in a dotted key's parts."""
    depth = deepest = 0
    quote = None
    for ch in text:                       # brackets outside strings (escapes cannot close a string early
        if quote is not None:             # in a way that matters for this bound)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):                      # a table header: [a.b.c]
            key = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key = line.split("=", 1)[0]               # the key of ``key = value`` (not the value, not a comment)
        else:
            continue
        if key.count(".") >= MAX_PRESET_DEPTH:
            deepest = max(deepest, key.count(".") + 1)
    if deepest > MAX_PRESET_DEPTH:
        raise ValueError(f"{path}: nested {deepest} levels deep; a preset is a flat table of fields "
                         f"(at most {MAX_PRESET_DEPTH} levels of arrays, inline tables or dotted keys)")


def available_policies() -> list[str]:
    """Names of the presets that :func:`load_policy` finds."""
    return sorted({p.stem for d in _preset_dirs() for p in d.glob("*.toml")})


def load_policy(name_or_path: str | os.PathLike | Policy) -> Policy:
    """A shipped preset by name (``"official-flux"``: never a file of that name in the working
    directory), or a TOML file by path (a path contains a separator or ends in ``.toml``: ``./mine.toml``).
    A Policy is returned unchanged. Every problem is a ValueError naming the file (and the field)."""
    if isinstance(name_or_path, Policy):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"load_policy: expected a preset name or a TOML path, got {name_or_path!r}")
    text = os.fspath(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or os.sep in text or "/" in text or isinstance(name_or_path, os.PathLike)):
        found = [d / f"{text}.toml" for d in _preset_dirs() if (d / f"{text}.toml").is_file()]
        if not found:
            raise ValueError(f"unknown policy preset {text!r}; known: {available_policies()} (a file of "
                             f"yours: give its path, e.g. './{text}.toml')")
        path = found[0]
    try:
        if not path.is_file():
            raise ValueError(f"policy file not found: {path}")
        size = path.stat().st_size
        if size > MAX_PRESET_BYTES:
            raise ValueError(f"{path}: {size} bytes; a preset file is at most {MAX_PRESET_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as e:                  # a name too long, a folder, no permission
        raise ValueError(f"policy file {text!r} cannot be read: {e.strerror or e}") from None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a TOML text file (UTF-8 expected): {e}") from None
    _check_shape(body, path)
    try:
        spec = tomllib.loads(body)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from e
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply for a preset") from None
    return policy_from_dict(spec, source=str(path))
