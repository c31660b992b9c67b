"""A cache check for your own CI: copy this file next to your tests and point it at your pipeline.

    python -m pytest examples/test_my_cache.py                                   # check
    python -m pytest examples/test_my_cache.py --taylorseer-baseline=cache.json  # and hold to a baseline
    python -m pytest examples/test_my_cache.py --taylorseer-baseline=cache.json --taylorseer-bless

Here the pipeline is the shipped demo Flux (no download); put yours in ``pipe()`` (loaded once per
session) and your prompts in ``INPUTS``. Each check draws ``examples`` cases (step counts, seeds,
inputs), runs each uncached, never-forecast and cached, and fails naming the smallest failing case as
a call you can paste. See docs/testing.md.
"""

import pytest

from taylorseer_fx.demo.flux_model import PIXEL_SIZE
from taylorseer_fx.demo.flux_pipeline import build_pipeline, pipeline_inputs

# your prompts (here: digit labels 3 and 7 of the demo, with true CFG)
INPUTS = [dict(pipeline_inputs([k]), height=PIXEL_SIZE, width=PIXEL_SIZE, output_type="latent") for k in (3, 7)]


@pytest.fixture(scope="session")
def pipe():
    return build_pipeline()          # yours: DiffusionPipeline.from_pretrained(...), uncompiled


@pytest.mark.taylorseer(examples=4, steps=(12, 30), tolerance=0.05)
def test_auto_policy_stays_within_5_percent(taylorseer_check, pipe):
    result = taylorseer_check(pipe, "auto-balanced", inputs=INPUTS, min_forecast=0.2)
    assert result.ok


@pytest.mark.taylorseer(examples=3, steps=(20, 28), tolerance=0.25)
def test_the_official_schedule_is_followed_exactly(taylorseer_check, pipe):
    taylorseer_check(pipe, "official-flux", inputs=INPUTS)
