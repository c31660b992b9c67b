"""The backend under torch.compile's own conventions: the ``torch_dynamo_backends`` entry point,
``mode=`` / ``options=`` passed on to inductor, and ``backend="taylorseer", options={...}``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx.graph import backend as backend_module
from taylorseer_fx.graph.backend import default_backend, taylorseer_backend
from taylorseer_fx.policy.policies import FixedPolicy


def _run(fn, x, y, n):
    outs = []
    with torch.no_grad():
        for k in range(n):
            outs.append(fn(x, torch.full((x.shape[0],), 999.0 - 100.0 * k), y))
    return outs


def _cause(exc: BaseException) -> BaseException:
    """The ValueError under dynamo's BackendCompilerFailed wrapper (its ``inner_exception``), whose
    message dynamo prints as ``ValueError: ...``."""
    if not isinstance(exc, ValueError):
        assert "ValueError: " in str(exc)
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return exc


def test_entry_point_registers_the_backend_without_importing_the_package():
    code = ("import sys, torch\n"
            "assert 'taylorseer_fx' not in sys.modules\n"
            "m = torch.compile(torch.nn.Linear(4, 4), backend='taylorseer')\n"
            "from torch._dynamo.backends.registry import lookup_backend\n"
            "fn = lookup_backend('taylorseer')\n"
            "assert 'taylorseer_fx' in sys.modules, 'the entry point did not load the package'\n"
            "print(fn.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "taylorseer_fx.graph.backend"


def test_mode_with_a_non_inductor_inner_is_a_value_error_that_says_what_to_do():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=2), inner="eager")
    cm = torch.compile(model, backend=be, mode="max-autotune")
    with pytest.raises(Exception) as info:
        _run(cm, x, y, 1)
    err = _cause(info.value)
    assert isinstance(err, ValueError) and "inner='eager'" in str(err) and "inductor" in str(err)


def test_mode_and_options_reach_inductor():
    be = taylorseer_backend(FixedPolicy(interval=2), inner="inductor")
    assert be._inner_for(None, None) is be.inner
    inner = be._inner_for("reduce-overhead", None)
    assert inner.config.get("triton.cudagraphs") is True
    assert be._inner_for(None, {"size_asserts": False}).config == {"size_asserts": False}
    assert be._inner_for("reduce-overhead", None) is inner          # one wrapper per (mode, options)
    with pytest.raises(ValueError, match="no_such_inductor_option"):
        be._inner_for(None, {"no_such_inductor_option": 1})


def test_named_backend_builds_a_backend_from_its_options():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    opts = {"policy": FixedPolicy(interval=2), "regions": "stack", "inner": "eager"}
    cm = torch.compile(model, backend="taylorseer", options=opts)
    got = _run(cm, x, y, 5)
    be = default_backend(opts)
    assert be is not backend_module._DEFAULT and be.policy == FixedPolicy(interval=2)
    s = be.stats()
    assert s["steps"] == 5 and s["forecast"] == 2            # steps 2 and 4 forecast (warm-up 2)
    assert default_backend(dict(opts)) is be                 # the same options: the same backend
    with torch.no_grad():
        want = model(x, torch.full((x.shape[0],), 999.0), y)
    assert torch.equal(got[0], want)


def test_named_backend_rejects_an_unknown_inductor_option_with_a_value_error():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    cm = torch.compile(model, backend="taylorseer", options={"inner": "eager", "size_asserts": False})
    with pytest.raises(Exception) as info:
        _run(cm, x, y, 1)
    err = _cause(info.value)
    assert isinstance(err, ValueError) and "inner='eager'" in str(err)
