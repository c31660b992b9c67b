"""Tests of taylorseer_fx.forecast.forecaster (the math of DESIGN.md §2 and the contract in docs/interfaces.md).

Property tests use hypothesis with ``@settings(max_examples=N, deadline=None)``; N is 40-60 per
property (``_FAST``/``_MEDIUM`` below), tensors are tiny (at most 4x4x4), and no test is
time-dependent, so the whole file runs in a few seconds on one CPU core.

Float tolerances are stated relative to the conditioning of polynomial interpolation: rounding the
data to relative precision ``eps`` perturbs the interpolant at ``t`` by at most
``eps * max|y| * Lambda(t)``, where ``Lambda(t) = sum_i |l_i(t)|`` is the Lebesgue function of the
stored nodes (``l_i`` the Lagrange basis). Newton divided differences with Horner evaluation add a
modest multiple of that (Higham, *Accuracy and Stability of Numerical Algorithms*, §22.3), so the
tolerances are ``C * eps * max|y| * Lambda(t)`` with ``C = 16 (order + 1)``, and ``eps`` the machine
epsilon of the arithmetic (float32 by default, float64 with ``factor_dtype=torch.float64``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taylorseer_fx.forecast.forms import FORMS
from taylorseer_fx.forecast.forecaster import Forecaster
from taylorseer_fx.forecast.forms import DIVIDED
from taylorseer_fx.testing import strategies as S

import form_refs

#: the forms exact for linear trajectories (all but hermite, a contraction: tests/test_forms.py)
LINEAR_EXACT = tuple(f for f in FORMS if f != "hermite")

_FAST = settings(max_examples=60, deadline=None)
_MEDIUM = settings(max_examples=40, deadline=None)

EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


# ----------------------------------------------------------------------------------------- helpers
coordinates = S.coordinates     # n distinct coordinates, gaps in [0.25, 1.5], increasing, decreasing or shuffled

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
seeds = st.integers(0, 2**31 - 1)


def randn(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def poly(coeffs, t):
    """sum_k c_k t^k in float64 (c_k tensors)."""
    out = torch.zeros_like(coeffs[0])
    for c in reversed(coeffs):
        out = out * t + c
    return out


def lagrange(ts, ys, t):
    """The interpolant through (ts, ys) at t, float64, and the Lebesgue function Lambda(t)."""
    out, lam = torch.zeros_like(ys[0], dtype=torch.float64), 0.0
    for i, (ti, yi) in enumerate(zip(ts, ys)):
        li = math.prod((t - tm) / (ti - tm) for m, tm in enumerate(ts) if m != i)
        out = out + li * yi.double()
        lam += abs(li)
    return out, lam


def eval_points(draw, ts):
    """Points inside and modestly outside (up to half the span) the node span."""
    lo, hi = min(ts), max(ts)
    us = draw(st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=3))
    return [lo + u * (hi - lo + 1.0) for u in us]


def newton_terms(nodes, values, t):
    """sum_j max|D_j| * prod_{i<j} |t - n_i| for the Newton form through (nodes, values), float64."""
    table, coef = [v.double() for v in values], []
    for j in range(len(nodes)):
        if j:
            table = [(table[i] - table[i + 1]) / (nodes[i] - nodes[i + j]) for i in range(len(table) - 1)]
        coef.append(float(table[0].abs().max()))
    return sum(c * math.prod(abs(t - nodes[i]) for i in range(j)) for j, c in enumerate(coef))


def maxabs(tensors):
    return max(float(x.double().abs().max()) for x in tensors) if tensors else 0.0


# ------------------------------------------------------------------------------- newton exactness
@pytest.mark.parametrize("factor_dtype", [torch.float32, torch.float64])
@_FAST
@given(data=st.data())
def test_newton_reproduces_polynomials(factor_dtype, data):
    order = data.draw(st.integers(1, 4))
    degree = data.draw(st.integers(0, order))
    n = data.draw(st.integers(order + 1, order + 3))  # more points than needed: the window slides
    ts = data.draw(coordinates(n))
    shape, seed = data.draw(shapes), data.draw(seeds)
    coeffs = [randn(shape, seed + k) for k in range(degree + 1)]
    in_dtype = factor_dtype  # float64 data for the float64 run, else input rounding dominates
    f = Forecaster(order, "newton", factor_dtype=factor_dtype)
    for t in ts:
        f.update(t, poly(coeffs, t).to(in_dtype))
    window = ts[-(order + 1):]
    assert f.nodes == window[::-1] and f.num_points == n
    m = maxabs([poly(coeffs, t) for t in window])
    for te in eval_points(data.draw, ts):
        pred = f.forecast(te)
        assert pred.dtype == in_dtype and pred.shape == shape
        _, lam = lagrange(window, [poly(coeffs, t) for t in window], te)
        tol = 16 * (order + 1) * EPS[factor_dtype] * m * lam + 1e-30
        err = float((pred.double() - poly(coeffs, te)).abs().max())
        assert err <= tol, (err, tol, te)


@pytest.mark.parametrize("factor_dtype", [torch.float32, torch.float64])
@_FAST
@given(data=st.data())
def test_newton_affine_invariance(factor_dtype, data):
    """forecast with coordinates a*t+b equals the forecast with t (any data, not only polynomials)."""
    order = data.draw(st.integers(0, 4))
    n = data.draw(st.integers(1, order + 3))
    ts = data.draw(coordinates(n))
    a = data.draw(st.floats(0.05, 20.0)) * data.draw(st.sampled_from([1.0, -1.0]))
    b = data.draw(st.floats(-50.0, 50.0))
    shape, seed = data.draw(shapes), data.draw(seeds)
    ys = [randn(shape, seed + i, factor_dtype) for i in range(n)]
    f1, f2 = Forecaster(order, factor_dtype=factor_dtype), Forecaster(order, factor_dtype=factor_dtype)
    for t, y in zip(ts, ys):
        f1.update(t, y)
        f2.update(a * t + b, y)
    window = ts[-(order + 1):]
    for te in eval_points(data.draw, ts):
        _, lam = lagrange(window, ys[-(order + 1):], te)
        # both sides carry the rounding error bound of the module docstring (and b shifts the
        # coordinates by up to |b|/(a*gap) of their spacing, which costs float64 digits, not float32)
        tol = 2 * 16 * (order + 1) * EPS[factor_dtype] * maxabs(ys) * lam * (1 + abs(b) / abs(a))
        err = float((f1.forecast(te).double() - f2.forecast(a * te + b).double()).abs().max())
        assert err <= tol + 1e-30, (err, tol)


@_FAST
@given(data=st.data())
def test_newton_agrees_at_nodes(data):
    order = data.draw(st.integers(0, 4))
    n = data.draw(st.integers(1, order + 3))
    ts = data.draw(coordinates(n))
    shape, seed = data.draw(shapes), data.draw(seeds)
    ys = [randn(shape, seed + i, torch.float32) for i in range(n)]
    f = Forecaster(order)
    for t, y in zip(ts, ys):
        f.update(t, y)
    stored = ys[-(order + 1):][::-1]  # newest first, like f.nodes
    assert torch.equal(f.forecast(f.nodes[0]), stored[0])  # the product vanishes: exact
    for node, y in zip(f.nodes, stored):
        # Lambda(node) = 1 bounds the data's error, not the evaluation's: the Newton form sums
        # D_j * prod_{i<j} (t - n_i), and rounding scales with those terms (large divided differences
        # on clustered nodes, e.g. 0, 1, 2, 3, 3.25, 3.5 at t = 1)
        tol = 16 * (order + 1) * EPS[torch.float32] * max(maxabs(stored), newton_terms(f.nodes, stored, node))
        assert float((f.forecast(node) - y).abs().max()) <= tol + 1e-30


@_FAST
@given(data=st.data())
def test_newton_graceful_lower_order(data):
    """With k < order+1 points (since reset, or since a derivatives=False update) the forecast is the
    degree k-1 interpolant of those points."""
    order = data.draw(st.integers(1, 4))
    before = data.draw(st.integers(0, 3))  # points absorbed before a derivatives=False update
    k = data.draw(st.integers(1, order))
    ts = data.draw(coordinates(before + k))
    shape, seed = data.draw(shapes), data.draw(seeds)
    ys = [randn(shape, seed + i) for i in range(before + k)]
    f = Forecaster(order, factor_dtype=torch.float64)
    for i, (t, y) in enumerate(zip(ts, ys)):
        f.update(t, y, derivatives=i != before)
    assert f.num_points == k and len(f.nodes) == k
    for te in eval_points(data.draw, ts[before:]):
        want, lam = lagrange(ts[before:], ys[before:], te)
        tol = 16 * (order + 1) * EPS[torch.float64] * maxabs(ys[before:]) * lam
        assert float((f.forecast(te) - want).abs().max()) <= tol + 1e-300


# --------------------------------------------------------------------------------- taylor parity
class OfficialTaylor:
    """Direct transcription of the official TaylorSeer `derivative_approximation` / `taylor_formula`
    (one module's cache dict; `gate` is the official `current['step'] > first_enhance - 2`)."""

    def __init__(self, max_order):
        self.max_order, self.cache, self.activated_steps = max_order, {}, []

    def derivative_approximation(self, step, feature, gate):
        self.activated_steps.append(step)
        updated_taylor_factors = {0: feature}
        if len(self.activated_steps) >= 2:
            difference_distance = self.activated_steps[-1] - self.activated_steps[-2]
        for i in range(self.max_order):
            if self.cache.get(i, None) is not None and gate:
                updated_taylor_factors[i + 1] = (updated_taylor_factors[i] - self.cache[i]) / difference_distance
            else:
                break
        self.cache = updated_taylor_factors

    def taylor_formula(self, step):
        x = step - self.activated_steps[-1]
        output = 0
        for i in range(len(self.cache)):
            output += (1 / math.factorial(i)) * self.cache[i] * (x**i)
        return output


@_FAST
@given(data=st.data())
def test_taylor_matches_official(data):
    order = data.draw(st.integers(0, 4))
    num_steps = data.draw(st.integers(2, 20))
    first = data.draw(st.integers(0, 5))
    mask = [True] + data.draw(st.lists(st.booleans(), min_size=num_steps - 1, max_size=num_steps - 1))
    gates = data.draw(st.lists(st.booleans(), min_size=num_steps, max_size=num_steps))
    shape, seed = data.draw(shapes), data.draw(seeds)
    ours, ref = Forecaster(order, "taylor"), OfficialTaylor(order)
    m = 0.0
    for s in range(first, first + num_steps):
        i = s - first
        if mask[i]:
            y = randn(shape, seed + i, torch.float32)
            m = max(m, maxabs([y]))
            ours.update(s, y, derivatives=gates[i])
            ref.derivative_approximation(s, y.double(), gates[i])
        x = s - ref.activated_steps[-1]
        # each F_i carries an absolute rounding error <= ~ i * eps * 2^i max|y| (d >= 1 step)
        tol = 16 * (order + 1) * EPS[torch.float32] * sum(
            m * 2**i * abs(x) ** i / math.factorial(i) for i in range(order + 1))
        got = ours.forecast(s)
        assert got.dtype == torch.float32
        assert float((got.double() - ref.taylor_formula(s)).abs().max()) <= tol + 1e-30
        assert ours.num_points >= 1 and len(ours.nodes) == len(ref.cache)


def test_t_squared_taylor_15_newton_16():
    for form, want in (("taylor", 15.0), ("newton", 16.0)):
        f = Forecaster(2, form)
        for s in range(4):
            f.update(float(s), torch.tensor([float(s * s)]))
        assert f.forecast(4.0).tolist() == [want], form


# ------------------------------------------------------------------------- dtypes/strides/tuples
@pytest.mark.parametrize("form", LINEAR_EXACT)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("select", [None, 1])
def test_dtype_roundtrip(form, dtype, select):
    f = Forecaster(1 if select is None else 2, form, select=select)
    for s in range(3):
        f.update(float(s), torch.full((2, 3), 1.0 + s, dtype=dtype))
    out = f.forecast(3.0)
    assert out.dtype == dtype and out.shape == (2, 3)
    assert torch.equal(out, torch.full((2, 3), 4.0, dtype=dtype))


@pytest.mark.parametrize("form", LINEAR_EXACT)
def test_strides_preserved_and_fresh_outputs(form):
    f = Forecaster(1, form)
    for s in range(2):
        y = (torch.arange(24.0).reshape(4, 6) * (s + 1)).t()  # transposed: strides (1, 6)
        f.update(float(s), y)
    out = f.forecast(2.0)
    assert out.shape == (6, 4) and out.stride() == (1, 6)
    assert torch.equal(out, torch.arange(24.0).reshape(4, 6).t() * 3)
    again = f.forecast(2.0)
    assert again.data_ptr() != out.data_ptr()
    out.zero_()  # callers may keep (and modify) earlier results
    assert torch.equal(again, f.forecast(2.0))
    # a non-dense slice keeps its strides; an expanded (overlapping) view comes back contiguous
    g = Forecaster(0, form)
    g.update(0.0, torch.randn(4, 8)[:, ::2])
    assert g.forecast(1.0).stride() == (8, 2)
    g.reset()
    g.update(0.0, torch.randn(4, 1).expand(4, 5))
    assert g.forecast(1.0).stride() == (5, 1)


@pytest.mark.parametrize("container", [tuple, list])
def test_tuple_outputs(container):
    f = Forecaster(2, "newton")
    for s in range(3):
        t = float(s)
        f.update(t, container([torch.full((3,), t * t), torch.full((2, 2), 2 * t, dtype=torch.bfloat16)]))
    out = f.forecast(3.0)
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], torch.full((3,), 9.0))
    assert out[1].dtype == torch.bfloat16 and torch.equal(out[1], torch.full((2, 2), 6.0, dtype=torch.bfloat16))
    assert f.matches(container([torch.zeros(3), torch.zeros(2, 2, dtype=torch.bfloat16)]))
    assert not f.matches((torch.zeros(3), torch.zeros(2, 2)))  # dtype differs
    assert not f.matches((torch.zeros(3),))  # structure differs
    assert not f.matches(torch.zeros(3))


@pytest.mark.parametrize("form", LINEAR_EXACT)
@pytest.mark.parametrize("select", [None, 1])
def test_low_precision_factor_dtype(form, select):
    f = Forecaster(2, form, factor_dtype=torch.bfloat16, select=select)
    for s in range(4):
        f.update(float(s), torch.full((3,), 1.0 + 2.0 * s))  # bf16-exact values
    assert all(b.dtype == torch.bfloat16 for b in f._factors[0])
    out = f.forecast(5.0)  # Horner runs in float32 on the bf16 factors
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((3,), 11.0))


# ------------------------------------------------------------------------------------ remainder
@pytest.mark.parametrize("factor_dtype", [torch.float32, torch.float64])
@_MEDIUM
@given(data=st.data())
def test_newton_remainder(factor_dtype, data):
    """r ~ 0 for degree <= order; for degree order+1, D_{order+1} is the leading coefficient c, so
    r = ||c|| / ||y_newest|| and error_estimate(t) is the exact relative forecast error."""
    order = data.draw(st.integers(0, 3))
    exact = data.draw(st.booleans())
    degree = order + 1 if exact else data.draw(st.integers(0, order))
    n = data.draw(st.integers(order + 2, order + 4))
    ts = data.draw(coordinates(n))
    shape, seed = data.draw(shapes), data.draw(seeds)
    coeffs = [randn(shape, seed + k) for k in range(degree + 1)]
    ys = [poly(coeffs, t).to(factor_dtype) for t in ts]
    f = Forecaster(order, factor_dtype=factor_dtype)
    for i, (t, y) in enumerate(zip(ts, ys)):
        f.update(t, y)
        assert (f.remainder() is None) == (i < order + 1)
    r = f.remainder()
    assert r.dtype == torch.float32 and r.dim() == 0
    norm_y = float(ys[-1].double().norm())
    if norm_y < 1e-3 * maxabs(ys) * math.sqrt(ys[-1].numel()):
        return  # relative quantities of a near-zero newest output are meaningless
    # abs. error of an (order+1)-th divided difference of data with abs. error eps*M, gaps >= 0.25
    tol_abs = 16 * (order + 2) * EPS[factor_dtype] * maxabs(ys) * math.sqrt(ys[-1].numel()) * 8.0 ** (order + 1)
    tol = max(tol_abs / norm_y, 2e-6)  # r itself is stored in float32
    if not exact:
        assert float(r) <= tol
        return
    lead = float(coeffs[-1].norm()) / norm_y
    assert abs(float(r) - lead) <= tol * (1 + lead)
    assert float(r) > 0
    for te in eval_points(data.draw, ts):
        true_rel = float((poly(coeffs, te) - f.forecast(te).double()).norm()) / norm_y
        est = float(f.error_estimate(te))
        scale = math.prod(abs(te - n) for n in f.nodes)
        # error of r times the node product, plus the forecast's own rounding (module docstring)
        _, lam = lagrange(f.nodes, ys[-(order + 1):][::-1], te)
        rounding = 16 * (order + 1) * EPS[factor_dtype] * maxabs(ys) * lam * math.sqrt(ys[-1].numel()) / norm_y
        assert abs(est - true_rel) <= 2 * tol * (1 + lead) * scale + rounding + 1e-6 * true_rel


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylor_remainder(order):
    d = 2
    steps = [d * i for i in range(order + 3)]
    for degree in (order, order + 1):
        coeffs = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (k + 1) for k in range(degree + 1)]
        f = Forecaster(order, "taylor", factor_dtype=torch.float64)
        for i, s in enumerate(steps):
            y = poly(coeffs, float(s))
            f.update(float(s), y)
            assert (f.remainder() is None) == (i < order + 1)
        r = float(f.remainder())
        if degree == order:  # uniform steps: (order+1)-th backward difference of a degree-order poly
            assert r <= 1e-10
        else:  # F_{order+1} = (order+1)! * leading coefficient for uniform steps
            want = math.factorial(order + 1) * float(coeffs[-1].norm()) / float(y.norm())
            assert r == pytest.approx(want, rel=1e-6)
            x = 3.0
            assert float(f.error_estimate(steps[-1] + x)) == pytest.approx(
                r * x ** (order + 1) / math.factorial(order + 1), rel=1e-6)
    f.update(100.0, y, derivatives=False)
    assert f.remainder() is None and f.error_estimate(101.0) is None


# -------------------------------------------------------------------------------- buffers, syncs
@pytest.mark.parametrize("form", FORMS)
def test_buffers_updated_in_place(form):
    f = Forecaster(2, form)
    f.update(0.0, torch.randn(3, 4))
    ptrs = [b.data_ptr() for bufs in f._factors for b in bufs] + [b.data_ptr() for pair in f.scratch._buffers.values() for b in pair]
    for s in range(1, 9):
        f.update(float(s), torch.randn(3, 4).t().contiguous().t(), derivatives=s != 4)
        f.forecast(s + 0.5)
        f.error_estimate(s + 0.5)
        now = [b.data_ptr() for bufs in f._factors for b in bufs] + [b.data_ptr() for pair in f.scratch._buffers.values() for b in pair]
        assert now == ptrs
    f.reset()
    f.update(0.0, torch.randn(3, 4, dtype=torch.bfloat16))  # same shape after reset: same buffers
    assert [b.data_ptr() for b in f._factors[0]] == ptrs[:3]
    with pytest.raises(ValueError, match="outputs"):
        f.update(1.0, torch.randn(5))  # different shape without reset
    f.reset()
    f.update(0.0, torch.randn(5))
    assert f._factors[0][0].shape == (5,) and torch.equal(f.forecast(1.0), f.forecast(0.0))


@pytest.mark.parametrize("select", [None, 1])
@pytest.mark.parametrize("form", FORMS)
def test_no_host_sync(form, select, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("host sync")

    f = Forecaster(2, form, select=select)
    ys = [torch.randn(4, 4) for _ in range(6)]
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for s, y in enumerate(ys):
        f.update(float(s), (y, y.t()), derivatives=s > 0)
        f.forecast(s + 1.0)
        f.remainder()
        f.error_estimate(s + 1.0)
        f.error_estimate(s + 1.0, "pair", degree=1)
        f.chosen_order()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("select", [None, 1])
@pytest.mark.parametrize("form", FORMS)
def test_no_sync_cuda(form, select):
    f = Forecaster(2, form, select=select)
    ys = [torch.randn(64, 32, device="cuda", dtype=torch.bfloat16) for _ in range(6)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s, y in enumerate(ys):
            f.update(float(s), y, derivatives=s > 0)
            out = f.forecast(s + 1.0)
            f.error_estimate(s + 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device == ys[0].device and f.remainder().device == ys[0].device


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, field", [
    (dict(order=-1), "order"), (dict(order=1.5), "order"), (dict(order=True), "order"), (dict(order="2"), "order"),
    (dict(order=1, form="lagrange"), "form"), (dict(order=1, factor_dtype=torch.int32), "factor_dtype"),
    (dict(order=1, factor_dtype="float32"), "factor_dtype"),
    (dict(order=1, select=2), "select"), (dict(order=1, select=-1), "select"), (dict(order=1, select=True), "select"),
    (dict(order=2, select=1, select_margin=0.0), "select_margin"),
    (dict(order=2, select=1, select_margin=1.5), "select_margin"),
])
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Forecaster(**kwargs)


@pytest.mark.parametrize("form", FORMS)
def test_bad_use(form):
    f = Forecaster(1, form)
    with pytest.raises(RuntimeError, match="before any update"):
        f.forecast(0.0)
    assert not f.matches(torch.zeros(2))
    with pytest.raises(ValueError, match="outputs"):
        f.update(0.0, [])
    with pytest.raises(ValueError, match="outputs"):
        f.update(0.0, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="outputs"):
        f.update(0.0, (torch.zeros(2), 3.0))
    for bad in (float("nan"), float("inf"), torch.tensor(1.0), None):
        with pytest.raises(ValueError, match="coordinate t"):
            f.update(bad, torch.zeros(2))
    f.update(0.0, torch.zeros(2))
    f.update(1.0, torch.ones(2))
    with pytest.raises(ValueError, match="coordinate t"):
        f.forecast(torch.tensor(2.0))
    repeated = 0.0 if form in DIVIDED else 1.0  # newton/heun: any stored node; taylor/hermite: d == 0
    with pytest.raises(ValueError, match="coordinate t=.*distinct"):
        f.update(repeated, torch.ones(2))
    assert f.nodes == [1.0, 0.0]
    if form in LINEAR_EXACT:
        assert torch.equal(f.forecast(2.0), torch.full((2,), 2.0))
    f.update(1.0, torch.ones(2), derivatives=False)  # no difference is formed: allowed
    assert f.nodes == [1.0] and f.num_points == 1
    assert f.matches(torch.zeros(2)) and not f.matches(torch.zeros(3))
    f.reset()
    assert f.num_points == 0 and f.nodes == [] and f.remainder() is None
    with pytest.raises(RuntimeError):
        f.forecast(1.0)


# ------------------------------------------------------------------------- order selection (select=)
def _truncated(ts, ys, t, j, form="newton"):
    """The degree-j forecast of ``form`` from the j + 1 newest points (ts newest last) at t, float64
    (tests/form_refs.py: newton, the interpolant; taylor (unit step gaps), sum_{i<=j} nabla^i y *
    x^i / i! with x = t - newest; heun and hermite from their definitions)."""
    return form_refs.reference(form, ts, ys, t, j)


@pytest.mark.parametrize("form", FORMS)
@_MEDIUM
@given(data=st.data())
def test_select_backtest_and_rule(form, data):
    """At every update the forecaster back-tests the forecasts of degree 0..min(order, points - 1)
    from the points before it against the new output (relative errors, float64 reference), and the
    next forecasts use the degree the rule picks: the smallest error if it is below margin x the
    preferred degree's, else the preferred degree; the forecast equals that degree's polynomial."""
    order = data.draw(st.integers(1, 3))
    pref = data.draw(st.integers(0, order))
    margin = data.draw(st.sampled_from([0.3, 0.5, 1.0]))
    n = data.draw(st.integers(order + 2, order + 5))
    # newton/heun: any coordinates; taylor/hermite: step indices 0, 1, 2, ... (backward differences)
    ts = data.draw(coordinates(n)) if form in DIVIDED else [float(k) for k in range(n)]
    if form == "heun":  # a corrector for forecasting forward: monotone coordinates, forecasts beyond
        ts = sorted(ts, reverse=data.draw(st.booleans()))
    shape, seed = data.draw(shapes), data.draw(seeds)
    ys = [randn(shape, seed + k) * (1 + k) for k in range(n)]
    f = Forecaster(order, form, factor_dtype=torch.float64, select=pref, select_margin=margin)
    for k, t in enumerate(ts):
        f.update(t, ys[k])
        cand = min(order, k - 1) + 1 if k else 0      # degrees the points before this one could forecast
        if cand < 2 or pref >= cand:
            assert f.chosen_order() is None and f.backtest() is None
            use = min(pref, k)
        else:
            ref = [float((_truncated(ts[:k], ys[:k], t, j, form) - ys[k]).norm() / ys[k].norm())
                   for j in range(cand)]
            bt = f.backtest().tolist()
            assert bt == pytest.approx(ref, rel=1e-6, abs=1e-9)
            best = min(range(cand), key=lambda j: bt[j])
            use = pref if bt[best] >= margin * bt[pref] else best
            assert int(f.chosen_order()) == use
            use = min(use, k)
        te = ts[k] + (0.5 if k == 0 or ts[k] > ts[k - 1] else -0.5)
        want = _truncated(ts[:k + 1], ys[:k + 1], te, use, form)
        torch.testing.assert_close(f.forecast(te), want, rtol=1e-7, atol=1e-7)


@_MEDIUM
@given(data=st.data())
def test_select_finds_the_polynomial_degree(data):
    """A trajectory that is a polynomial of degree d <= order, on non-uniform coordinates: once the
    back-test could see degree d, a degree >= d is chosen (their errors are zero to rounding, any lower
    degree's is not) when d is above the preferred degree, and forecasts are exact from then on."""
    order = data.draw(st.integers(2, 3))
    degree = data.draw(st.integers(2, order))
    n = degree + 3
    ts = data.draw(coordinates(n))
    shape, seed = data.draw(shapes), data.draw(seeds)
    coeffs = [randn(shape, seed + k) for k in range(degree + 1)]
    coeffs[degree] = coeffs[degree].sign() * (coeffs[degree].abs() + 0.5)   # the top term matters
    f = Forecaster(order, "newton", factor_dtype=torch.float64, select=1)
    for t in ts:
        f.update(t, poly(coeffs, t))
    assert int(f.chosen_order()) >= degree
    for te in eval_points(data.draw, ts):
        torch.testing.assert_close(f.forecast(te), poly(coeffs, te), rtol=1e-6, atol=1e-6)


def test_select_pair_estimate_uses_the_preferred_degree():
    """error_estimate(t, "pair", degree=k) is ||D_k|| / ||D_0|| * prod_{i<k} |t - n_i| for the stored
    factors, whatever degree the forecaster stores (so an order-selecting forecaster can keep the
    estimate of its preferred degree)."""
    f = Forecaster(2, "newton", factor_dtype=torch.float64, select=1)
    ys = [torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.5]), torch.tensor([4.0, 2.0])]
    for t, y in zip((0.0, 1.0, 3.0), ys):
        f.update(t, y)
    d1 = (ys[2] - ys[1]) / 2.0
    d2 = (d1 - (ys[1] - ys[0]) / 1.0) / 3.0
    assert float(f.error_estimate(5.0, "pair", degree=1)) == pytest.approx(float(d1.norm() / ys[2].norm()) * 2.0)
    assert float(f.error_estimate(5.0, "pair")) == pytest.approx(float(d2.norm() / ys[2].norm()) * 2.0 * 4.0)
    assert float(f.top_ratio(1)) == pytest.approx(float(d1.norm() / ys[2].norm()))


@pytest.mark.parametrize("select", [None, 1])
def test_float64_outputs_with_float32_arithmetic(select):
    """float64 region outputs (a float64 model) with the default float32 arithmetic: the norms behind
    the estimates, the reference (residual regions) and the back-test work in the wider dtype's norm."""
    f = Forecaster(2, "newton", select=select)
    for s in range(4):
        y = torch.full((2, 3), 1.0 + s, dtype=torch.float64)
        f.update(float(s), y, reference=(y * 2,))
    assert f.forecast(4.0).dtype == torch.float64
    assert float(f.error_estimate(5.0, "pair", degree=1)) == pytest.approx(1.0 / 8.0 * 2.0)
