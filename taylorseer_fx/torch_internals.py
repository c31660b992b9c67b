"""The one door to torch's private API.

Every private torch symbol the package uses is reached here, by name, and nowhere else: dynamo's
tracing context and fake tensors (compiling split pieces under the compile dynamo is in), inductor's
compile wrapper (``mode=`` / ``options=``), the backend registry (``backend="taylorseer"``), pytree
(the outputs of a model cached at its boundary) and the FX targets that change global state.

:data:`SYMBOLS` lists them with the torch versions they are known in (tested: 2.12.1, 2.13.0, 2.14.1;
``tests/test_torch_internals.py`` resolves every one and fails naming the symbol and the torch
version). A symbol a new torch moved raises :class:`TorchInternalsError` at first use, saying which
and where it was looked for; the optional ones (:data:`OPTIONAL`) give None and the caller does
without. Knows nothing of the rest of the package.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch

__all__ = ["SYMBOLS", "OPTIONAL", "TESTED", "TorchInternalsError", "symbol", "pytree", "inductor_wrapper",
           "fake_mode_for", "to_fake", "is_fake", "tracing_context", "tracing", "deepcopy_to_fake",
           "aot_compiles", "saved_tensors_hooks_guard", "global_state_targets", "backend_registry"]

#: the torch releases the symbols below were resolved on (CI: tests/test_torch_internals.py)
TESTED = ("2.12.1", "2.13.0", "2.14.1")

#: symbol name -> "module:attribute.path"
SYMBOLS = {
    "TracingContext": "torch._guards:TracingContext",
    "tracing": "torch._guards:tracing",
    "detect_fake_mode": "torch._guards:detect_fake_mode",
    "FakeTensorMode": "torch._subclasses.fake_tensor:FakeTensorMode",
    "FakeTensor": "torch._subclasses.fake_tensor:FakeTensor",
    "to_fake_tensor": "torch._dynamo.utils:to_fake_tensor",
    "deepcopy_to_fake_tensor": "torch._dynamo.utils:deepcopy_to_fake_tensor",
    "dynamo_counters": "torch._dynamo.utils:counters",
    "disable_saved_tensors_hooks_during_tracing": "torch._dynamo.utils:_disable_saved_tensors_hooks_during_tracing",
    "TorchCompileInductorWrapper": "torch:_TorchCompileInductorWrapper",
    "backend_registry": "torch._dynamo.backends.registry:register_backend",
    "lookup_backend": "torch._dynamo.backends.registry:lookup_backend",
    "list_backends": "torch._dynamo.backends.registry:list_backends",
    "registered_backends": "torch._dynamo.backends.registry:_BACKENDS",
    "registered_compiler_fns": "torch._dynamo.backends.registry:_COMPILER_FNS",
    "pytree": "torch.utils._pytree:tree_flatten",
    "set_grad_enabled": "torch._C:_set_grad_enabled",
    "enter_autocast": "torch.amp:_enter_autocast",
    "exit_autocast": "torch.amp:_exit_autocast",
}
#: symbols whose absence is handled (the caller does without)
OPTIONAL = ("disable_saved_tensors_hooks_during_tracing",)


class TorchInternalsError(ImportError):
    """A private torch symbol this package relies on is not where it was in the tested torch releases."""


@functools.lru_cache(maxsize=None)
def symbol(name: str) -> Any:
    """The object :data:`SYMBOLS` names ``name`` (None for a missing :data:`OPTIONAL` one)."""
    where = SYMBOLS[name]
    module, _, path = where.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        if name in OPTIONAL:
            return None
        raise TorchInternalsError(f"taylorseer_fx needs torch's private {where} ({name}), which torch "
                                  f"{torch.__version__} does not have (tested on torch {', '.join(TESTED)}): "
                                  f"{e}") from None
    return obj


def pytree():
    """``torch.utils._pytree`` (``tree_flatten``, ``tree_unflatten``, ``tree_leaves``; diffusers registers
    its output classes there)."""
    symbol("pytree")
    return importlib.import_module("torch.utils._pytree")


def inductor_wrapper(mode, options):
    """inductor as ``torch.compile(mode=..., options=...)`` configures it (a dynamo backend)."""
    return symbol("TorchCompileInductorWrapper")(mode, options, None)


def tracing_context():
    """The tracing context of the dynamo compile in progress, or None."""
    return symbol("TracingContext").try_get()


def tracing(context):
    """Enter ``context`` (a captured tracing context) again, for a compile made later."""
    return symbol("tracing")(context)


def fake_mode_for(example_inputs, context=None):
    """The fake mode of the compile in progress (its tracing context's, else the inputs'), else a new one."""
    mode = context.fake_mode if context is not None else None
    return mode or symbol("detect_fake_mode")(example_inputs) or symbol("FakeTensorMode")()


def is_fake(x) -> bool:
    return isinstance(x, symbol("FakeTensor"))


def to_fake(x, mode):
    """A real tensor as a fake tensor of ``mode``."""
    return symbol("to_fake_tensor")(x, mode)


def deepcopy_to_fake(module, mode):
    """A module whose parameters and buffers are fake tensors of ``mode``."""
    return symbol("deepcopy_to_fake_tensor")(module, mode)


def aot_compiles() -> int:
    """How many graphs AOTAutograd compiled so far in this process (dynamo's counters)."""
    return symbol("dynamo_counters")["aot_autograd"]["total"]


def saved_tensors_hooks_guard():
    """dynamo's guard that disables saved-tensors hooks while tracing, or None where torch has none."""
    return symbol("disable_saved_tensors_hooks_during_tracing")


def global_state_targets() -> set:
    """FX call targets that change global state (grad mode, autocast) inside a dynamo graph."""
    return {symbol("set_grad_enabled"), symbol("enter_autocast"), symbol("exit_autocast")}


def backend_registry():
    """``(register_backend, lookup_backend, list_backends, registered names, registered compiler fns)``."""
    return (symbol("backend_registry"), symbol("lookup_backend"), symbol("list_backends"),
            symbol("registered_backends"), symbol("registered_compiler_fns"))
