"""The forecast math: factor update and polynomial extrapolation of one region output stream.

Knows nothing of graphs, policies or steps. The forms (docs/interfaces.md, DESIGN.md §2; the two
multistep / basis variants ``heun`` and ``hermite``: :mod:`taylorseer_fx.forecast.forms`):

* ``newton`` -- backward divided differences anchored at the newest node. The coordinate ``t`` is any
  real float (timestep, sigma or step index; distinct values, increasing or decreasing). Polynomials of
  degree <= order are forecast exactly (to float tolerance), and the forecast does not depend on the
  affine scale of the coordinate.
* ``taylor`` -- the official TaylorSeer recursion ``F_{i+1} = (F_i(new) - F_i(old)) / d``; ``t`` is the
  step index (a float), ``d`` the step-index distance between the last two full computes, and the
  forecast ``sum_i F_i x^i / i!`` with ``x = t - last full step``.

Units: every coordinate argument is a Python float in the caller's unit (newton: timestep / sigma /
step index; taylor: step index). Nothing here syncs with the host: coefficients are Python floats
computed from the coordinates, and the remainder estimate stays a 0-dim tensor on the device.
"""

from __future__ import annotations

import math
import numbers

import torch

from .buffers import CLAMPED, Scratch, out_strides
from .coordinates import NEAR, as_coordinate, unit_for
from .estimates import EPS, ErrorEstimates
from .forms import DIVIDED, FORMS, coefficients

__all__ = ["Forecaster"]

_CLAMPED = CLAMPED   # output dtypes whose forecasts are clamped to the finite range (buffers.CLAMPED)


def _flatten(outputs, name: str = "outputs"):
    """(tensors, is_tensor) for a tensor or a flat tuple/list of floating tensors; ValueError otherwise."""
    if isinstance(outputs, torch.Tensor):
        tensors, single = (outputs,), True
    elif isinstance(outputs, (tuple, list)) and len(outputs) > 0:
        tensors, single = tuple(outputs), False
    else:
        raise ValueError(f"{name} must be a Tensor or a non-empty tuple/list of Tensors, got {type(outputs).__name__}")
    for i, x in enumerate(tensors):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}[{i}] must be a Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}[{i}] must have a floating dtype, got {x.dtype}")
    return tensors, single



class Forecaster(ErrorEstimates):
    """Factors of ONE region output stream (a tensor or a flat tuple/list of tensors).

    The coordinate ``t`` is a Python float: for ``form="newton"`` any real coordinate (timestep, sigma
    or step index; distinct values, increasing or decreasing); for ``form="taylor"`` the step index.

    Attributes:
        order: polynomial order (>= 0); at most ``order + 1`` factors/nodes are stored.
        form: ``"newton"`` or ``"taylor"``.
        factor_dtype: dtype of the stored factors (float32 default). Arithmetic runs in float32, or in
            float64 when ``factor_dtype`` is float64.
        num_points: full computes absorbed since reset (1 after a ``derivatives=False`` update).
        nodes: coordinates of the stored points, newest first (at most ``order + 1``).
        select: ``None`` (forecast with the stored degree, up to ``order``), or the *preferred* order of
            a per-update order choice: at every update the forecasts of degree ``0..order`` from the
            points before it are compared with the new output (a back-test at the distance the last
            forecast run actually had); the next forecasts use the degree with the smallest error if
            it is below ``select_margin`` times the preferred degree's, else the preferred degree.
            The choice stays on the device (a 0/1 weight per term): no host sync.
        scratch: the :class:`Scratch` its work buffers come from (default: one of its own).

    Non-finite outputs are tracked on the device, without a host sync: a stored factor that depends
    on a non-finite output is zeroed, so a forecast uses only the factors of the finite computes since
    the last non-finite one (after a non-finite compute and then one finite compute, the forecast is
    that compute's output; the degree grows back one compute at a time). The error estimates are +inf
    until enough finite computes are stored for them (so adaptive policies compute). A forecast made
    right after a non-finite compute repeats that output, as the model gave it.
    """

    def __init__(self, order: int, form: str = "newton", factor_dtype: torch.dtype = torch.float32, *,
                 select: int | None = None, select_margin: float = 1.0, scratch: Scratch | None = None):
        if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 0:
            raise ValueError(f"order must be an int >= 0 (0, 1, 2, ...), got {order!r}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if not isinstance(factor_dtype, torch.dtype) or not factor_dtype.is_floating_point:
            raise ValueError(f"factor_dtype must be a floating torch.dtype, got {factor_dtype!r}")
        if select is not None and (isinstance(select, bool) or not isinstance(select, numbers.Integral)
                                   or not 0 <= select <= order):
            raise ValueError(f"select must be None or an int in [0, order={order}], got {select!r}")
        if isinstance(select_margin, bool) or not isinstance(select_margin, numbers.Real) or not (
                0 < select_margin <= 1):
            raise ValueError(f"select_margin must be a number in (0, 1], got {select_margin!r}")
        if scratch is not None and not isinstance(scratch, Scratch):
            raise ValueError(f"scratch must be None or a Scratch, got {type(scratch).__name__}")
        self.order = int(order)
        self.form = form
        self.select = None if select is None else int(select)
        self.select_margin = float(select_margin)
        self.factor_dtype = factor_dtype
        self._compute_dtype = torch.float64 if factor_dtype == torch.float64 else torch.float32
        # Buffers survive reset() and are reused while the shapes stay the same.
        self._meta: list[tuple] | None = None  # per tensor: (shape, dtype, device)
        self._strides: list[tuple] = []  # per tensor: strides of the forecast output
        self._single = True
        self._factors: list[list[torch.Tensor]] = []  # per tensor: order+1 buffers (factor_dtype)
        self._own_scratch = scratch is None
        self.scratch = Scratch() if scratch is None else scratch
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all points (buffers are kept and reused if the next outputs have the same shapes)."""
        self.num_points = 0
        self.nodes: list[float] = []
        self._unit = 1.0                        # coordinate unit of the divided differences (``unit_for``)
        self._r: torch.Tensor | None = None
        self._num_sq: torch.Tensor | None = None  # ||D_{order+1}||^2 of the last update (+inf: not enough finite points)
        self._den_sq: torch.Tensor | None = None  # ||D_0||^2 (or of the reference) at the last update
        self._den: torch.Tensor | None = None   # ||D_0|| (or of the reference) at the last update
        self._ratios: dict[int, torch.Tensor] = {}  # ||D_j|| / ||D_0||, formed when first asked for
        self._backtest: torch.Tensor | None = None  # relative back-test error per order (select)
        self._chosen: torch.Tensor | None = None    # the order chosen at the last update (select)
        self._weights: torch.Tensor | None = None   # 1 for the terms of the chosen order, 0 above
        self._run: torch.Tensor | None = None       # finite computes in a row, newest back (<= order+2; int64)

    def memory_bytes(self) -> int:
        """Bytes of the device buffers this forecaster holds, kept across reset(): its factors, and its
        scratch when it has its own (a shared :class:`Scratch` is counted by whoever shares it)."""
        bufs = [b for fs in self._factors for b in fs]
        own = self.scratch.memory_bytes() if self._own_scratch else 0
        return sum(b.numel() * b.element_size() for b in bufs) + own

    def matches(self, outputs) -> bool:
        """True if ``outputs`` has the structure, shapes, dtypes and devices of the stored points
        (False while nothing is stored)."""
        if self.num_points == 0 or self._meta is None:
            return False
        try:
            tensors, single = _flatten(outputs)
        except ValueError:
            return False
        return single == self._single and self._meta == [(x.shape, x.dtype, x.device) for x in tensors]

    def _allocate(self, tensors) -> None:
        self._factors = [
            [torch.empty(x.shape, dtype=self.factor_dtype, device=x.device) for _ in range(self.order + 1)]
            for x in tensors
        ]

    def _work(self, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scratch.pair(shape, self._compute_dtype, device)

    def _finite_since(self, needed: int, value: torch.Tensor) -> torch.Tensor:
        """``value`` where the newest ``needed`` computes were finite, else +inf."""
        return torch.where(self._run >= needed, value, torch.full_like(value, math.inf))

    # ----------------------------------------------------------------- update
    def update(self, t: float, outputs, *, derivatives: bool = True, reference=None) -> None:
        """Absorb a full compute at coordinate ``t`` (newton: timestep/sigma/step; taylor: step index).

        ``derivatives=False`` keeps only the 0-th factor (official TaylorSeer's warm-up gating).
        Buffers are allocated at the first update (or after a reset with new shapes) and updated in
        place afterwards. Also forms the next difference (newton ``D_{order+1}``, taylor ``F_{order+1}``)
        without storing it and keeps ``r = ||next|| / ||D_0||`` (0-dim float32 tensor on the device), and
        ``||D_0||`` for the ratios of the stored factors (the embedded pairs, :meth:`top_ratio`, formed
        when first asked for). With ``select``, first back-tests the forecast degrees (:meth:`backtest`).

        ``reference``: tensors (any structure) whose norm replaces ``||D_0||`` in those ratios, so that
        the estimates are relative to what the caller returns -- e.g. the whole region output when
        ``outputs`` is its residual (output - input). Default: ``outputs`` themselves.

        Raises ValueError (naming ``t``) for a non-finite coordinate or one that repeats a stored node
        used in a difference, and (naming ``outputs``) for outputs that are not floating tensors or do
        not match the stored points' shapes/dtypes/devices (call :meth:`reset` first).
        """
        t = as_coordinate(t)
        tensors, single = _flatten(outputs)
        meta = [(x.shape, x.dtype, x.device) for x in tensors]
        if self.num_points > 0 and (meta != self._meta or single != self._single):
            raise ValueError("outputs do not match the stored points (structure/shape/dtype/device); "
                             "call reset() before updating with different outputs")
        old = len(self.nodes) if derivatives else 0  # stored factors that take part in differences
        divided = self.form in DIVIDED
        if old >= 2 and divided and self._near(t) and self._meta == meta and single == self._single:
            self._drop_newest(old)                   # merged: the new value replaces the newest node's
            old -= 1
        if old and divided and not self.resolves(t):
            raise ValueError(f"coordinate t={t!r} equals a stored node {self.nodes}, or is closer to one "
                             f"than {self._compute_dtype} resolves; form={self.form!r} needs distinct coordinates "
                             "(update with derivatives=False to restart from this point)")
        if old and not divided and t == self.nodes[0]:
            raise ValueError(f"coordinate t={t!r} equals the last full step; "
                             f"form={self.form!r} needs distinct step indices (d != 0)")
        if divided:
            if old == 1 or old == 0:                 # a table of one value: any unit (D_0 has none)
                self._unit = unit_for(abs(t - self.nodes[0])) if old else 1.0
            coeffs = [self._unit / (t - n) for n in self.nodes[:old]]
        else:
            coeffs = [1.0 / (t - self.nodes[0])] * old if old else []
        extra = old == self.order + 1  # forms D_{order+1} / F_{order+1}, not stored
        if self._meta is None or [(s, d) for s, _, d in meta] != [(s, d) for s, _, d in self._meta]:
            self._allocate(tensors)
        self._meta, self._single = meta, single
        self._strides = [out_strides(x.shape, x.stride()) for x in tensors]

        if self.select is not None and derivatives:
            self._choose(t, tensors, old)
        top = min(old, self.order)  # degree of the stored polynomial after this update
        num_sq = den_sq = None
        if reference is not None and (extra or top):
            for x in _flatten(reference, "reference")[0]:
                den = self._norm_sq(x)
                den_sq = den if den_sq is None else den_sq + den
        peak = None
        for x, factors in zip(tensors, self._factors):
            a, b = self._work(x.shape, x.device)
            a.copy_(x)  # a = D'_{j-1} in the compute dtype
            p = torch.linalg.vector_norm(a, ord=math.inf)     # max |x|: NaN or inf iff x is not finite
            peak = p if peak is None else torch.maximum(peak, p)
            if (extra or top) and reference is None:
                den = torch.linalg.vector_norm(a).square()
                den_sq = den if den_sq is None else den_sq + den
            for j, c in enumerate(coeffs, start=1):
                torch.sub(a, factors[j - 1], out=b)  # D'_j = (D'_{j-1} - D_{j-1}) / (t - n_{j-1})
                b.mul_(c)
                factors[j - 1].copy_(a)
                a, b = b, a
            if extra:  # a holds the unstored next difference
                num = torch.linalg.vector_norm(a).square()
                num_sq = num if num_sq is None else num_sq + num
            else:
                factors[old].copy_(a)
        finite = torch.isfinite(peak)
        prev = self._run if (old and self._run is not None) else torch.zeros((), dtype=torch.int64,
                                                                               device=finite.device)
        self._run = torch.where(finite, torch.clamp(prev + 1, max=self.order + 2), torch.zeros_like(prev))
        for factors in self._factors:        # a factor from a non-finite output contributes nothing
            for j in range(1, top + 1):
                factors[j].masked_fill_(self._run <= j, 0)
        self._den_sq = den_sq
        self._den = den_sq.sqrt() + EPS if den_sq is not None else None
        self._num_sq = self._finite_since(self.order + 2, num_sq) if extra else None
        self._r = (self._finite_since(self.order + 2, (num_sq.sqrt() / self._den).to(torch.float32))
                   if extra else None)
        self._ratios = {}
        self.nodes = [t] + self.nodes[: min(old, self.order)]
        self.num_points = self.num_points + 1 if derivatives else 1

    def resolves(self, t: float) -> bool:
        """Whether coordinate ``t`` can be absorbed with its divided differences: far enough from every
        stored node that stays (the newest one goes when ``t`` nearly coincides with it, :data:`NEAR`)
        for the compute dtype: ``|t - n| > eps * max(|t|, |n|)`` (float32: eps = 1.2e-7; relative, so
        coordinates near the denormal range resolve too)."""
        eps = torch.finfo(self._compute_dtype).eps
        nodes = self.nodes[1:] if len(self.nodes) >= 2 and self._near(t) else self.nodes
        return all(t != n and abs(t - n) > eps * max(abs(t), abs(n)) for n in nodes)

    def _near(self, t: float) -> bool:
        """``t`` nearly coincides with the newest node, or the two newest nodes nearly coincide, against
        the run's own spacing (the other gap): one of the pair must go (:data:`NEAR`)."""
        g, gap = abs(t - self.nodes[0]), abs(self.nodes[0] - self.nodes[1])
        return g <= NEAR * gap or gap <= NEAR * g

    def _drop_newest(self, old: int) -> None:
        """Remove the newest node from the table: the divided differences anchored at the next node,
        ``E_{j-1} = D_{j-1} - (n_0 - n_j) D_j`` (one order fewer), in the compute dtype."""
        n0 = self.nodes[0]
        for x_meta, factors in zip(self._meta, self._factors):
            a, b = self._work(x_meta[0], x_meta[2])
            for j in range(1, old):
                a.copy_(factors[j - 1])
                b.copy_(factors[j])
                a.sub_(b, alpha=(n0 - self.nodes[j]) / self._unit)
                factors[j - 1].copy_(a)
        self.nodes = self.nodes[1:]
        if self._run is not None:              # finite computes in a row, newest back: one fewer (or none)
            self._run = torch.clamp(self._run - 1, min=0)

    def _norm_sq(self, x: torch.Tensor) -> torch.Tensor:
        """||x||^2 as a 0-dim tensor in the compute dtype (accumulated in it, or in x's own dtype when x
        is wider: float64 outputs with float32 arithmetic)."""
        if x.dtype.itemsize > self._compute_dtype.itemsize:
            return torch.linalg.vector_norm(x).to(self._compute_dtype).square()
        return torch.linalg.vector_norm(x, dtype=self._compute_dtype).square()

    def _terms(self, t: float, k: int) -> list[float]:
        """Signed coordinate coefficients of the series terms 0..k at ``t`` for the stored nodes
        (:func:`taylorseer_fx.forecast.forms.coefficients`; newton: prod_{i<j} (t - n_i), taylor: x^j / j!)."""
        u = self._unit
        if u == 1.0:
            return coefficients(self.form, t, self.nodes, k)
        return coefficients(self.form, t / u, [n / u for n in self.nodes], k)

    def _choose(self, t: float, tensors, old: int) -> None:
        """Before the factors move: back-test the forecasts of degree 0..min(order, old - 1) at ``t``
        against the new outputs and keep the choice (and the 0/1 term weights) as device tensors."""
        pref = self.select
        cand = min(self.order, old - 1) + 1  # degrees the old points can forecast
        if cand < 2 or pref >= cand:
            self._backtest = self._chosen = self._weights = None
            return
        terms = self._terms(t, cand - 1)
        err_sq: list = [None] * cand
        y_sq = None
        for x, factors in zip(tensors, self._factors):
            a, b = self._work(x.shape, x.device)
            a.copy_(factors[0])
            for j in range(cand):
                if j:
                    a.add_(factors[j], alpha=terms[j])
                torch.sub(a, x, out=b)
                e = torch.linalg.vector_norm(b).square()
                err_sq[j] = e if err_sq[j] is None else err_sq[j] + e
            n = self._norm_sq(x)
            y_sq = n if y_sq is None else y_sq + n
        sums = torch.stack(err_sq + [y_sq])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # context parallelism: each rank holds a shard of the output; the choice is the whole output's
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
        err = sums[:-1].sqrt() / (sums[-1].sqrt() + EPS)
        err = torch.nan_to_num(err, nan=math.inf)      # a non-finite back-test is never the best
        best = err.argmin()
        keep = err.min() >= self.select_margin * err[pref]
        chosen = torch.where(keep, torch.full_like(best, pref), best)
        self._backtest, self._chosen = err.to(torch.float32), chosen
        degrees = torch.arange(self.order + 1, device=chosen.device)
        self._weights = (degrees <= chosen).to(self._compute_dtype)

    # --------------------------------------------------------------- forecast
    def _zero(self, like: torch.Tensor) -> torch.Tensor:
        z = getattr(self, "_zeros", None)
        if z is None or z.device != like.device or z.dtype != like.dtype:
            z = self._zeros = torch.zeros((), dtype=like.dtype, device=like.device)
        return z

    def _check_ready(self, what: str) -> None:
        if self.num_points == 0:
            raise RuntimeError(f"Forecaster.{what}() called before any update(): nothing to forecast from "
                               "(a full compute must come first, and again after reset())")

    def forecast(self, t: float):
        """Polynomial extrapolation at coordinate ``t`` with order ``min(order, num_points - 1)``.

        Returns the structure of the last update's outputs (a tensor, or a tuple for tuple/list), each
        a fresh tensor with that output's shape, dtype, device and strides. Never syncs with the host.
        """
        self._check_ready("forecast")
        t = as_coordinate(t)
        k = len(self.nodes) - 1  # degree of the stored polynomial
        w = self._weights
        if self.select is not None and w is None:
            k = min(k, self.select)  # no choice made yet: the preferred degree
        if self.form == "newton":  # p(t) = D_0 + (t-n_0)(D_1 + (t-n_1)(D_2 + ...))
            alphas = [(t - n) / self._unit for n in self.nodes[:k]]
        elif self.form == "taylor":  # sum_i F_i x^i / i! = F_0 + x/1 (F_1 + x/2 (F_2 + ...))
            x = t - self.nodes[0]
            alphas = [x / (i + 1) for i in range(k)]
        else:                        # sum_j c_j F_j, term by term
            alphas = None
            coeffs = self._terms(t, k)
        results = []
        for (shape, dtype, device), stride, factors in zip(self._meta, self._strides, self._factors):
            a, b = self._work(shape, device)
            if alphas is None:
                acc = self._series(factors, coeffs, w, a, b)
            else:
                acc = factors[k]
                if k and acc.dtype != a.dtype:  # so that the first Horner step runs in the compute dtype
                    b.copy_(acc)
                    acc = b
                for j in range(k - 1, -1, -1):  # Horner, in the compute dtype
                    if w is None:
                        torch.add(factors[j], acc, alpha=alphas[j], out=a)
                    else:  # terms above the chosen degree contribute exactly nothing (0 * nan would be nan)
                        torch.where(w[j + 1] > 0, acc, self._zero(a), out=a)
                        torch.add(factors[j], a, alpha=alphas[j], out=a)
                    acc, a, b = a, b, a
            out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
            if dtype in _CLAMPED and acc.dtype != dtype:     # a finite extrapolation stays finite in fp16
                lim = torch.finfo(dtype).max
                torch.clamp(acc, -lim, lim, out=a if acc is not a else b)
                acc = a if acc is not a else b
            out.copy_(acc)
            results.append(out)
        return results[0] if self._single else tuple(results)

    def _series(self, factors, coeffs, w, a, b) -> torch.Tensor:
        """``sum_j c_j F_j`` in the compute dtype into ``a`` (``b`` for the masked term); the terms above
        the chosen degree (weights ``w``) contribute exactly nothing."""
        a.copy_(factors[0])
        for j in range(1, len(coeffs)):
            if w is None:
                a.add_(factors[j], alpha=coeffs[j])
            else:
                b.copy_(factors[j])
                b.masked_fill_(w[j] <= 0, 0)     # exactly nothing, also where the factor is not finite
                a.add_(b, alpha=coeffs[j])
        return a

    def __repr__(self) -> str:
        return (f"Forecaster(order={self.order}, form={self.form!r}, factor_dtype={self.factor_dtype}, "
                f"num_points={self.num_points}, nodes={self.nodes})")
