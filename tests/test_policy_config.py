"""Policies as data: fields keep what was given, ``dataclasses.replace`` equals a fresh construction,
TOML round trips, and any schedule (when) takes any forecast (how)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from taylorseer_fx import AutoPolicy, FixedPolicy, Forecast, MaskPolicy, load_policy, policy_to_toml
from taylorseer_fx.policy.base import MAX_ORDER
from taylorseer_fx.policy.presets import policy_from_dict, policy_to_dict
from taylorseer_fx.testing import strategies as S

FAST = settings(max_examples=80, deadline=None, derandomize=True, database=None)


policies_with_kwargs = S.policies_with_kwargs


def _build(cls, kw):
    """``cls(**kw)``, or None when the combination is invalid (a ValueError)."""
    try:
        return cls(**kw) if cls is not MaskPolicy else MaskPolicy(kw.pop("compute_steps"), **kw)
    except ValueError:
        return None

policies = policies_with_kwargs().map(lambda pk: pk[0])


@FAST
@given(policies_with_kwargs(), st.integers(0, 3))
def test_replace_equals_a_fresh_construction(policy_kw, order):
    policy, kw = policy_kw
    fresh = _build(type(policy), {**kw, "order": order})      # from what the user wrote, order changed
    if fresh is None:
        with pytest.raises(ValueError):
            dataclasses.replace(policy, order=order)
        return
    got = dataclasses.replace(policy, order=order)
    assert got == fresh and hash(got) == hash(fresh)
    assert got.forecast == fresh.forecast and got.warmup_steps == fresh.warmup_steps
    assert got.compute_steps(24) == fresh.compute_steps(24)


def test_replace_re_resolves_what_was_left_to_default():
    p = dataclasses.replace(AutoPolicy(threshold=0.1), order=2)
    assert p == AutoPolicy(threshold=0.1, order=2)
    assert (p.warmup, p.coordinate, p.select_order, p.max_order) == (None, None, None, None)
    assert p.warmup_steps == 3 and p.forecast.max_order == 3          # order + 1 with order selection
    q = dataclasses.replace(FixedPolicy(interval=3), order=3)
    assert q.warmup_steps == 4 and q.compute_steps(10) == FixedPolicy(interval=3, order=3).compute_steps(10)
    m = dataclasses.replace(MaskPolicy([0, 1, 2, 5]), order=2)
    assert m == MaskPolicy([0, 1, 2, 5], order=2) and m.forecaster_options()["order"] == 2


@FAST
@given(policy=policies)
def test_toml_round_trip(policy, tmp_path_factory):
    """A written preset pins every resolved field: it reads back to a policy that decides and forecasts
    the same, and that is written the same again (a later change of a default changes nothing)."""
    spec = policy_to_dict(policy)
    assert {"form", "coordinate", "warmup", "select_order", "max_order", "order"} <= set(spec)
    again = policy_from_dict(spec)
    assert policy_to_dict(again) == spec
    path = tmp_path_factory.mktemp("presets") / "p.toml"
    path.write_text(policy_to_toml(policy, description="round trip"))
    back = load_policy(path)
    assert type(back) is type(policy) and back.forecast == policy.forecast
    assert back.warmup_steps == policy.warmup_steps
    assert back.compute_steps(30) == policy.compute_steps(30)
    for f in dataclasses.fields(policy):
        if f.name not in ("form", "coordinate", "warmup", "select_order", "max_order", "order_margin"):
            assert getattr(back, f.name) == getattr(policy, f.name), f.name


def test_forecast_validates_like_the_policies():
    good = dict(form="newton", order=1, coordinate="timestep", select_order=False, max_order=1, order_margin=1.0)
    Forecast(**good)
    for field, bad in [("form", "bogus"), ("order", -1), ("order", 9), ("coordinate", "sigma"),
                       ("select_order", 1), ("max_order", 0), ("order_margin", 0.0), ("order_margin", True)]:
        with pytest.raises(ValueError, match=field):
            Forecast(**dict(good, **{field: bad}))


def test_the_shipped_auto_presets_pin_every_field_they_rely_on():
    """Changing a default (AutoPolicy's form, its coordinate, the order choice) never changes a preset."""
    from taylorseer_fx.policy.presets import _preset_dirs
    for d in _preset_dirs():
        for path in d.glob("auto-*.toml"):
            text = path.read_text()
            for field in ("form", "coordinate", "select_order", "max_order", "order_margin", "warmup"):
                assert f"\n{field} = " in text, (path.name, field)


def test_the_types_a_user_annotates_with_are_exported():
    import taylorseer_fx
    for name in ("Policy", "TaylorSeerBackend", "CompiledPipeline"):
        assert name in taylorseer_fx.__all__ and isinstance(getattr(taylorseer_fx, name), type)
    assert isinstance(taylorseer_fx.taylorseer_backend(inner="eager"), taylorseer_fx.TaylorSeerBackend)
    assert isinstance(load_policy("auto-balanced"), taylorseer_fx.Policy)


@FAST
@given(policies, policies)
def test_any_schedule_takes_any_forecast(when, how_of):
    f = how_of.forecast
    try:
        paired = when.with_forecast(f)
    except ValueError as e:                 # newton needs order + 1 computed warm-up steps
        assert "warmup" in str(e) or "order + 1" in str(e)
        return
    assert paired.forecast == f and paired.forecaster_options() == how_of.forecaster_options()
    if isinstance(when, (FixedPolicy, MaskPolicy)) and paired.warmup_steps == when.warmup_steps:
        assert paired.compute_steps(30) == when.compute_steps(30)      # the schedule is unchanged


def test_with_forecast_takes_a_policy_or_a_forecast_and_nothing_else():
    auto = AutoPolicy(threshold=0.05)
    m = MaskPolicy([0, 1, 2, 6, 9]).with_forecast(auto)
    assert m.forecast == auto.forecast and m.compute_steps(10) == [0, 1, 2, 6, 9]
    assert MaskPolicy([0, 1, 2]).with_forecast(Forecast("newton", 0, "step", False, 0, 1.0)).order == 0
    with pytest.raises(ValueError, match="with_forecast"):
        MaskPolicy([0, 1, 2]).with_forecast({"order": 1})


@pytest.mark.parametrize("make, field", [
    (lambda: FixedPolicy(order=MAX_ORDER + 1, warmup=MAX_ORDER + 2), "order"),
    (lambda: FixedPolicy(order=10 ** 18), "order"),
    (lambda: AutoPolicy(threshold=0.1, order=MAX_ORDER), "max_order"),       # max_order = order + 1
    (lambda: AutoPolicy(threshold=0.1, max_order=MAX_ORDER + 1), "max_order"),
    (lambda: MaskPolicy(5), "compute_steps"),
    (lambda: MaskPolicy([0, 1], warmupp=2), "warmupp"),
    (lambda: FixedPolicy(select_order="yes"), "select_order"),
])
def test_bounds_and_types_are_value_errors_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_the_highest_order_is_accepted():
    p = FixedPolicy(order=MAX_ORDER, warmup=MAX_ORDER + 1)
    assert p.forecaster_options()["order"] == MAX_ORDER
