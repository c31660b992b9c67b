"""Told, not guessed: a model call's request, step and branch come from the code that knows them.

Every case through the public API and a compiled model (``inner="eager"``: "equal" is bit-equal):
asyncio tasks interleaved in one thread, step-wise generators advanced by a worker pool, an abandoned
generator holding an open session, told branches whose number changes mid-run (both call orders),
and random interleavings of several requests (hypothesis).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import FixedPolicy, Request, taylorseer_backend

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

STEPS = 10
SCHEDULE = [1000.0 - 90.0 * k for k in range(STEPS)]


def _compiled(policy=None):
    be = taylorseer_backend(policy or FixedPolicy(interval=3, order=1, warmup=2), inner="eager")
    return torch.compile(make_plain_dit(), backend=be), be


def _sampler(model, seed: int, steps=SCHEDULE, request: Request | None = None):
    """A step-wise sampling loop: yields after every model call, returns the outputs and the final
    sample. With ``request``, each call is made inside ``with request:`` (entered per step)."""
    x, y = plain_dit_inputs(seed=seed)
    outs = []
    for t in steps:
        ts = torch.full((x.shape[0],), t)
        with torch.no_grad():
            if request is None:
                v = model(x, ts, y)
            else:
                with request:
                    v = model(x, ts, y)
        outs.append(v)
        x = x - 0.08 * v
        yield
    return outs + [x]


def _run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _alone(model, be, seeds):
    """Each seed's run alone (bare loop, one after the other), then the backend's state forgotten."""
    out = {s: _run(_sampler(model, s)) for s in seeds}
    assert be.stats()["forecast"] > 0
    be.reset()
    return out


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# ----------------------------------------------------------------- asyncio, no user code
async def _stepped(gen):
    """Run a step-wise sampler as a task, yielding to the event loop after every step."""
    try:
        while True:
            next(gen)
            await asyncio.sleep(0)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("offset", [0, 3])
def test_asyncio_tasks_interleaved_in_one_thread_are_separate_requests(offset):
    """Two tasks share one compiled model and one thread, an ``await`` between steps (in lock step,
    or the second starting ``offset`` steps later): each equals its run alone."""
    model, be = _compiled()
    want = _alone(model, be, [1, 2])

    async def request(seed, delay):
        for _ in range(delay):
            await asyncio.sleep(0)
        return await _stepped(_sampler(model, seed))

    async def main():
        return await asyncio.gather(request(1, 0), request(2, offset))
    got = asyncio.run(main())
    _same(got[0], want[1])
    _same(got[1], want[2])
    assert be.stats()["forecast"] > 0


def test_a_session_in_each_task_is_that_tasks_own():
    model, be = _compiled()
    want = _alone(model, be, [1, 2])

    async def request(seed):
        with be.session(schedule=SCHEDULE):
            return await _stepped(_sampler(model, seed))

    async def main():
        return await asyncio.gather(request(1), request(2))
    got = asyncio.run(main())
    _same(got[0], want[1])
    _same(got[1], want[2])


# ----------------------------------------------------------------- generators on a worker pool
@pytest.mark.parametrize("held", [True, False], ids=["with-held-across-yields", "entered-per-step"])
def test_generators_advanced_by_a_worker_pool_keep_their_request(held):
    """Three step-wise generators, each step run on whichever of two pool threads is free (the
    gradio / anyio pattern): each keeps its own request, whether it holds ``with request:`` across
    its yields or enters it at each step."""
    model, be = _compiled()
    seeds = [1, 2, 3]
    want = _alone(model, be, seeds)

    def held_gen(seed):
        with Request():                # in force while the generator runs, on whichever thread
            return (yield from _sampler(model, seed))

    gens = {s: (held_gen(s) if held else _sampler(model, s, request=Request())) for s in seeds}
    got, live = {}, dict(gens)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        turn = itertools.count()
        while live:
            s = list(live)[next(turn) % len(live)]

            def step(gen=live[s]):
                try:
                    next(gen)
                    return None
                except StopIteration as stop:
                    return ("done", stop.value)
            r = pool.submit(step).result()
            if r is not None:
                got[s] = r[1]
                del live[s]
    for s in seeds:
        _same(got[s], want[s])


def test_an_abandoned_generator_with_an_open_session_captures_nothing():
    """A generator enters ``backend.session(...)``, runs 5 steps and is abandoned (still referenced,
    never closed): the same thread's next run, a bare loop, equals its run alone."""
    model, be = _compiled()
    want = _alone(model, be, [2])

    def abandoned():
        with be.session(schedule=SCHEDULE):
            yield from _sampler(model, 1)
    gen = abandoned()
    for _ in range(5):
        next(gen)
    got = _run(_sampler(model, 2))
    _same(got, want[2])
    assert gen.gi_frame is not None            # still suspended inside its session


def test_a_closed_request_cannot_be_entered_again():
    req = Request()
    req.close()
    with pytest.raises(ValueError, match="closed"):
        with req:
            pass


# ----------------------------------------------------------------- told branches
def _cfg_run(model, x, y, branches_at, request=None, step_offset=0):
    """Split CFG told per call: ``branches_at(step)`` lists the branches called at a step, in call
    order. Returns ``{branch: [outputs]}``."""
    req = request or Request()
    out = {}
    null = torch.full_like(y, 10)
    with torch.no_grad():
        for k, t in enumerate(SCHEDULE):
            for b in branches_at(k):
                with req.context(b, step_index=k + step_offset, sigma=t):
                    out.setdefault(b, []).append(model(x, torch.full((x.shape[0],), t), y if b == "cond" else null))
    return out


@pytest.mark.parametrize("case", ["truncated", "late", "truncated-uncond-first", "late-uncond-first",
                                  "step-0-only"])
def test_told_branches_whose_count_changes_equal_one_backend_per_branch(case):
    """CFG stopped after step 5 (truncation), started at step 4, or at step 0 only, in either call
    order: every output of the one-backend run equals the same branch through a backend of its own."""
    order = ("uncond", "cond") if "uncond-first" in case else ("cond", "uncond")
    if case.startswith("truncated"):
        present = lambda k: order if k <= 5 else ("cond",)           # noqa: E731
    elif case.startswith("late"):
        present = lambda k: order if k >= 4 else ("cond",)           # noqa: E731
    else:
        present = lambda k: order if k == 0 else ("cond",)           # noqa: E731
    x, y = plain_dit_inputs()
    model, be = _compiled()
    got = _cfg_run(model, x, y, present)
    assert be.stats()["forecast"] > 0
    for branch in ("cond", "uncond"):
        own, own_be = _compiled()
        want = _cfg_run(own, x, y, lambda k: (branch,) if branch in present(k) else ())[branch]
        _same(got[branch], want)


def test_told_steps_place_a_late_joining_model_at_the_runs_step_indices():
    """A model told steps 6..9 of a 10-step run (img2img's shortened run) gets the policy's schedule
    for those indices: the cooldown's last steps are computed."""
    be = taylorseer_backend(FixedPolicy(interval=2, order=1, warmup=2, cooldown=2), inner="eager")
    model = torch.compile(make_plain_dit(), backend=be)
    x, y = plain_dit_inputs()
    req = Request(num_steps=10)
    with torch.no_grad():
        for k in range(3, 10):
            with req.context(step_index=k, sigma=SCHEDULE[k]):
                model(x, torch.full((2,), SCHEDULE[k]), y)
    trace = be.stats()["trace"]
    assert [r["step"] for r in trace] == list(range(3, 10))
    want = FixedPolicy(interval=2, order=1, warmup=2, cooldown=2).start(10, 3)
    assert [r["decision"] == "compute" for r in trace] == [want.decide(k, lambda: 0.0) for k in range(3, 10)]


@pytest.mark.parametrize("bad, match", [(dict(step_index=-1), "step_index"), (dict(step_index=1.5), "step_index"),
                                        (dict(branch=3), "branch"), (dict(sigma=float("nan")), "sigma"),
                                        (dict(stage=-1), "stage")])
def test_bad_told_values_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        Request().context(**bad)


# ----------------------------------------------------------------- property: random interleavings
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.lists(st.integers(0, 2), min_size=40, max_size=40), threads=st.lists(st.integers(0, 1),
       min_size=40, max_size=40), how=st.sampled_from(["held", "per-step"]))
def test_random_interleavings_give_every_request_its_solo_run(order, threads, how):
    """Three requests' step-wise generators advanced in a random order, each step on a random one of
    two threads: every request's outputs equal its solo run."""
    torch._dynamo.reset()
    model, be = _compiled()
    steps = SCHEDULE[:6]
    want = {s: _run(_sampler(model, s, steps)) for s in range(3)}
    be.reset()

    def held_gen(seed):
        with Request():
            return (yield from _sampler(model, seed, steps))
    gens = {s: held_gen(s) if how == "held" else _sampler(model, s, steps, request=Request()) for s in range(3)}
    got = {}
    workers = [concurrent.futures.ThreadPoolExecutor(1) for _ in range(2)]
    try:
        picks = iter(zip(order, threads))
        while gens:
            s, w = next(picks, (0, 0))
            s = sorted(gens)[s % len(gens)]

            def step(gen=gens[s]):
                try:
                    next(gen)
                except StopIteration as stop:
                    return stop.value
            r = workers[w].submit(step).result()
            if r is not None:
                got[s] = r
                del gens[s]
    finally:
        for w in workers:
            w.shutdown()
    for s in range(3):
        _same(got[s], want[s])


# ----------------------------------------------------------------- weights, instances, recompiles
@pytest.mark.parametrize("change", ["copy_", "load_state_dict", "add_", "set-data", "replace-parameter"])
def test_weights_changed_mid_generation_never_reach_a_forecast(change):
    """The weights change after step 4 of a told 10-step run: the run equals one whose state was
    dropped at the change (a ``Request`` of its own from step 5, told the same step indices)."""
    torch.manual_seed(0)
    model_a, be_a = _compiled()
    model_b, be_b = _compiled()
    plain_a = model_a._orig_mod
    plain_b = model_b._orig_mod
    plain_b.load_state_dict(plain_a.state_dict())
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in plain_a.state_dict().items()}
    x, y = plain_dit_inputs()

    def apply(plain):
        p = plain.blocks[0].mlp.fc1.weight if hasattr(plain, "blocks") else next(plain.parameters())
        with torch.no_grad():
            if change == "copy_":
                for k, v in plain.state_dict().items():
                    v.copy_(new[k])
            elif change == "load_state_dict":
                plain.load_state_dict(new)
            elif change == "add_":
                for v in plain.parameters():
                    v.add_(0.01)
            elif change == "set-data":
                for k, v in plain.named_parameters():
                    v.data = new[k].clone()
            else:
                for name, v in list(plain.named_parameters()):
                    mod = plain.get_submodule(name.rpartition(".")[0]) if "." in name else plain
                    setattr(mod, name.rpartition(".")[2], torch.nn.Parameter(new[name].clone()))
        return p

    def run(model, plain, split):
        req, outs = Request(num_steps=STEPS), []
        with torch.no_grad():
            for k, t in enumerate(SCHEDULE):
                if k == 5:
                    apply(plain)
                    if split:
                        req.close()
                        req = Request(num_steps=STEPS)
                with req.context(step_index=k, sigma=t):
                    outs.append(model(x, torch.full((2,), t), y))
        return outs
    with pytest.warns(UserWarning, match="weights changed") if change not in ("replace-parameter",) \
            else _nothing():
        got = run(model_a, plain_a, split=False)
    want = run(model_b, plain_b, split=True)
    _same(got, want)
    assert be_a.stats()["forecast"] > 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_two_instances_sharing_their_first_and_last_parameters_are_two_owners():
    """Two experts that share every parameter object but one in the middle (shared embeddings, head
    and most blocks): the second's first call is computed from its own state, not forecast from the
    first's."""
    a, b = make_plain_dit(seed=0), make_plain_dit(seed=1)
    names = [n for n, _ in a.named_parameters()]
    for name in names[:len(names) // 2] + names[len(names) // 2 + 1:]:
        mod = b.get_submodule(name.rpartition(".")[0]) if "." in name else b
        setattr(mod, name.rpartition(".")[2], a.get_parameter(name))
    be = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2), inner="eager")
    @torch.compile(backend=be)                  # one graph for both models
    def run(model, x, timestep, y):
        return model(x, timestep, y)
    x, y = plain_dit_inputs()
    with torch.no_grad():
        for t in SCHEDULE[:6]:
            run(a, x, torch.full((2,), t), y)
        out = run(b, x, torch.full((2,), SCHEDULE[6]), y)        # step 6 of a's run: a forecast there
        want = b(x, torch.full((2,), SCHEDULE[6]), y)
    assert len(be.runtime.graphs) == 1
    assert torch.equal(out, want)
    assert be.stats()["trace"][-1]["decision"] == "compute"


def test_a_mid_run_recompile_with_lifted_integers_is_not_a_new_generation():
    """CFG cut off after step 4 (the batch halves: dynamo recompiles with dynamic shapes and lifts the
    batch size and the storage offset of ``timesteps[i]`` into the graph's inputs, one of which
    changes at every step): the run stays one generation, its step indices go on, and the new
    graph forecasts at the policy's rate after its own warm-up."""
    model, be = _compiled()
    x, y = plain_dit_inputs()
    ts = torch.tensor(SCHEDULE)
    with torch.no_grad():
        for k in range(STEPS):
            xb, yb = (x, y) if k < 5 else (x[:1], y[:1])
            model(xb, ts[k].expand(xb.shape[0]), yb)
    trace = be.stats()["trace"]
    assert len(be.runtime.graphs) == 2 and any(len(g.sig_indices) > 2 for g in be.runtime.graphs)
    assert len({r["generation"] for r in trace}) == 1
    assert [r["step"] for r in trace] == list(range(STEPS))
    assert [r["decision"] for r in trace[5:]] == ["compute", "compute", "forecast", "forecast", "compute"]


def test_nested_sessions_of_two_backends_each_keep_their_own():
    """``with a.session(...): with b.session(...):``: model a's calls still belong to a's session
    (b's session is passed over for them), so its cool-down gets a's step count."""
    be_a = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2, cooldown=2), inner="eager")
    be_b = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2, cooldown=2), inner="eager")
    ma = torch.compile(make_plain_dit(), backend=be_a)
    mb = torch.compile(make_plain_dit(seed=1), backend=be_b)
    x, y = plain_dit_inputs()
    with torch.no_grad(), be_a.session(schedule=SCHEDULE), be_b.session(schedule=SCHEDULE[:4]):
        for k, t in enumerate(SCHEDULE):
            ma(x, torch.full((2,), t), y)
            if k < 4:
                mb(x, torch.full((2,), t), y)
    for be, n in ((be_a, STEPS), (be_b, 4)):
        computed = [r["step"] for r in be.stats()["trace"] if r["decision"] == "compute"]
        assert computed == be.policy.compute_steps(n)


def test_a_branch_told_without_its_step_at_first_continues_when_its_step_is_told():
    """Step 0 of the "cond" branch is told without a step (a scheduler that keeps no index before
    its first step): it is placed by its timestep in the request's schedule, and steps 1.. told with
    their index continue the same history -- the policy's schedule, not a second warm-up at step 1."""
    model, be = _compiled()
    x, y = plain_dit_inputs()
    req = Request(schedule=SCHEDULE)
    with torch.no_grad():
        for k, t in enumerate(SCHEDULE):
            with req.context("cond", step_index=None if k == 0 else k, sigma=None if k == 0 else t):
                model(x, torch.full((2,), t), y)
    trace = be.stats()["trace"]
    assert [r["step"] for r in trace] == list(range(STEPS))
    assert [r["step"] for r in trace if r["decision"] == "compute"] == be.policy.compute_steps(STEPS)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pauses=st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=3, max_size=3))
def test_random_interleavings_of_asyncio_tasks_give_every_request_its_solo_run(pauses):
    """Three asyncio tasks in one thread, no request named anywhere, each pausing a random number of
    event-loop turns after each step (so their steps interleave at random): every task's outputs
    equal its solo run."""
    torch._dynamo.reset()
    model, be = _compiled()
    steps = SCHEDULE[:6]
    want = {s: _run(_sampler(model, s, steps)) for s in range(3)}
    be.reset()

    async def request(seed):
        gen, waits = _sampler(model, seed, steps), iter(pauses[seed])
        try:
            while True:
                next(gen)
                for _ in range(next(waits, 0)):
                    await asyncio.sleep(0)
        except StopIteration as stop:
            return stop.value

    async def main():
        return await asyncio.gather(*(request(s) for s in range(3)))
    for s, got in enumerate(asyncio.run(main())):
        _same(got, want[s])
