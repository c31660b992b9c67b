"""Bad input says what to do: TOML problems name the file and the field and are ValueErrors, a bare
name loads only shipped presets, grad-enabled calls warn, training never writes into the package."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import taylorseer_fx
from taylorseer_fx import load_policy, taylorseer_backend
from taylorseer_fx.policy.base import Policy
from taylorseer_fx.policy.presets import policy_from_dict

FIELDS = ["kind", "interval", "phase", "order", "form", "coordinate", "warmup", "cooldown", "num_steps",
          "threshold", "compute_steps", "mask", "estimator", "max_order", "select_order", "order_margin",
          "first_enhance", "fresh_threshold", "max_order", "cache_interval", "disable_cache_after_step",
          "min_forecast_run", "accumulate", "per_region", "max_forecast_run", "derivatives_from", "x"]
toml_scalars = st.one_of(st.integers(-5, 40), st.integers(), st.floats(allow_nan=True), st.booleans(),
                         st.text(max_size=8), st.sampled_from(["fixed", "auto", "mask", "official", "openvino",
                                                                "diffusers", "seed", "newton", "taylor", "step"]))
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=5), st.dictionaries(st.text(max_size=3),
                                                                                          toml_scalars, max_size=2))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.sampled_from(FIELDS), toml_values, max_size=6))
def test_policy_from_dict_raises_only_value_errors_naming_the_source(spec):
    try:
        p = policy_from_dict(spec, source="fuzz.toml")
    except ValueError as e:
        assert str(e).startswith("fuzz.toml: ")
    else:
        assert isinstance(p, Policy)


@pytest.mark.parametrize("text, field", [
    ('kind = ["fixed"]', "kind"),
    ('kind = "mask"\ncompute_steps = 5', "compute_steps"),
    ('kind = "fixed"\ninterval = "3"', "interval"),
    ('kind = "auto"', "threshold"),
    ('kind = "fixed"\norder = 100', "order"),
])
def test_toml_errors_name_the_file_and_the_field(tmp_path, text, field):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_a_binary_file_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "weights.toml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="weights.toml"):
        load_policy(path)


def test_a_bare_name_loads_only_the_shipped_preset(tmp_path, monkeypatch):
    shipped = load_policy("official-flux")
    monkeypatch.chdir(tmp_path)
    for stray in ("official-flux", "official-flux.toml"):
        (tmp_path / stray).write_text('kind = "fixed"\ninterval = 2\n')
    assert load_policy("official-flux") == shipped
    assert load_policy("./official-flux.toml") != shipped            # a path is a path
    with pytest.raises(ValueError, match="./nothing-here.toml"):
        load_policy("nothing-here")


def test_grad_enabled_calls_warn_once_and_run_uncached():
    torch._dynamo.reset()
    lin = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(2)])
    be = taylorseer_backend(inner="eager")
    cm = torch.compile(lin, backend=be)
    with pytest.warns(UserWarning, match=r"grad is enabled; wrap sampling in torch.no_grad\(\)"):
        cm(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm(torch.randn(2, 4))
    torch._dynamo.reset()


def test_training_writes_into_the_working_directory_by_default():
    from taylorseer_fx.demo import train
    package = Path(taylorseer_fx.__file__).resolve().parent
    for model in ("dit", "flux"):
        args = train.parser().parse_args(["--model", model])
        for out in (train.weights_out(args), args.classifier_out):
            assert not out.resolve().is_relative_to(package) and not out.is_absolute()
