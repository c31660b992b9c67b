"""Serving, the call itself: batch arguments by name or position, callables without a signature,
per-token timesteps, a timestep left out of the batch arguments, buckets too small, a request closed from
another thread, and every misuse a ValueError naming what is wrong."""

from __future__ import annotations

import threading

import pytest
import torch

from taylorseer_fx import FixedPolicy
from taylorseer_fx.serving.batched import BatchedCache
from test_serving import D, RowWise


# ------------------------------------------------------------------ bad input: ValueErrors that name it
@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_args=()), "batch_args must name"),
    (dict(batch_args="x"), "batch_args must name"),
    (dict(batch_args=("x", "nope")), "takes no argument 'nope'"),
    (dict(batch_args=("x", 1.5)), "neither an argument name nor a position"),
    (dict(batch_args=("x", "cond"), timestep_arg="timestep"), "must be one of batch_args"),
    (dict(batch_args=("x",), buckets=(4, 2)), "buckets must be"),
    (dict(batch_args=("x",), buckets=(0,)), "buckets must be"),
    (dict(batch_args=("x",), factor_dtype=torch.int32), "factor_dtype"),
    (dict(batch_args=("x",), policy="no-such-preset"), "policy="),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchedCache(RowWise(), **kwargs)


def test_bad_calls():
    model = RowWise()
    cache = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"))
    other = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"))
    a, b = cache.open(2), cache.open(2, branches=("cond", "uncond"))
    x, t, c = torch.randn(2, D), torch.ones(2), torch.zeros(2, D)
    with pytest.raises(ValueError, match="rows must be"):
        cache(x, t, c, rows=[])
    with pytest.raises(ValueError, match="appears twice"):
        cache(x, t, c, rows=[a, a])
    with pytest.raises(ValueError, match="another BatchedCache"):
        cache(x, t, c, rows=[a, other.open(2)])
    with pytest.raises(ValueError, match="rows\\[1\\] is a str"):
        cache(x, t, c, rows=[a, "b"])
    with pytest.raises(ValueError, match="'x' must be a tensor whose dim 0 is the 3 rows"):
        cache(x, torch.ones(3), torch.zeros(3, D), rows=[a, b["cond"], b["uncond"]])
    with pytest.raises(KeyError, match="no branch 'neg'"):
        b["neg"]
    with pytest.raises(ValueError, match="does not fit the model's forward"):
        cache(x, rows=[a, b])
    with pytest.raises(ValueError, match="num_steps must be"):
        cache.open(0)
    with pytest.raises(ValueError, match="branches must be distinct"):
        cache.open(3, branches=("cond", "cond"))
    with pytest.raises(ValueError, match="sigmas must hold"):
        cache.open(3, sigmas=[1.0, 0.5])
    with torch.no_grad():
        for _ in range(2):
            cache(x, t, c, rows=[a, b])
    with pytest.raises(ValueError, match="already took its num_steps=2"):
        cache(x, t, c, rows=[a, b])


def test_an_output_without_rows_is_refused():
    class Pooled(torch.nn.Module):
        def forward(self, x, timestep):
            return x.mean() + timestep.mean()
    cache = BatchedCache(Pooled(), FixedPolicy(interval=2), batch_args=("x", "timestep"))
    with torch.no_grad(), pytest.raises(ValueError, match="one row per input row"):
        cache(torch.ones(2, 3), torch.ones(2), rows=[cache.open(3), cache.open(3)])


class PerToken(torch.nn.Module):
    """Row-wise, with a timestep per token (``(B, D)``, as Wan 2.2's TI2V gives the first frame 0)."""

    def forward(self, x, timestep):
        return torch.tanh(x + timestep)


def test_per_token_timesteps_take_the_row_maximum_as_the_coordinate():
    model = PerToken()
    steps = 8
    ts = [torch.cat([torch.zeros(1, 4), torch.full((1, D - 4), 1 - i / steps)], 1) for i in range(steps)]
    xs = [torch.full((1, D), 0.1 * i) for i in range(steps)]
    policy = FixedPolicy(interval=2)
    with torch.no_grad():
        solo = BatchedCache(model, policy, batch_args=("x", "timestep"))
        alone = solo.open(steps)
        ref = [solo(xs[i], ts[i], rows=[alone]) for i in range(steps)]
        both = BatchedCache(model, policy, batch_args=("x", "timestep"))
        a, b = both.open(steps), both.open(steps)
        for i in range(steps):
            out = both(torch.cat([xs[i], xs[(i + 3) % steps]]), torch.cat([ts[i], ts[(i + 5) % steps]]), rows=[a, b])
            assert torch.equal(out[:1], ref[i])
    last = max(i for i, c in enumerate(alone.decisions) if c)
    assert alone.state("cond").forecaster.nodes[0] == pytest.approx(1 - last / steps)   # the row's max, not 0
    assert solo.stats()["forecast_rows"] > 0


def test_a_per_row_timestep_left_out_of_batch_args_is_refused():
    cache = BatchedCache(RowWise(), FixedPolicy(interval=2), batch_args=("x", "cond"))
    with torch.no_grad(), pytest.raises(ValueError, match="'timestep' has one value per row"):
        cache(torch.zeros(2, D), torch.ones(2), torch.zeros(2, D), rows=[cache.open(3), cache.open(3)])


def test_batch_args_by_position_and_models_without_a_signature():
    model = RowWise()
    by_pos = BatchedCache(model, FixedPolicy(interval=2), batch_args=(0, 1, 2))
    assert by_pos.batch_args == ("x", "timestep", "cond") and by_pos.timestep_arg == "timestep"
    plain = BatchedCache(lambda *a: model(*a), FixedPolicy(interval=2, coordinate="step"), batch_args=(0, 1, 2))
    x, t, c = torch.randn(2, D), torch.ones(2), torch.zeros(2, D)
    with torch.no_grad():
        for cache in (by_pos, plain):
            a, b = cache.open(3), cache.open(3)
            for i in range(3):
                out = cache(x, t * (1 - i / 3), c, rows=[a, b])
                assert torch.equal(out[0], model(x, t * (1 - i / 3), c)[0]) or not all(a.decisions)
    with pytest.raises(ValueError, match="position 5 is not one of"):
        BatchedCache(model, batch_args=(0, 5))


def test_closing_from_another_thread_waits_for_the_tick():
    started, release = threading.Event(), threading.Event()

    class Slow(RowWise):
        def forward(self, x, timestep, cond, scale: float = 1.0):
            started.set()
            release.wait(5)
            return super().forward(x, timestep, cond, scale)

    cache = BatchedCache(Slow(), FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"))
    a, b = cache.open(4), cache.open(4)
    result = {}

    def tick():
        with torch.no_grad():
            result["out"] = cache(torch.ones(2, D), torch.ones(2), torch.zeros(2, D), rows=[a, b])

    t = threading.Thread(target=tick)
    t.start()
    started.wait(5)
    closer = threading.Thread(target=a.close, kwargs={"audit": False})
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and not a.closed        # it waits for the tick in flight
    release.set()
    t.join(5), closer.join(5)
    assert a.closed and result["out"][0].shape == (2, D) and cache.requests == [b]
    assert a.memory_bytes() == 0


def test_more_computing_rows_than_the_largest_bucket_warn():
    cache = BatchedCache(RowWise(), FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"), buckets=(1, 2))
    reqs = [cache.open(3) for _ in range(3)]
    with torch.no_grad(), pytest.warns(UserWarning, match="more than the largest bucket 2"):
        cache(torch.ones(3, D), torch.ones(3), torch.zeros(3, D), rows=reqs)
    assert cache.stats()["sub_batch_sizes"] == {3: 1}
