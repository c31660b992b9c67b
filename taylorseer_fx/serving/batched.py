"""A batched denoiser call whose rows belong to different requests, each at its own step with its own
cache: what a step-level ("continuous") batching engine needs.

Per engine tick, :class:`BatchedCache` (``cache(*args, rows=[...], **kwargs)``):

1. places every row: its request (a :class:`~taylorseer_fx.serving.request.ServingRequest`), branch and
   step (the request's own counter), and its coordinate: the step index for a policy whose forecast
   coordinate is ``"step"``, else the request's told ``sigmas[step]``, else the row's timestep value
   (one host read of the timestep tensor per tick);
2. asks every request's policy (one schedule per request, shared by its branches): compute or forecast.
   The adaptive policies' error estimates of all requests are read on the host together: one read per
   tick;
3. runs the model **once** on the rows that compute (every ``batch_args`` argument indexed by those rows,
   padded to a bucket size when ``buckets`` is given), and forecasts the other rows from their own
   branch's factors;
4. gives the outputs back in row order, in the model's output structure.

Each row's output is its request's alone: the same decisions, factors and forecasts as the request run
by itself through a ``BatchedCache`` of its own. With a model whose rows do not depend on each other numerically
the outputs are bit-equal; a model whose kernels sum in a batch-size-dependent order (CPU GEMMs do) differs
from its solo run by what the uncached model differs by at another batch size.

The cached region is the model's output (as ``regions="model"`` does for a whole call): a forecast row
costs no model work at all. The model may be eager or ``torch.compile``d; sub-batch sizes recompile at
most ``len(buckets)`` times with buckets, else dynamo's automatic dynamic shapes make the batch dimension
dynamic at the second size.

Knows nothing of FX or of pipelines.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Callable, Sequence

import torch

from ..forecast.estimates import read_host, worst
from ..graph.boundary import InstanceTensors, timestep_parameter
from ..graph.options import resolve_policy
from ..runtime.region_state import weights_fingerprint
from ..torch_internals import pytree as _pytree
from .request import Row, ServingRequest

pytree = _pytree()

__all__ = ["BatchedCache"]


def _check_buckets(buckets) -> tuple | None:
    if buckets is None:
        return None
    b = tuple(buckets)
    if not b or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b) or list(b) != sorted(set(b)):
        raise ValueError(f"buckets must be None or increasing ints >= 1 (e.g. (1, 2, 4, 8)), got {buckets!r}")
    return b


class BatchedCache:
    """``model`` called with rows of many requests, each cached as if it ran alone.

    Args:
        model: the denoiser (an ``nn.Module``, possibly ``torch.compile``d, or any callable).
        policy: the default policy of a request (a Policy, a preset name or a TOML path); ``open`` may
            give each request its own.
        batch_args: the arguments that carry the batch (their dim 0 is the row), by name (as the model's
            forward names them) or by position. Every other argument is passed to the model as given.
            Named, not guessed: an argument whose first size happens to equal the batch (Flux's
            ``img_ids`` of 64 tokens in a batch of 64) would otherwise be cut.
        timestep_arg: the argument holding the per-row timestep (``(B,)`` or per token ``(B, ...)``: its
            row maximum) when a request was not told its ``sigmas``; default: the first of ``timestep``,
            ``timesteps``, ``t``, ``sigma``, ``sigmas`` the forward takes. Must be one of ``batch_args``.
        buckets: None, or increasing sub-batch sizes: the computing rows are padded (with copies of their
            last row, whose outputs are dropped) to the smallest bucket that holds them.
        factor_dtype: the dtype of the stored factors (float32).
        strict: raise, instead of warning, when a request closes with fewer than half of its planned
            forecasts done.

    Ticks run one at a time; a request opened or closed from another thread waits for the tick in flight.
    """

    def __init__(self, model: Callable, policy=None, *, batch_args: Sequence, timestep_arg: str | None = None,
                 buckets: Sequence[int] | None = None, factor_dtype: torch.dtype = torch.float32,
                 strict: bool = False):
        if not callable(model):
            raise ValueError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.policy = resolve_policy(policy)
        named = getattr(model, "_orig_mod", model)        # torch.compile's OptimizedModule: the module's own
        try:                # a module's call takes (*args, **kwargs): its forward names them
            self._signature = inspect.signature(named.forward if isinstance(named, torch.nn.Module) else named)
        except (TypeError, ValueError):
            self._signature = None
        if self._signature is not None and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                                               for p in self._signature.parameters.values()):
            self._signature = None        # (*args, **kwargs) names nothing: positions and keywords as given
        if isinstance(batch_args, (str, int)) or not batch_args:
            raise ValueError("batch_args must name the arguments that carry the batch, e.g. "
                             "('hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep'); "
                             f"got {batch_args!r}")
        self.batch_args = tuple(self._name(a) for a in batch_args)
        forward = getattr(named, "forward", named)
        self.timestep_arg, _ = timestep_parameter(forward, timestep_arg)
        self._shared_timestep = None      # the forward's timestep when it is not a batch argument
        if self.timestep_arg is not None and self.timestep_arg not in self.batch_args:
            if timestep_arg is not None:
                raise ValueError(f"timestep_arg={timestep_arg!r} must be one of batch_args={self.batch_args} "
                                 "(a row's timestep is its own)")
            self._shared_timestep, self.timestep_arg = self.timestep_arg, None
        self.buckets = _check_buckets(buckets)
        if not isinstance(factor_dtype, torch.dtype) or not factor_dtype.is_floating_point:
            raise ValueError(f"factor_dtype must be a floating torch.dtype, got {factor_dtype!r}")
        self.factor_dtype = factor_dtype
        self.strict = bool(strict)
        self._tensors = InstanceTensors(model) if isinstance(model, torch.nn.Module) else None
        self._weights = None
        self._weights_warned = self._overflow_warned = False
        self._open: dict[int, ServingRequest] = {}
        self._lock = threading.RLock()      # a tick, and opening or closing a request, one at a time
        self.counts = {"ticks": 0, "model_calls": 0, "rows": 0, "computed_rows": 0, "forecast_rows": 0,
                       "padded_rows": 0, "fallback_rows": 0, "host_reads": 0}
        self.sub_batch_sizes: dict[int, int] = {}

    def _var_kw(self) -> str | None:
        """The name of the forward's ``**kwargs``, or None."""
        return next((n for n, p in self._signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)

    def _name(self, a):
        """A batch argument as the forward names it (a position becomes its parameter's name)."""
        if isinstance(a, bool) or not isinstance(a, (str, int)):
            raise ValueError(f"batch_args: {a!r} is neither an argument name nor a position")
        if self._signature is None:
            return a
        params = self._signature.parameters
        if isinstance(a, int):
            positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if not 0 <= a < len(positional):
                raise ValueError(f"batch_args: position {a} is not one of the forward's positional parameters "
                                 f"{positional}; name the argument instead")
            return positional[a]
        if a not in params and self._var_kw() is None:
            raise ValueError(f"batch_args: the model's forward takes no argument {a!r}; its arguments: {list(params)}")
        return a

    # ------------------------------------------------------------ requests
    def open(self, num_steps: int, *, policy=None, branches: Sequence = ("cond",), sigmas=None,
             name=None) -> ServingRequest:
        """A new request of ``num_steps`` steps (its rows start at step 0 at the next tick they appear).

        ``policy``: this request's (default: the cache's); ``branches``: the names of its rows (one per
        CFG branch: ``("cond", "uncond")``); ``sigmas``: its coordinate per step when the engine knows it
        (``scheduler.sigmas``): no timestep read; ``name``: shown in warnings."""
        req = ServingRequest(self, num_steps, resolve_policy(policy) if policy is not None else self.policy,
                             branches, sigmas, name)
        with self._lock:
            self._open[id(req)] = req
        return req

    def _release(self, req: ServingRequest) -> None:
        with self._lock:
            self._open.pop(id(req), None)

    @property
    def requests(self) -> list:
        """The open requests."""
        with self._lock:
            return list(self._open.values())

    def memory_bytes(self) -> int:
        """Bytes of cached state held by the open requests."""
        return sum(r.memory_bytes() for r in self.requests)

    def stats(self) -> dict:
        """Counts since construction: ``ticks``, ``model_calls``, ``rows``, ``computed_rows``,
        ``forecast_rows``, ``padded_rows`` (bucket padding), ``fallback_rows`` (computed because the
        branch had no state to forecast from), ``host_reads``; ``sub_batch_sizes`` (size -> calls);
        ``open_requests`` and ``bytes`` now."""
        return dict(self.counts, sub_batch_sizes=dict(self.sub_batch_sizes), open_requests=len(self.requests),
                    bytes=self.memory_bytes())

    # ------------------------------------------------------------ one tick
    def _rows(self, rows) -> list:
        if isinstance(rows, (Row, ServingRequest)) or not isinstance(rows, Sequence) or not rows:
            raise ValueError("rows must be a non-empty sequence, one entry per batch row: a request (its first "
                             "branch) or request[branch]")
        out, seen = [], set()
        for i, r in enumerate(rows):
            if isinstance(r, ServingRequest):
                r = Row(r, r.branches[0])
            if not isinstance(r, Row):
                raise ValueError(f"rows[{i}] is a {type(r).__name__}: expected a request or request[branch]")
            if r.request._cache is not self:
                raise ValueError(f"rows[{i}]: {r.request!r} was opened by another BatchedCache")
            if r.request.closed:
                raise ValueError(f"rows[{i}]: {r.request!r} is closed")
            if r.request.step >= r.request.num_steps:
                raise ValueError(f"rows[{i}]: {r.request!r} already took its num_steps={r.request.num_steps} "
                                 "steps")
            if r in seen:
                raise ValueError(f"rows[{i}]: {r!r} appears twice in one call")
            seen.add(r)
            out.append(r)
        return out

    def _bind(self, args, kwargs):
        """Every argument by name (``inspect.BoundArguments``), or without a signature ``{name or position:
        value}``."""
        if self._signature is None:
            return {**kwargs, **dict(enumerate(args))}
        try:
            return self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"the call does not fit the model's forward: {e}") from None

    def _argument(self, bound, name):
        if self._signature is None:
            return bound.get(name)
        if name in self._signature.parameters:
            return bound.arguments.get(name)
        return bound.arguments.get(self._var_kw(), {}).get(name)

    def _batched(self, bound, n_rows: int) -> dict:
        """``{name: tensor}`` of the batch arguments passed."""
        found = {}
        for a in self.batch_args:
            v = self._argument(bound, a)
            if v is None:
                continue
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n_rows:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"batch argument {a!r} must be a tensor whose dim 0 is the {n_rows} rows, got {shape}")
            found[a] = v
        shared = self._shared_timestep
        if shared is not None:
            v = self._argument(bound, shared)
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n_rows > 1:
                raise ValueError(f"the timestep argument {shared!r} has one value per row ({tuple(v.shape)}) but is "
                                 f"not in batch_args={self.batch_args}: a sub-batch would get every row's "
                                 "timesteps; add it to batch_args")
        return found

    def _call(self, bound, batched: dict, index: torch.Tensor | None):
        """The model on the rows ``index`` (None: every row) of the batch arguments."""
        rows = {k: v if index is None else v.index_select(0, index) for k, v in batched.items()}
        if self._signature is None:
            given = {**bound, **rows}
            args = [given[i] for i in sorted(k for k in given if isinstance(k, int))]
            return self.model(*args, **{k: v for k, v in given.items() if isinstance(k, str)})
        arguments = dict(bound.arguments)
        var_kw = self._var_kw()
        for k, v in rows.items():
            if k in self._signature.parameters:
                arguments[k] = v
            else:
                arguments[var_kw] = {**arguments.get(var_kw, {}), k: v}
        call = inspect.BoundArguments(self._signature, arguments)
        return self.model(*call.args, **call.kwargs)

    def _check_weights(self) -> None:
        if self._tensors is None:
            return
        fp = weights_fingerprint(self._tensors())
        if self._weights is not None and fp != self._weights:
            for r in self.requests:
                r.forget()
                r.tally.cause("weights")
            if not self._weights_warned:
                self._weights_warned = True
                warnings.warn("taylorseer serving: the model's weights changed; every open request's cached "
                              "state was dropped (their next steps compute)", stacklevel=3)
        self._weights = fp

    def _timesteps(self, batched: dict, n_rows: int) -> list | None:
        """The per-row timestep values (one host read), or None when no request needs them."""
        t = batched.get(self.timestep_arg) if self.timestep_arg is not None else None
        if t is None:
            return None
        self.counts["host_reads"] += 1
        return t.detach().reshape(n_rows, -1).amax(1).float().tolist()

    def __call__(self, *args, rows, **kwargs):
        """One engine tick: ``model(*args, **kwargs)`` for the batch whose row ``i`` is ``rows[i]``'s."""
        with self._lock:             # a request closed from another thread waits for the tick to end
            return self._tick(args, kwargs, rows)

    def _tick(self, args, kwargs, rows):
        rows = self._rows(rows)
        n = len(rows)
        bound = self._bind(args, kwargs)
        batched = self._batched(bound, n)
        if not batched:
            raise ValueError(f"none of batch_args={self.batch_args} was passed: the rows cannot be told apart")
        requests = list(dict.fromkeys(r.request for r in rows))
        self.counts["ticks"] += 1
        self.counts["rows"] += n
        if torch.is_grad_enabled():
            for req in requests:
                req.tally.cause("grad", uncached=True)
                req.decisions.append(True)
                req.step += 1
            self.counts["model_calls"] += 1
            return self._call(bound, batched, None)
        self._check_weights()
        needs_t = any(q.sigmas is None and q.policy.forecast.coordinate != "step" for q in requests)
        values = self._timesteps(batched, n) if needs_t else None
        first = {}
        for i, r in enumerate(rows):
            first.setdefault(r.request, i)
        coords = {q: q.coordinate(None if values is None else values[first[q]]) for q in requests}
        compute = self._decide(requests, rows, coords)
        run = [i for i, r in enumerate(rows) if compute[r.request] or not r.request.ready(r.branch)]
        self.counts["fallback_rows"] += sum(not compute[rows[i].request] for i in run)
        for i in run:
            if not compute[rows[i].request]:
                rows[i].request.tally.cause("fallback")
                rows[i].request.computed_anyway()      # a budget counts it: its count stays exact
        out = self._run(bound, batched, rows, run, coords, n)
        ran = set(run)
        for i, r in enumerate(rows):
            q = r.request
            q.tally.record(r.branch, q.step, i not in ran, not compute[q])
        for q in requests:
            q.decisions.append(compute[q])
            q.step += 1
        return out

    def _decide(self, requests, rows, coords) -> dict:
        """``{request: compute?}`` at each request's step; the estimates read on the host together."""
        branches: dict = {}
        for r in rows:
            branches.setdefault(r.request, []).append(r.branch)
        est = {q: q.estimate(coords[q], branches[q]) for q in requests
               if q.policy.reads_estimate and not q.forced()}
        owners = [q for q, vs in est.items() for _ in vs]
        read, synced = read_host(v for vs in est.values() for v in vs)      # the one host read
        self.counts["host_reads"] += int(synced)
        values: dict = {q: [] for q in est}
        for q, v in zip(owners, read):
            values[q].append(v)
        return {q: q.decide(worst(values[q]) if q in values else None) for q in requests}

    def _run(self, bound, batched, rows, run: list, coords: dict, n: int):
        """Model on the rows in ``run``, forecasts for the others, outputs in row order."""
        leaves_out: list | None = None
        spec = None
        sub = None
        if run:
            k = len(run)
            size = k if self.buckets is None else next((b for b in self.buckets if b >= k), k)
            if self.buckets is not None and size > self.buckets[-1] and not self._overflow_warned:
                self._overflow_warned = True
                warnings.warn(f"taylorseer serving: {k} rows compute, more than the largest bucket "
                              f"{self.buckets[-1]}: run unpadded (a compiled model may compile this size); "
                              "add a larger bucket", stacklevel=3)
            index = None if size == n and run == list(range(n)) else torch.tensor(
                run + [run[-1]] * (size - k), device=next(iter(batched.values())).device)
            self.counts["model_calls"] += 1
            self.counts["computed_rows"] += k
            self.counts["padded_rows"] += size - k
            self.sub_batch_sizes[size] = self.sub_batch_sizes.get(size, 0) + 1
            out = self._call(bound, batched, index)
            sub, spec = pytree.tree_flatten(out)
            for j, leaf in enumerate(sub):
                if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or leaf.shape[0] != size:
                    what = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                    raise ValueError(f"the model's output leaf {j} is {what}: every output must be a tensor "
                                     f"with one row per input row ({size})")
            if len(run) == n and index is None:
                leaves_out = sub
            for j, i in enumerate(run):
                r = rows[i]
                q = r.request
                if q.policy.never_forecasts:          # nothing will read it: nothing is stored
                    continue
                q.state(r.branch).absorb(tuple(leaf[j:j + 1] for leaf in sub), (), {}, coords[q], q.derivatives())
                q.spec = spec
        self.counts["forecast_rows"] += n - len(run)
        if leaves_out is not None:
            return pytree.tree_unflatten(leaves_out, spec)
        pos = {i: j for j, i in enumerate(run)}
        specs = [s for s in [spec] + [rows[i].request.spec for i in range(n) if i not in pos] if s is not None]
        if any(s != specs[0] for s in specs[1:]):
            raise ValueError("the rows' outputs differ in structure (a request last computed with another "
                             "output structure, e.g. return_dict): every row of one call must have the same")
        spec = specs[0]
        per_row = []
        for i, r in enumerate(rows):
            if i in pos:
                per_row.append([leaf[pos[i]:pos[i] + 1] for leaf in sub])
            else:
                q = r.request
                per_row.append(list(q.state(r.branch).forecast(coords[q], ())))
        leaves = [torch.cat([row[j] for row in per_row]) for j in range(len(per_row[0]))]
        return pytree.tree_unflatten(leaves, spec)
