"""The backend with the default inner compiler (inductor) agrees with the eager inner backend.

Marked ``inductor``: each case compiles a model with inductor on CPU (~10-40 s). Same policy, same
inputs: the same steps are computed/forecast and every step's output is allclose (inductor reorders
float arithmetic, so not bit-equal), forecasts included.
"""

import pytest
import torch

from taylorseer_fx import FixedPolicy, taylorseer_backend

pytestmark = [pytest.mark.inductor, pytest.mark.usefixtures("one_thread_fresh_dynamo")]


def _run(model, inputs_at, timesteps, inner, regions, policy):
    backend = taylorseer_backend(policy=policy, regions=regions, inner=inner)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        outs = [compiled(*inputs_at(t)) for t in timesteps]
    decisions = [c["decision"] for c in backend.stats()["trace"]]
    torch._dynamo.reset()
    return outs, decisions


@pytest.mark.parametrize("regions", ["stack", "modules"])
def test_demo_dit_inductor_matches_eager_inner(regions):
    pytest.importorskip("safetensors")
    from taylorseer_fx.demo import load_model, sigmas

    model = load_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16, generator=g)
    labels = torch.tensor([1, 2, 10, 10])
    inputs_at = lambda t: (x, torch.full((4,), float(t)), labels)  # noqa: E731
    ts = sigmas(12)[:-1].tolist()
    policy = FixedPolicy(interval=3, warmup=3, order=2, form="newton")
    eager, d_eager = _run(model, inputs_at, ts, "eager", regions, policy)
    ind, d_ind = _run(model, inputs_at, ts, "inductor", regions, policy)
    assert d_eager == d_ind and "forecast" in d_ind
    for a, b in zip(ind, eager):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tiny_flux_inductor_matches_eager_inner():
    pytest.importorskip("diffusers")
    from tiny_models import FAMILIES

    model, make_inputs = FAMILIES["flux"]()
    lat = make_inputs(step_t=1.0)[1]["hidden_states"]

    ts = [1.0 - i / 10 for i in range(10)]
    policy = FixedPolicy.official(first_enhance=3, fresh_threshold=3, max_order=2)
    outs = {}
    for inner in ("eager", "inductor"):
        backend = taylorseer_backend(policy=policy, regions="modules", inner=inner)
        compiled = torch.compile(model, backend=backend)
        with torch.no_grad():
            outs[inner] = [compiled(**make_inputs(step_t=t, hidden_states=lat)[1])[0] for t in ts]
        outs[inner + "_decisions"] = [c["decision"] for c in backend.stats()["trace"]]
        torch._dynamo.reset()
    assert outs["eager_decisions"] == outs["inductor_decisions"]
    assert outs["inductor_decisions"].count("forecast") == 5
    for a, b in zip(outs["inductor"], outs["eager"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
