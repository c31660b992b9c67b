"""A model that graph-breaks after its timestep embedding: the graph that holds the blocks has no
timestep input, and takes the coordinate the earlier graph of the same model call read."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import FixedPolicy, taylorseer_backend


class BrokenDiT(torch.nn.Module):
    """The plain DiT with a graph break between its conditioning and its blocks (``before``), or
    between its blocks and its final layer (``after``: the timestep is first read after the blocks)."""

    def __init__(self, where: str = "before"):
        super().__init__()
        self.m, self.where = make_plain_dit(), where

    def forward(self, x, timestep, y):
        m = self.m
        h = m.x_embedder(x).flatten(2).transpose(1, 2) + m.pos_embed
        if self.where == "before":
            c = m.blocks[0].emb(timestep) + m.y_embedder(y)
            torch._dynamo.graph_break()
            for block in m.blocks:
                h = block(h, c)
        elif self.where == "middle":
            c = m.blocks[0].emb(timestep) + m.y_embedder(y)
            half = len(m.blocks) // 2
            for block in m.blocks[:half]:
                h = block(h, c)
            torch._dynamo.graph_break()          # between two runs of blocks: two graphs hold blocks
            for block in m.blocks[half:]:
                h = block(h, c)
        else:
            c0 = m.y_embedder(y)[:, None].squeeze(1) * 0 + 1.0
            for block in m.blocks:
                h = block(h, c0)
            torch._dynamo.graph_break()
            c = m.blocks[0].emb(timestep) + m.y_embedder(y)
        out = m.final_layer(h, c)
        b, p, s, ch = x.shape[0], m.patch, m.size // m.patch, m.in_channels
        return out.reshape(b, s, s, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, s * p, s * p)


def _run(fn, x, y, n=10):
    with torch.no_grad():
        return [fn(x, torch.full((x.shape[0],), 999.0 - 99.0 * k), y) for k in range(n)]


def _cached(where: str, policy):
    """(backend, outputs of 10 steps, model, x, y) of a BrokenDiT compiled with the backend."""
    model = BrokenDiT(where).eval()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(policy, inner="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _run(torch.compile(model, backend=be), x, y)
    return be, got, model, x, y


def test_the_block_graph_takes_the_coordinate_of_the_earlier_graph():
    policy = FixedPolicy(interval=3)
    be, got, _, x, y = _cached("before", policy)
    assert sum(1 for g in be.graphs if g["regions"]) == 1 and len(be.graphs) >= 2
    s = be.stats()
    assert [r["step"] for r in s["trace"]] == list(range(10))
    assert [r["step"] for r in s["trace"] if r["decision"] == "compute"] == policy.compute_steps(10)
    torch._dynamo.reset()
    ref = taylorseer_backend(policy, inner="eager", whole_graph=False)
    plain = make_plain_dit()
    want = _run(torch.compile(plain, backend=ref), x, y)       # the same model without the break
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_step_is_counted_once_when_two_graphs_hold_blocks():
    policy = FixedPolicy(interval=3)
    be = _cached("middle", policy)[0]
    assert sum(1 for g in be.graphs if g["regions"]) == 2
    s = be.stats()
    assert s["steps"] == 10 and s["compute"] == len(policy.compute_steps(10)), {k: s[k] for k in ("compute", "steps")}
    assert s["calls"] == 20                                      # two region graphs per model call


def test_a_coordinate_read_after_the_blocks_is_never_used_for_them():
    be, got, model, x, y = _cached("after", FixedPolicy(interval=3))
    s = be.stats()
    assert s["forecast"] == 0 and s["uncached_calls"] == 10    # no coordinate: computed, uncached
    with torch.no_grad():
        want = [model(x, torch.full((x.shape[0],), 999.0 - 99.0 * k), y) for k in range(10)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
