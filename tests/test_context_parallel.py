"""Under diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``)
a model compiled through the backend gives what the single-process run gives, and every rank takes the
same decisions.

Two CPU processes (``gloo``, a free localhost port) build the same tiny random-weight Flux (seeded), shard
it with ``ulysses_degree=2`` and, separately, ``ring_degree=2``, compile it with
``taylorseer_backend(..., regions="stack", inner="eager")`` and run the same 12-step Euler loop (each
step's output fed back into the next step's latent) under four policies: never forecast, a fixed
forecasting schedule and two ``AutoPolicy`` variants. Each rank writes its outputs, decision trace,
cached bytes and the ``torch.distributed.all_reduce`` calls the library made to a temporary folder; the
parent compares them with the same loop run in one process without a process group (eager, and
compiled with each policy).

On CPU diffusers needs two things the test patches inside its worker processes only:

* ``torch.accelerator.device_count()`` reports 0 without an accelerator, and ``enable_parallelism`` takes
  ``rank % device_count()``: the workers report 1 (the mesh is then built on ``"cpu"``, gloo).
* Ring attention merges the ranks' partial results with the attention's log-sum-exp, which it asks the
  backend's forward op for. No CP-capable diffusers backend returns one on CPU (``native`` raises,
  ``_native_flash`` / ``_native_cudnn`` call CUDA-only kernels), so for the ring runs the ``native``
  forward op is replaced by torch's CPU flash kernel (``_scaled_dot_product_flash_attention_for_cpu``),
  which returns ``(out, lse)`` like ``_native_flash`` does on CUDA. Ulysses runs on the stock ``native``
  backend.

Tolerance (``TOL``: rtol = atol = 1e-5, outputs of magnitude ~1.4): context parallelism changes the
float32 summation order, not the math -- the linear layers run on 12-token shards instead of all 24
tokens, attention runs per head after the all-to-all (Ulysses) or is merged from two halves with the
log-sum-exp (ring) -- so single forwards differ by an ulp or two (~2e-7); the Euler loop carries that
through 12 steps and an order-2 extrapolation multiplies it by its coefficients (measured: <= 1.4e-6).
1e-5 is ~7x that, and 1000x below the smallest real difference the checks must see (a forecast step
against a computed one: ~1e-2; asserted below).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "ContextParallelConfig"):
    pytest.skip("this diffusers has no ContextParallelConfig", allow_module_level=True)

STEPS = 12
TOL = dict(rtol=1e-5, atol=1e-5)
MODES = ("ulysses", "ring")
# the single-process order choice of the Forecaster repro: rank 0's shard alone prefers degree 0,
# rank 1's and the whole output prefer degree 1
REPRO_TS = (0.0, 1.0, 2.0)


def _policies() -> dict:
    from taylorseer_fx import AutoPolicy, FixedPolicy
    return {
        "never": FixedPolicy(interval=1),
        "fixed": FixedPolicy(interval=3, warmup=3, order=2, form="newton"),
        # order fixed: the decisions rest on the all-reduced estimate alone
        "auto": AutoPolicy(threshold=0.06, select_order=False),
        # the default: the forecast order is chosen by a back-test (its sums all-reduced over the ranks)
        "auto_select": AutoPolicy(threshold=0.05),
        # a budget: exactly half the steps computed, placed by the all-reduced estimates
        "auto_budget": AutoPolicy(budget=0.5, select_order=False, num_steps=STEPS),
    }


def _repro_shard(rank: int, t: float) -> torch.Tensor:
    """One rank's shard of an output y(t): rank 0's is nearly constant (noise), rank 1's linear in t."""
    if rank == 0:
        return torch.full((4,), {0.0: 1.0, 1.0: 1.001, 2.0: 0.999}[t])
    return torch.full((4,), 10.0 * t)


def _repro_order(outputs) -> int:
    from taylorseer_fx import Forecaster
    f = Forecaster(order=1, form="newton", select=1)
    for t in REPRO_TS:
        f.update(t, outputs(t))
    return int(f.chosen_order())


def _generation(model, backend, make_inputs) -> dict:
    """A 12-step flow-matching Euler loop from sigma 1 to 0 (each output fed back into the latent)."""
    _, kwargs = make_inputs(step_t=1.0)
    x = kwargs["hidden_states"].clone()
    if backend is not None:
        backend.reset()
    outs = []
    with torch.no_grad():
        for k in range(STEPS):
            t, t_next = 1.0 - k / STEPS, 1.0 - (k + 1) / STEPS
            kwargs.update(hidden_states=x, timestep=torch.full((1,), t))
            v = model(**kwargs)[0]
            outs.append(v.clone())
            x = x + (t_next - t) * v
    if backend is None:
        return {"outputs": torch.stack(outs)}
    trace = [{"step": c["step"], "decision": c["decision"], "estimate": c["estimate"], "orders": c.get("orders")}
             for c in backend.stats()["trace"]]
    return {"outputs": torch.stack(outs), "trace": trace, "memory": backend.memory_bytes()}


def _all_policies(model, make_inputs, reductions=None) -> dict:
    from taylorseer_fx import taylorseer_backend
    backend = taylorseer_backend(_policies()["never"], regions="stack", inner="eager")
    compiled = torch.compile(model, backend=backend)
    out = {}
    for name, policy in _policies().items():
        backend.policy = policy                      # swapped without recompiling
        if reductions is not None:
            reductions.clear()
        out[name] = _generation(compiled, backend, make_inputs)
        if reductions is not None:
            out[name]["reductions"] = list(reductions)
    out["graphs"] = [g["regions"] for g in backend.graphs]
    return out


def _cpu_ring_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """diffusers' ``native`` forward op with the log-sum-exp ring attention needs, from torch's CPU flash
    kernel (inputs and outputs in the model layout (B, S, H, D); lse (B, S, H))."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    out = out.transpose(1, 2)
    return (out, lse.transpose(1, 2)) if return_lse else out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import diffusers.models.attention_dispatch as dispatch
    from diffusers import ContextParallelConfig
    from tiny_models import make_flux

    reductions = []
    all_reduce = dist.all_reduce

    def spy(tensor, *args, **kwargs):              # the library's own collectives (diffusers' are funcol)
        op = kwargs.get("op", args[0] if args else dist.ReduceOp.SUM)
        reductions.append((str(op).rsplit(".", 1)[-1], tensor.numel()))
        return all_reduce(tensor, *args, **kwargs)

    with mock.patch.object(torch.accelerator, "device_count", lambda: 1), \
            mock.patch.object(dist, "all_reduce", spy):
        # a collective that one rank misses fails after the timeout instead of hanging the test
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
        try:
            result = {}
            for mode in MODES:
                patch = (mock.patch.object(dispatch, "_native_attention_forward_op", _cpu_ring_forward_op)
                         if mode == "ring" else contextlib.nullcontext())
                with patch:
                    model, make_inputs = make_flux(seed=0)
                    model.set_attention_backend("native")
                    model.enable_parallelism(config=ContextParallelConfig(**{f"{mode}_degree": 2}))
                    result[mode] = _all_policies(model, make_inputs, reductions)
            result["repro_order"] = _repro_order(lambda t: _repro_shard(rank, t))
            torch.save(result, Path(out_dir, f"rank{rank}.pt"))
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if sys.platform == "win32":
        pytest.skip("the gloo spawn test runs on POSIX")
    out_dir = tmp_path_factory.mktemp("cp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    try:
        workers = mp.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=False)
        try:                                          # the single-process runs meanwhile, here
            from tiny_models import make_flux
            model, make_inputs = make_flux(seed=0)
            single = _all_policies(model, make_inputs)                  # one process, no process group
            single["eager"] = _generation(model, None, make_inputs)["outputs"]
            whole = lambda t: torch.cat([_repro_shard(0, t), _repro_shard(1, t)])  # noqa: E731
            single["repro_order"] = _repro_order(whole)
        finally:
            while not workers.join():
                pass
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(threads)
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in (0, 1)]
    return single, ranks


def _decisions(run) -> str:
    return "".join(c["decision"][0] for c in run["trace"])


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("mode", MODES)
def test_one_graph_and_the_cache_holds_the_local_shard(runs, mode):
    single, ranks = runs
    assert single["graphs"] == [["stack"]]
    for r in ranks:
        assert r[mode]["graphs"] == [["stack"]]         # dynamo traced through the CP hooks, no graph break
        # the factors are stored for the rank's half of the sequence (24 tokens -> 12)
        for name in ("fixed", "auto"):
            assert single[name]["memory"] > 0
            assert r[mode][name]["memory"] * 2 == single[name]["memory"]


@pytest.mark.parametrize("mode", MODES)
def test_never_forecast_equals_the_single_process_eager_model(runs, mode):
    single, (r0, r1) = runs
    assert torch.equal(single["never"]["outputs"], single["eager"])
    for r in (r0, r1):
        assert _decisions(r[mode]["never"]) == "c" * STEPS
        assert r[mode]["never"]["reductions"] == []
        torch.testing.assert_close(r[mode]["never"]["outputs"], single["eager"], **TOL)
    assert torch.equal(r0[mode]["never"]["outputs"], r1[mode]["never"]["outputs"])   # all-gathered output


@pytest.mark.parametrize("mode", MODES)
def test_fixed_policy_equals_the_single_process_cached_run(runs, mode):
    single, (r0, r1) = runs
    want = single["fixed"]
    assert _decisions(want) == "cccffcffcffc"
    for r in (r0, r1):
        assert r[mode]["fixed"]["trace"] == want["trace"]
        assert r[mode]["fixed"]["reductions"] == []      # a fixed schedule needs no communication
        torch.testing.assert_close(r[mode]["fixed"]["outputs"], want["outputs"], **TOL)
    assert torch.equal(r0[mode]["fixed"]["outputs"], r1[mode]["fixed"]["outputs"])
    # the tolerance is far below what forecasting changes
    assert _max_diff(want["outputs"], single["eager"]) > 1000 * TOL["atol"]


@pytest.mark.parametrize("mode", MODES)
def test_auto_policy_every_rank_takes_the_same_decisions(runs, mode):
    single, (r0, r1) = runs
    a, b, want = r0[mode]["auto"], r1[mode]["auto"], single["auto"]
    # the same decisions and the same (all-reduced) estimates on every rank, bit for bit
    assert [(c["decision"], c["estimate"]) for c in a["trace"]] == [(c["decision"], c["estimate"]) for c in b["trace"]]
    assert "f" in _decisions(a) and "c" in _decisions(a)[3:]
    # one SUM all-reduce per step that asked for an estimate: the squared norms of the difference and of
    # the output (one pair per region); nothing else
    asked = [c for c in a["trace"] if c["estimate"] is not None]
    assert a["reductions"] == b["reductions"] == [("SUM", 2)] * len(asked)
    # the sums over the shards are the whole output's norms: the single process's estimate (up to the
    # float32 summation order) and so its decisions -- a MAX of per-shard ratios was up to 10% larger
    assert _decisions(a) == _decisions(want)
    for c, w in zip(a["trace"], want["trace"]):
        assert (c["estimate"] is None) == (w["estimate"] is None)
        if c["estimate"] is not None:
            assert c["estimate"] == pytest.approx(w["estimate"], rel=2e-5, abs=1e-12)
    for r in (r0, r1):
        torch.testing.assert_close(r[mode]["auto"]["outputs"], want["outputs"], **TOL)
    assert torch.equal(a["outputs"], b["outputs"])
    assert _max_diff(want["outputs"], single["eager"]) > 1000 * TOL["atol"]


@pytest.mark.parametrize("mode", MODES)
def test_a_budget_is_spent_exactly_and_identically_on_every_rank(runs, mode):
    single, (r0, r1) = runs
    a, b = r0[mode]["auto_budget"], r1[mode]["auto_budget"]
    assert [(c["decision"], c["estimate"]) for c in a["trace"]] == [(c["decision"], c["estimate"]) for c in b["trace"]]
    assert _decisions(a).count("c") == STEPS // 2 == _decisions(single["auto_budget"]).count("c")
    assert _decisions(a) == _decisions(single["auto_budget"])


@pytest.mark.parametrize("mode", MODES)
def test_order_selecting_auto_policy_ranks_agree_on_decisions(runs, mode):
    single, (r0, r1) = runs
    a, b = r0[mode]["auto_select"], r1[mode]["auto_select"]
    assert [(c["decision"], c["estimate"]) for c in a["trace"]] == [(c["decision"], c["estimate"]) for c in b["trace"]]
    assert _decisions(a) == _decisions(single["auto_select"])


def test_order_choice_repro_needs_the_whole_output(runs):
    """The repro below: a Forecaster(order=1, select=1) fed rank 0's shard of an output alone prefers
    degree 0; fed rank 1's, or the whole output, degree 1."""
    single, (r0, r1) = runs
    assert single["repro_order"] == 1
    assert r1["repro_order"] == 1


def test_order_choice_is_the_whole_outputs_on_every_rank(runs):
    """Minimal repro, no model: the same Forecaster on each rank's shard chooses what it would choose
    for the whole output."""
    single, (r0, r1) = runs
    assert r0["repro_order"] == r1["repro_order"] == single["repro_order"]


@pytest.mark.parametrize("mode", MODES)
def test_order_selecting_auto_policy_equals_the_single_process_cached_run(runs, mode):
    single, (r0, r1) = runs
    want = single["auto_select"]
    a, b = r0[mode]["auto_select"], r1[mode]["auto_select"]
    # the estimates' squared norms, plus the back-test sums at the computes that choose an order: all SUMs,
    # the same on both ranks, and the single process's estimates
    assert a["reductions"] == b["reductions"]
    assert {op for op, _ in a["reductions"]} == {"SUM"}
    assert len(a["reductions"]) > sum(c["estimate"] is not None for c in a["trace"])
    for c, w in zip(a["trace"], want["trace"]):
        assert (c["estimate"] is None) == (w["estimate"] is None)
        if c["estimate"] is not None:
            assert c["estimate"] == pytest.approx(w["estimate"], rel=2e-5, abs=1e-12)
    for r in (a, b):
        assert [c["orders"] for c in r["trace"]] == [c["orders"] for c in want["trace"]]
        torch.testing.assert_close(r["outputs"], want["outputs"], **TOL)
    assert torch.equal(a["outputs"], b["outputs"])


# nn_module_stack paths dynamo records under ``enable_parallelism`` (diffusers' HookRegistry replaces the
# forward of the model and of the modules its plan names -- Wan: ``blocks.0``), and the modules they name
_HOOKED_PATHS = {
    "L['function_reference'].forward.__self__.__dict__['_modules']['transformer_blocks'].0.attn":
        "transformer_blocks.0.attn",
    "L['function_reference'].forward.__self__.__dict__['_modules']['blocks'].0.forward.func.__closure__[0]"
    ".cell_contents.forward.__self__.attn1": "blocks.0.attn1",
}


@pytest.mark.parametrize("raw, name", list(_HOOKED_PATHS.items()), ids=["flux", "wan"])
def test_module_paths_under_the_cp_hooks(raw, name):
    from taylorseer_fx.graph.select import normalize_path
    assert normalize_path(raw) == name
