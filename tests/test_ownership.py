"""Never a silently wrong image: cached state belongs to the generation that made it.

Through compiled models (``inner="eager"``, so "equal" is bit-equal): threads sharing one compiled
model, two instances of one class through one backend, an interrupted run followed by a lower-starting
one, a dummy call before the loop, many short generations with bounded memory, CFG truncation, and
the timestep types. The call-sequence rules themselves are property-tested in test_runtime.py.
"""

from __future__ import annotations

import threading

import pytest
import torch

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import AutoPolicy, FixedPolicy, taylorseer_backend
from taylorseer_fx.runtime.graph_runtime import GraphRuntime
from taylorseer_fx.runtime.steps import MAX_STREAMS

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


def _demo():
    demo = pytest.importorskip("taylorseer_fx.demo")
    return demo


def _generate(model, steps, seed, labels, batched_cfg=True, start=0):
    """A demo sampling loop from step ``start`` of a ``steps``-step schedule (img2img when > 0)."""
    demo = _demo()
    sched = demo.sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, demo.RESOLUTION, demo.RESOLUTION, generator=g)
    labels = torch.tensor(labels)
    null = torch.full_like(labels, 10)
    outs = []
    with torch.no_grad():
        for i in range(start, steps):
            s = float(sched[i])
            if batched_cfg:
                v = model(torch.cat([x, x]), torch.full((2 * len(labels),), s), torch.cat([labels, null]))
                vc, vu = v.chunk(2)
            else:
                t = torch.full((len(labels),), s)
                vc, vu = model(x, t, labels), model(x, t, null)
            outs.append(vc)
            x = x + (float(sched[i + 1]) - s) * (vu + 2.0 * (vc - vu))
    return outs + [x]


POLICIES = {"fixed": lambda: FixedPolicy(interval=3, order=1, warmup=2),
            "auto": lambda: AutoPolicy(threshold=0.3)}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_threads_share_one_compiled_model_independently(policy):
    """4 threads x 5 generations through one compiled demo model, in lock step: every output equals
    the same generation run alone."""
    model = _demo().load_model()
    be = taylorseer_backend(POLICIES[policy](), inner="eager")
    cm = torch.compile(model, backend=be)
    jobs = [[(10 * w + k, [w, (w + k) % 10]) for k in range(5)] for w in range(4)]
    alone = {seed: _generate(cm, 8, seed, labels) for job in jobs for seed, labels in job}
    assert be.stats()["forecast"] > 0
    be.reset()
    barrier = threading.Barrier(4)
    got, errors = {}, []

    class Stepper(torch.nn.Module):            # every thread waits for the others before each call
        def forward(self, *a):
            barrier.wait()
            return cm(*a)
    stepper = Stepper()

    def work(job):
        try:
            for seed, labels in job:
                got[seed] = _generate(stepper, 8, seed, labels)
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len({t["thread"] for t in be.stats()["trace"]}) == 4
    for seed, outs in alone.items():
        for a, b in zip(got[seed], outs):
            assert torch.equal(a, b), seed


def test_two_instances_through_one_backend_equal_one_backend_each():
    """A mixture-of-experts hand-over at step 5 (Wan 2.2's transformer / transformer_2): instance B
    never forecasts from instance A's features."""
    a, b = make_plain_dit(seed=0), make_plain_dit(seed=1)
    x, y = plain_dit_inputs()
    ts = [1000.0 - 100.0 * k for k in range(10)]

    def run(call_a, call_b):
        outs = []
        with torch.no_grad():
            for k, t in enumerate(ts):
                outs.append((call_a if k < 5 else call_b)(x, torch.full((2,), t), y))
        return outs

    policy = FixedPolicy(interval=2, order=1)
    shared = taylorseer_backend(policy, inner="eager")
    got = run(torch.compile(a, backend=shared), torch.compile(b, backend=shared))
    assert len(shared.graphs) == 1                   # one graph, two instances' parameters
    steps = [(t["step"], t["decision"]) for t in shared.stats()["trace"]]
    assert steps[5:7] == [(0, "compute"), (1, "compute")]    # B starts its own generation
    torch._dynamo.reset()
    own_a, own_b = taylorseer_backend(policy, inner="eager"), taylorseer_backend(policy, inner="eager")
    want = run(torch.compile(a, backend=own_a), torch.compile(b, backend=own_b))
    for k, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), k


def test_interrupted_run_leaves_nothing_for_a_lower_starting_run(monkeypatch):
    model = _demo().load_model()
    be = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2), inner="eager")
    cm = torch.compile(model, backend=be)
    _generate(cm, 10, 0, [1, 2])                    # compiled, one clean run
    orig, calls = GraphRuntime._run_whole, []

    def failing(self, call, args):              # inside the 4th model call (a forecast step)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return orig(self, call, args)
    monkeypatch.setattr(GraphRuntime, "_run_whole", failing)
    with pytest.raises(KeyboardInterrupt):
        _generate(cm, 10, 1, [3, 4])
    monkeypatch.undo()
    got = _generate(cm, 10, 2, [5, 6], start=5)     # img2img: the same schedule, from step 5
    torch._dynamo.reset()
    fresh = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2), inner="eager")
    want = _generate(torch.compile(model, backend=fresh), 10, 2, [5, 6], start=5)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batched_cfg", [True, False])
def test_a_dummy_call_before_the_loop_changes_nothing(batched_cfg):
    demo = _demo()
    model = demo.load_model()
    policy = FixedPolicy(interval=3, order=1, warmup=2)
    be = taylorseer_backend(policy, inner="eager")
    cm = torch.compile(model, backend=be)
    want = _generate(cm, 10, 3, [7, 8], batched_cfg)
    be.reset()
    n = 4 if batched_cfg else 2
    with torch.no_grad():
        cm(torch.zeros(n, 1, demo.RESOLUTION, demo.RESOLUTION), torch.full((n,), float(demo.sigmas(10)[0])),
           torch.zeros(n, dtype=torch.long))
    got = _generate(cm, 10, 3, [7, 8], batched_cfg)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert be.stats()["forecast"] > 0


def _plain(policy=None):
    """The plain test DiT compiled through a fresh backend: (compiled, backend, x, y)."""
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(policy or FixedPolicy(interval=2, order=1), inner="eager")
    return torch.compile(model, backend=be), be, x, y


def _held_over(cm, be, x, y, coords_per_generation, generations):
    held = []
    with torch.no_grad():
        for _ in range(generations):
            for t in coords_per_generation:
                cm(x, torch.full((2,), t), y)
            held.append(be.memory_bytes())
    return held


@pytest.mark.parametrize("steps", [1, 2])
def test_many_short_generations_hold_bounded_memory(steps):
    cm, be, x, y = _plain()
    one_stream = _held_over(cm, be, x, y, [900.0, 800.0], 1)[0]       # one generation, one stream
    held = _held_over(cm, be, x, y, [900.0 - 100.0 * k for k in range(steps)], 500)
    assert 0 < max(held) == max(held[:20])                 # flat: never above what 20 generations held
    assert max(held) <= MAX_STREAMS * one_stream           # 1-step runs at one timestep: streams, bounded


def test_constant_coordinate_never_forecasts_and_stays_bounded():
    cm, be, x, y = _plain()
    held = _held_over(cm, be, x, y, [500.0], 200)
    assert be.stats()["forecast"] == 0
    assert max(held) == max(held[:20])


def test_cfg_truncation_keeps_the_step_index_and_the_cooldown():
    """The batch halves at step 12 of 20 (CFG switched off): the step index goes on, so the
    cooldown's last two steps are computed; the new batch's factors start over."""
    model = make_plain_dit()
    x, y = plain_dit_inputs(batch=1)
    be = taylorseer_backend("openvino-lite", num_steps=20, inner="eager")
    cm = torch.compile(model, backend=be)
    ts = [1000.0 - 50.0 * k for k in range(20)]
    with torch.no_grad():
        for k, t in enumerate(ts):
            xb, yb = (torch.cat([x, x]), torch.cat([y, torch.full_like(y, 10)])) if k < 12 else (x, y)
            cm(xb, torch.full((xb.shape[0],), t), yb)
    tr = be.stats()["trace"]
    assert [t["step"] for t in tr] == list(range(20))
    assert [t["decision"] for t in tr[-2:]] == ["compute", "compute"]
    assert tr[12]["decision"] == "compute" and be.stats()["forecast"] > 0


@pytest.mark.parametrize("kind", ["tensor", "0-dim", "float", "int"])
def test_every_timestep_type_caches(kind):
    cm, be, x, y = _plain()
    make = {"tensor": lambda t: torch.full((2,), float(t)), "0-dim": lambda t: torch.tensor(float(t)),
            "float": lambda t: float(t) + 0.5, "int": int}[kind]
    with torch.no_grad(), pytest.warns() if kind in ("float", "int") else _no_warning():
        for gen in range(3):
            for t in range(900, 0, -100):
                cm(x, make(t), y)
    s = be.stats()
    graphs = len(be.graphs)
    assert graphs == (2 if kind in ("float", "int") else 1)   # dynamo's own recompile at the 2nd value
    assert s["uncached_calls"] == (1 if kind in ("float", "int") else 0)
    assert s["forecast"] >= 3 * 4 - 1
    with torch.no_grad():
        for t in range(900, 0, -100):
            cm(x, make(t), y)
    assert len(be.graphs) == graphs                           # no recompile afterwards


def test_per_sample_timesteps_use_element_0_and_say_so_once():
    cm, be, x, y = _plain()
    with torch.no_grad(), pytest.warns(UserWarning, match="element 0") as rec:
        for t in range(900, 0, -100):
            cm(x, torch.tensor([float(t), float(t) / 2]), y)
    assert sum("element 0" in str(w.message) for w in rec) == 1
    assert [t["coordinate"] for t in be.stats()["trace"]] == [float(t) for t in range(900, 0, -100)]
    assert be.stats()["forecast"] > 0


class _no_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_threads_server_example(capsys):
    _demo()
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "threads_server.py"
    spec = importlib.util.spec_from_file_location("threads_server", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--requests", "6", "--steps", "12", "--workers", "3"])
    out = capsys.readouterr().out
    assert out.count("6/6 equal to the sequential run") == 2 and " 0 of " not in out
    assert "as asyncio tasks in one thread" in out


def test_in_a_session_a_recompile_and_a_second_instance_go_on_counting():
    """Sync-free sessions count calls per owner: a batch change (a new graph) mid-run and a second
    model instance taking over a shared graph both continue at the right step and timestep."""
    a, b = make_plain_dit(seed=0), make_plain_dit(seed=1)
    x, y = plain_dit_inputs(batch=1)
    ts = [1000.0 - 50.0 * k for k in range(20)]
    be = taylorseer_backend("openvino-lite", inner="eager")
    ca, cb = torch.compile(a, backend=be), torch.compile(b, backend=be)
    # the two restarts (a new graph at 8, a new instance at 14) cost the preset's 6-step warm-up
    # twice: the session's end says so
    with pytest.warns(UserWarning, match="2 of the 5 forecasts.*restarted"):
        with torch.no_grad(), be.session(timesteps=ts):
            for k, t in enumerate(ts):
                xb, yb = (torch.cat([x, x]), torch.cat([y, y])) if k < 8 else (x, y)
                (ca if k < 14 else cb)(xb, torch.full((xb.shape[0],), t), yb)
    tr = be.stats()["trace"]
    assert [t["step"] for t in tr] == list(range(20)) and [t["coordinate"] for t in tr] == ts
    assert len(be.graphs) == 2                                   # batch 2, then batch 1
    assert [t["decision"] for t in tr[8:10]] == ["compute", "compute"]     # the new graph's warm-up
    assert [t["decision"] for t in tr[14:16]] == ["compute", "compute"]    # b's own warm-up
    assert [t["decision"] for t in tr[-2:]] == ["compute", "compute"]      # the cooldown, from the end
