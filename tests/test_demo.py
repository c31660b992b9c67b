"""The demo command (``python -m taylorseer_fx.demo``) runs end to end: table, grid, trace, JSON.

The model itself is covered by tests/test_demo_model.py."""

import json

import pytest

pytest.importorskip("safetensors")


def test_demo_cli_smoke(tmp_path, capsys):
    """The custom DiT path (``--model dit``; the default, flux, is tested in tests/test_demo_flux.py)."""
    from taylorseer_fx.demo.__main__ import main

    main(["--model", "dit", "--steps", "8", "--per-class", "1", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    for name in ("uncached", "official", "openvino-lite", "auto"):
        assert name in table
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["policy"] for r in results] == ["uncached", "official", "openvino-lite", "auto"]
    assert all(r["steps"] == 8 for r in results)
    assert any(r["computes"] < 8 for r in results[1:])  # something was forecast
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "decisions.png").is_file()
