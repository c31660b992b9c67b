"""report.py: the decision trace as data, the text tables and the PNG plot."""

import pytest
import torch

from taylorseer_fx import FixedPolicy, taylorseer_backend
from taylorseer_fx.runtime.report import decision_trace, format_table, plot_trace, stats_table


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ff = torch.nn.Linear(4, 4)

    def forward(self, h):
        return h + torch.tanh(self.ff(h))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(2))

    def forward(self, x, timestep):
        h = x * timestep[:, None]
        for b in self.blocks:
            h = b(h)
        return h


def _run(steps=8):
    torch._dynamo.reset()
    policy = FixedPolicy(interval=3, warmup=2, order=1)
    backend = taylorseer_backend(policy=policy, regions="stack", inner="eager")
    model = torch.compile(_Net().eval(), backend=backend)
    x = torch.randn(2, 4)
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.1, steps):
            model(x, t.repeat(2))
    return backend.stats(), policy


def test_decision_trace_matches_the_policy_schedule():
    stats, policy = _run()
    rows = decision_trace(stats, threshold=0.5)
    assert [r["step"] for r in rows] == list(range(8))
    assert [r["step"] for r in rows if r["decision"] == "compute"] == policy.compute_steps(8)
    assert all(r["threshold"] == 0.5 for r in rows)
    assert rows[0]["coordinate"] == pytest.approx(1.0)


def test_tables_and_plot(tmp_path):
    stats, _ = _run()
    text = stats_table(stats)
    assert "(steps)" in text and str(stats["compute"]) in text
    assert format_table([{"a": 1.23456, "b": None}], ["a", "b"]).splitlines()[-1].split() == ["1.235", "-"]
    png = plot_trace(decision_trace(stats, threshold=0.1), tmp_path / "trace.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="rows"):
        plot_trace([], tmp_path / "empty.png")
