"""Threads and dynamo (issue 25, item 9). Under concurrent first calls dynamo compiles one copy of the
graph per thread (it does not wait for a compile in flight), fills its cache (8 entries per code
object) and runs later threads' calls uncompiled -- past the backend: measured 1-4 calls per round of
8 threads x 20 steps, and their outputs not those of the request run alone. A model boundary
(``backend.compile_module``, ``compile_pipeline``) runs the first call alone, and counts any call that
still reaches no compiled graph (``stats()["bypassed_calls"]``, the audit's ``never-reached``)."""

from __future__ import annotations

import threading

import pytest
import torch

from taylorseer_fx import FixedPolicy, Request, taylorseer_backend
from tiny_models import make_flux

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

POLICY = FixedPolicy(interval=3, warmup=2, order=1)
STEPS = 12
TS = torch.linspace(1.0, 0.05, STEPS)


def _generation(model, mk, batch=1) -> list:
    outs = []
    with Request(num_steps=STEPS) as req, torch.no_grad():
        for i, t in enumerate(TS):
            args, kwargs = mk(batch=batch, step_t=float(t))
            with req.context(step_index=i):
                out = model(*args, **kwargs)
            outs.append((out[0] if isinstance(out, tuple) else out.sample).clone())
    req.close()                                  # the request ends: audited
    return outs


def test_concurrent_first_calls_compile_once_and_every_call_reaches_the_backend():
    model, mk = make_flux(0)
    alone_be = taylorseer_backend(POLICY, inner="eager")
    alone = _generation(torch.compile(model, backend=alone_be), mk)
    torch._dynamo.reset()
    be = taylorseer_backend(POLICY, inner="eager")
    be.compile_module(model)
    results, errors = {}, []
    start = threading.Barrier(12)

    def worker(k):
        try:
            start.wait()
            results[k] = _generation(model, mk)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = be.stats()
    assert len(be.graphs) == 1                           # one compile, not one per thread
    assert st["bypassed_calls"] == 0 and st["calls"] == 12 * STEPS
    for k, outs in results.items():
        assert all(torch.equal(a, b) for a, b in zip(outs, alone)), k
    assert st["forecast"] == 12 * (STEPS - len(POLICY.compute_steps(STEPS)))


def test_a_call_dynamo_runs_uncompiled_is_counted_and_audited():
    """With dynamo's recompile limit at 1, a second batch size runs uncompiled: the boundary counts it,
    and the request's audit names the cause."""
    model, mk = make_flux(0)
    be = taylorseer_backend(POLICY, inner="eager")
    be.compile_module(model)
    with torch._dynamo.config.patch(recompile_limit=1, cache_size_limit=1):
        _generation(model, mk, batch=1)
        with pytest.warns(UserWarning, match="taylorseer"):
            _generation(model, mk, batch=2)
    st = be.stats()
    assert st["bypassed_calls"] == STEPS
    assert st["audit"]["causes"].get("never-reached") == STEPS
