"""Under torch.distributed every rank takes the same AutoPolicy decisions (the squared norms behind the
estimate are all-reduced with SUM before the one host read of the step: the estimate of the output all
the ranks hold together).

Two CPU processes (gloo, a free localhost port) run the same compiled toy model on DIFFERENT inputs:
rank 0's region output hardly depends on the timestep (estimates ~ 0: it would forecast every step it
may), rank 1's is strongly cubic in it (large estimates: it would compute often). With the process
group up, both ranks must log the same decisions and the same (reduced) estimates, while the values
they fed into the reduction differ; after the group is destroyed the same runs decide differently.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 16


class Cubic(torch.nn.Module):
    """A block whose output is an explicit function of its input and the timestep: 1 + h * t^3."""

    def forward(self, h, t):
        return 1.0 + h * t[:, None] ** 3


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Cubic()])

    def forward(self, x, timestep):
        h = x * 1.0
        for block in self.blocks:
            h = block(h, timestep)
        return h - 1.0


def _generation(model, backend, x) -> list[dict]:
    backend.reset()
    with torch.no_grad():
        for k in range(STEPS):
            model(x, torch.full((x.shape[0],), 1.0 - k / STEPS))
    return [{"step": c["step"], "decision": c["decision"], "estimate": c["estimate"]}
            for c in backend.stats()["trace"]]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from taylorseer_fx import AutoPolicy, taylorseer_backend

    fed, got = [], []
    orig = dist.all_reduce

    def spy(tensor, *args, **kwargs):
        if tensor.ndim != 2:
            return orig(tensor, *args, **kwargs)        # the order choice's back-test sums
        fed.append(tensor.tolist())
        work = orig(tensor, *args, **kwargs)
        got.append(tensor.tolist())
        return work

    dist.all_reduce = spy
    policy = AutoPolicy(threshold=0.01, order=1, form="newton", warmup=2, max_forecast_run=4,
                        accumulate=False)
    backend = taylorseer_backend(policy, regions="stack", inner="eager")
    model = torch.compile(Toy(), backend=backend)
    x = torch.full((2, 8), 1e-6 if rank == 0 else 1.0)     # different inputs per rank
    synced = _generation(model, backend, x)
    dist.barrier()
    dist.destroy_process_group()
    local = _generation(model, backend, x)                  # same inputs, no reduction any more
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"synced": synced, "local": local, "fed": fed, "got": got}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
@pytest.mark.skipif(sys.platform == "win32", reason="gloo spawn test runs on POSIX")
def test_ranks_take_the_same_decisions(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # the decision traces agree step by step, and so do the reduced estimates
    assert [c["decision"] for c in r0["synced"]] == [c["decision"] for c in r1["synced"]]
    assert [c["estimate"] for c in r0["synced"]] == [c["estimate"] for c in r1["synced"]]
    decisions = [c["decision"] for c in r0["synced"]]
    assert len(decisions) == STEPS and "forecast" in decisions and "compute" in decisions[3:]
    # one reduction per decided step on each rank; the values fed in differ, the results agree
    assert len(r0["fed"]) == len(r1["fed"]) > 0
    assert r0["got"] == r1["got"]
    assert any(a != b for a, b in zip(r0["fed"], r1["fed"]))
    # (num_sq, den_sq) per region, summed over the ranks
    for got, a, b in zip(r0["got"], r0["fed"], r1["fed"]):
        assert got[0] == pytest.approx([a[0][0] + b[0][0], a[0][1] + b[0][1]], rel=1e-6)   # float32 sums
    # without the reduction the ranks would have decided differently
    d0 = [c["decision"] for c in r0["local"]]
    d1 = [c["decision"] for c in r1["local"]]
    assert d0 != d1
    assert d1 == [c["decision"] for c in r0["synced"]]      # the cubic rank's estimates dominate
    assert d0.count("forecast") > d1.count("forecast")
