"""How a decision reads several estimates: ``worst`` (the one a multi-region / multi-branch decision
takes) and ``read_host`` (tensor estimates to host floats in one read). A budget paces a NaN ("no
estimate yet") and computes on +inf ("cannot estimate"), so mixing them up changes decisions."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from taylorseer_fx.forecast.estimates import read_host, worst

values = st.one_of(st.floats(min_value=0, max_value=1e6), st.just(math.nan), st.just(math.inf))


@given(st.lists(values, max_size=6), st.randoms())
def test_worst_is_inf_then_nan_then_max_in_any_order(vals, rnd):
    shuffled = list(vals)
    rnd.shuffle(shuffled)
    got = worst(shuffled)
    if not vals or math.inf in vals:
        assert got == math.inf
    elif any(math.isnan(v) for v in vals):
        assert math.isnan(got)
    else:
        assert got == max(vals)


@given(st.lists(st.tuples(values, st.booleans()), max_size=6))
def test_read_host_reads_tensors_once_and_keeps_host_floats(pairs):
    mixed = [torch.tensor(v, dtype=torch.float32) if as_tensor else v for v, as_tensor in pairs]
    read, synced = read_host(iter(mixed))          # a generator works (the runtime passes one)
    assert synced == any(t for _, t in pairs)
    assert len(read) == len(pairs) and all(isinstance(v, float) for v in read)
    for got, (v, as_tensor) in zip(read, pairs):
        if as_tensor and not math.isfinite(v):     # a non-finite tensor: its forecaster cannot estimate
            assert got == math.inf
        elif math.isnan(v):                        # a host NaN stays "no estimate yet"
            assert math.isnan(got)
        else:                                      # read as stored: float32 for a tensor
            assert got == (float(torch.tensor(v, dtype=torch.float32)) if as_tensor else v)
