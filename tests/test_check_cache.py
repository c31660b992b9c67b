"""``taylorseer_fx.testing.check_cache`` catches the faults a cache can have, each injected here, and
passes healthy configurations (tiny random-weight Flux pipeline, a bare sampling loop, the demo Flux).

The faults are injected below the harness (the runtime, the forecaster): the harness only sees what a
user's pipeline would give."""

from __future__ import annotations

import contextvars

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

diffusers = pytest.importorskip("diffusers")

from taylorseer_fx import AutoPolicy, FixedPolicy  # noqa: E402
from taylorseer_fx.forecast.forecaster import Forecaster  # noqa: E402
from taylorseer_fx.policy.base import Schedule  # noqa: E402
from taylorseer_fx.runtime.region_state import Generation  # noqa: E402
from taylorseer_fx.runtime.runtime import Runtime  # noqa: E402
from taylorseer_fx.testing import Case, check_cache  # noqa: E402

from test_pipeline import _flux_embeds, _flux_pipe  # noqa: E402

FIXED = "official-flux"


@pytest.fixture
def tiny():
    pipe, _ = _flux_pipe()
    cond, _ = _flux_embeds()
    return pipe, [dict(cond, height=64, width=64, output_type="latent")]


def _check(tiny, policy=FIXED, **kw):
    pipe, inputs = tiny
    kw = {"steps": (6, 12), "examples": 4, "tolerance": 0.15, **kw}
    return check_cache(pipe, policy, inputs=inputs, **kw)


def _failed(result) -> set:
    assert not result.ok and result.shrunk is not None
    with pytest.raises(AssertionError, match="smallest failing case: pipe\\("):
        result.assert_ok()
    return {c for c, _ in result.shrunk.failures}


def _map_forecast(monkeypatch, fn):
    orig = Forecaster.forecast

    def forecast(self, t):
        out = orig(self, t)
        return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)
    monkeypatch.setattr(Forecaster, "forecast", forecast)


# ------------------------------------------------------------------------------------- healthy
def test_a_healthy_fixed_configuration_passes_every_check(tiny):
    r = _check(tiny)
    r.assert_ok()
    assert len(r.rows) == 4 and all(row.forecasts > 0 for row in r.rows)
    for row in r.rows:      # the schedule check compared with the policy's own schedule
        assert [i for i, c in enumerate(row.decisions["transformer"]) if c == "C"] == \
            FixedPolicy.official().compute_steps(row.steps)
    assert "steps" in r.table() and r.to_dict()["ok"] is True
    assert "_taylorseer" not in vars(tiny[0])          # the pipeline is left uncompiled


def test_a_healthy_auto_configuration_passes_with_varied_batch_and_guidance(tiny):
    pipe, inputs = tiny
    _, neg = _flux_embeds()
    r = check_cache(pipe, AutoPolicy(threshold=0.1), inputs=[dict(inputs[0], **neg)], steps=(8, 12),
                    batch_sizes=[1, 2], guidance=[1.5, 3.0], guidance_arg="true_cfg_scale", examples=3,
                    tolerance=0.15)
    r.assert_ok()
    assert {row.case.guidance for row in r.rows} <= {1.5, 3.0}


class _Denoiser(torch.nn.Module):
    """A one-block denoiser called as ``model(x, timestep)``, with a ``(batch,)`` timestep."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(),
                                                               torch.nn.Linear(16, 4))])

    def forward(self, x, timestep):
        for b in self.blocks:
            x = b(x) * (1 + timestep[:, None] / 1000)
        return x


@torch.no_grad()              # as sampling runs (with grad enabled the cache stays off, and says so)
def _sample(m, case: Case):
    x = torch.randn(case.batch_size or 1, 4, generator=torch.Generator().manual_seed(case.seed))
    for t in torch.linspace(999, 0, case.steps):
        x = x - 0.01 * m(x, t.reshape(1).expand(x.shape[0]))
    return x


def test_a_model_with_a_sampling_callable_is_checked_in_requests():
    r = check_cache(_Denoiser(), FIXED, sample=_sample, steps=(8, 12), batch_sizes=[1, 2], examples=3,
                    tolerance=0.05)
    r.assert_ok()
    assert "sample(model, Case(" in r.rows[0].call


def test_many_checks_of_one_model_in_one_process_all_reach_the_cache():
    # a test suite parametrised over policies with one model: each check compiled the model with a new
    # backend, a dynamo cache entry each, and the ninth hit the recompile limit and ran uncompiled
    model = _Denoiser()
    for i, policy in enumerate(["official-flux", AutoPolicy(threshold=0.1)] * 6):
        r = check_cache(model, policy, sample=_sample, steps=8, examples=1, tolerance=0.2)
        assert r.ok, (i, r.table())
        assert r.rows[0].forecasts > 0


@pytest.mark.parametrize("fault", ["another model", "grad enabled"])
def test_a_sampler_whose_calls_never_reach_the_cache_fails_saying_why(fault):
    elsewhere = _Denoiser()
    if fault == "another model":
        sample = lambda m, case: _sample(elsewhere, case)        # noqa: E731
    else:
        sample = lambda m, case: _sample.__wrapped__(m, case).detach()   # noqa: E731  (no torch.no_grad())
    r = check_cache(_Denoiser(), FIXED, sample=sample, steps=8, examples=1)
    assert not r.ok
    with pytest.raises(AssertionError, match="no call of the model reached the cache: sample.*torch.no_grad"):
        r.assert_ok()


def test_two_open_checks_of_one_model_never_share_a_backend():
    from taylorseer_fx.integrations.targets import make_target

    def planned(policy, n=8):
        steps = policy.compute_steps(n)
        return "".join("C" if i in steps else "F" for i in range(n))
    every2, every3 = FixedPolicy(interval=2, order=0, warmup=1), FixedPolicy(interval=3, order=0, warmup=1)
    assert planned(every2) != planned(every3)
    model = _Denoiser()
    first, _ = make_target(model, None, _sample, who="check_cache")
    second, _ = make_target(model, None, _sample, who="check_cache")
    with first.open(every2) as run_a:
        with second.open(every3) as run_b:
            assert first.backend is not second.backend      # one policy swap cannot reach the other's runs
            a, b = run_a(Case(steps=8)), run_b(Case(steps=8))
            assert (a.decisions["model"], b.decisions["model"]) == (planned(every2), planned(every3))
            own = second.backend
        with second.open(every3):                       # the shared one still busy: the same own backend again,
            assert second.backend is own                # not a new one (a dynamo cache entry) per open
        kept = first.backend
    with second.open(every2) as run:                    # closed: the model's backend is reused
        assert second.backend is kept and run(Case(steps=8)).decisions["model"] == planned(every2)


# ---------------------------------------------------------------------------------- the faults
def test_a_backend_that_never_forecasts_fails_the_forecast_check(tiny, monkeypatch):
    monkeypatch.setattr(Schedule, "decide", lambda self, step, estimate=None: True)
    r = _check(tiny, AutoPolicy(threshold=0.1))
    assert "forecasts" in _failed(r)
    # shrunk to the fewest steps the policy must forecast at: shorter runs than min_steps (8) compute
    # every step by design, and the check asks them for no forecast
    assert r.shrunk.case.steps == AutoPolicy(threshold=0.1).min_steps == 8


_IN_RUNTIME = contextvars.ContextVar("in_runtime", default=False)


def test_a_schedule_off_by_one_step_fails_the_schedule_check(tiny, monkeypatch):
    """The runtime asks the policy about the step after the one it runs (the policy's own
    compute_steps, which the check compares with, is left alone)."""
    plan, decide = Generation.plan, Schedule.decide

    def late_plan(self, *a, **k):
        token = _IN_RUNTIME.set(True)
        try:
            return plan(self, *a, **k)
        finally:
            _IN_RUNTIME.reset(token)
    monkeypatch.setattr(Generation, "plan", late_plan)
    monkeypatch.setattr(Schedule, "decide", lambda self, step, estimate=None: decide(
        self, step + 1 if _IN_RUNTIME.get() else step, estimate))
    assert "schedule" in _failed(_check(tiny))


def test_a_forecast_from_a_previous_generations_state_fails(tiny, monkeypatch):
    """Every generation of a runtime gets the first one's state (its schedule and factors)."""
    new, kept = Runtime._new_generation, {}
    monkeypatch.setattr(Runtime, "_new_generation", lambda self, session: kept.setdefault(self, new(self, session)))
    assert _failed(_check(tiny)) & {"error", "repeatable", "never"}


def test_a_nan_forecast_fails_the_finite_check(tiny, monkeypatch):
    _map_forecast(monkeypatch, lambda o: o * float("nan"))
    assert "finite" in _failed(_check(tiny))


def test_a_forecast_of_the_wrong_shape_fails(tiny, monkeypatch):
    _map_forecast(monkeypatch, lambda o: o[..., :-1])
    r = _check(tiny)
    assert _failed(r) & {"error", "shape"}
    assert "num_inference_steps=6" in r.shrunk.call


def test_a_tolerance_exceeded_at_one_step_count_is_found_and_shrunk(tiny, monkeypatch):
    """Forecasts are wrong only in 11-step runs: hypothesis finds that step count among 6..14 and
    shrinks the rest of the case (the seed) to its smallest."""
    steps = {}
    cls = type(tiny[0])
    call = cls.__call__

    def remember(self, *a, **k):
        steps["n"] = k.get("num_inference_steps")
        return call(self, *a, **k)
    monkeypatch.setattr(cls, "__call__", remember)
    noise = lambda o: o + torch.randn(o.shape, generator=torch.Generator().manual_seed(0), dtype=o.dtype) * o.std()  # noqa: E731
    _map_forecast(monkeypatch, lambda o: noise(o) if steps.get("n") == 11 else o)
    r = _check(tiny, steps=(6, 14), examples=30)
    assert _failed(r) == {"tolerance"}
    assert r.shrunk.case.steps == 11 and r.shrunk.case.seed == 0
    assert "num_inference_steps=11" in r.shrunk.call and "manual_seed(0)" in r.shrunk.call
    assert all(row.ok for row in r.rows if row.case.steps != 11)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, match", [
    (dict(tolerance=0), "tolerance"), (dict(examples=-1), "examples"), (dict(min_forecast=2), "min_forecast"),
    (dict(steps="a:b"), "steps"), (dict(steps=(9, 3)), "steps"), (dict(steps="0:5"), "steps"), (dict(batch_sizes=[0]), "batch_sizes"),
    (dict(inputs=[]), "inputs"), (dict(vary=["x"]), "vary"), (dict(min_forecast="half"), "min_forecast"),
    (dict(baseline=object()), "baseline_key")])
def test_bad_arguments_raise_a_value_error_naming_the_field(tiny, kw, match):
    pipe, inputs = tiny
    kw = {"inputs": inputs, **kw}
    with pytest.raises(ValueError, match=match):
        check_cache(pipe, FIXED, **kw)


def test_a_compiled_pipeline_is_refused(tiny):
    from taylorseer_fx import compile_pipeline

    handle = compile_pipeline(tiny[0], policy=FIXED, inner="eager")
    try:
        with pytest.raises(ValueError, match="uncompiled"):
            _check(tiny)
    finally:
        handle.remove()


def _tiny_img2img():
    torch.manual_seed(0)
    pipe, _ = _flux_pipe()
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                                  use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()
    img2img = diffusers.FluxImg2ImgPipeline(scheduler=pipe.scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                            text_encoder_2=None, tokenizer_2=None, transformer=pipe.transformer)
    img2img.set_progress_bar_config(disable=True)
    cond, _ = _flux_embeds()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return img2img, dict(cond, image=image, height=32, width=32, output_type="latent")


def test_a_budget_counts_the_steps_an_img2img_run_takes():
    """16 steps at strength 0.5 run steps 8..15: a budget of one half computes 4 of those 8."""
    from taylorseer_fx import compile_pipeline

    img2img, kw = _tiny_img2img()
    handle = compile_pipeline(img2img, policy=AutoPolicy(budget=0.5), inner="eager")
    try:
        img2img(**kw, num_inference_steps=16, strength=0.5, generator=torch.Generator().manual_seed(0))
        rows = [r for r in handle.stats()["transformer"]["trace"] if r["stream"] == 0]
    finally:
        handle.remove()
    assert [r["step"] for r in rows] == list(range(8, 16))
    assert sum(r["decision"] == "compute" for r in rows) == 4


def test_img2img_at_low_strength_is_too_short_to_forecast_and_says_so_once():
    """20 steps at strength 0.3 run 6 steps, fewer than the auto policy's min_steps (8): all compute,
    one warning names the run's length; min_steps=0 (asked) forecasts them."""
    import warnings

    from taylorseer_fx import compile_pipeline

    img2img, kw = _tiny_img2img()
    for policy, forecasts in ((AutoPolicy(budget=0.5), 0), (AutoPolicy(budget=0.5, min_steps=0), 3)):
        handle = compile_pipeline(img2img, policy=policy, inner="eager")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                for _ in range(2):
                    img2img(**kw, num_inference_steps=20, strength=0.3, generator=torch.Generator().manual_seed(0))
            rows = [r for r in handle.stats()["transformer"]["trace"] if r["stream"] == 0]
        finally:
            handle.remove()
        assert sorted({r["step"] for r in rows}) == list(range(14, 20))
        assert sum(r["decision"] == "forecast" for r in rows) == 2 * forecasts
        said = [w for w in caught if "a run of 6 steps is shorter than min_steps=8" in str(w.message)]
        assert len(said) == (1 if forecasts == 0 else 0)


def test_a_check_of_runs_too_short_to_forecast_asks_for_no_forecast(tiny):
    """On runs shorter than min_steps the forecasts check asks that none forecast (the default
    min_forecast would ask for one); with min_steps=0 the runs forecast again."""
    r = _check(tiny, AutoPolicy(threshold=0.1), steps=(4, 7), examples=3)
    r.assert_ok()
    assert all(row.forecasts == 0 and row.steps < 8 for row in r.rows)
    r = _check(tiny, AutoPolicy(threshold=0.1, min_steps=0), steps=(6, 7), examples=2)
    assert all(row.forecasts > 0 for row in r.rows)


def test_img2img_strength_is_varied_and_the_schedule_counts_the_runs_own_steps():
    """FluxImg2ImgPipeline (tiny VAE): at strength s a run takes the last N - int(N - N * s) steps
    (Flux's rounding; SD's is int(N * s)); the fixed policy's schedule is checked over those, from the
    run's first step."""
    img2img, kw = _tiny_img2img()
    r = check_cache(img2img, FIXED, inputs=[kw], steps=(8, 14), strengths=[0.5, 1.0], examples=4, tolerance=0.2)
    r.assert_ok()
    for row in r.rows:
        n = row.case.steps
        assert row.steps == n - int(n - n * row.case.strength)
    assert {row.case.strength for row in r.rows} == {0.5, 1.0}


@pytest.mark.inductor
def test_with_inductor_the_never_forecast_run_is_held_to_the_dtype_tolerance(tiny):
    """What users deploy: inner="inductor". The never-forecast run may differ from the uncached one by
    reordered reductions, within NEVER_TOLERANCE[float32]; the rest of the checks as with eager."""
    from taylorseer_fx.testing.check import NEVER_TOLERANCE

    r = _check(tiny, inner="inductor", examples=2, steps=(6, 8))
    r.assert_ok()
    assert NEVER_TOLERANCE[torch.float32] == 1e-4 and all(row.forecasts > 0 for row in r.rows)
