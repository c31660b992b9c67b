"""The FLUX digits demo: the shipped diffusers model and label table, FluxPipeline sampling (uncached
and through ``compile_pipeline``), the ``--model flux`` demo command."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from taylorseer_fx import FixedPolicy, compile_pipeline  # noqa: E402
from taylorseer_fx.demo import flux_model as fm  # noqa: E402
from taylorseer_fx.demo.flux_pipeline import build_pipeline, initial_noise, sample  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return fm.load_transformer(), fm.load_label_table()


def test_the_shipped_model_is_a_diffusers_folder_under_10_mb():
    folder = fm.flux_dir()
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert (folder / "config.json").is_file() and weights.is_file()
    assert weights.stat().st_size <= 10 * 2**20
    model = diffusers.FluxTransformer2DModel.from_pretrained(str(folder))
    want = fm.flux_config()
    for k, v in want.items():
        got = model.config[k]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(v) if isinstance(v, tuple) else v), k
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_label_table_has_its_shapes_and_is_the_seeded_one(shipped):
    _, table = shipped
    assert table["prompt_embeds"].shape == (fm.NUM_CLASSES + 1, fm.TEXT_TOKENS, fm.JOINT_DIM)
    assert table["pooled_prompt_embeds"].shape == (fm.NUM_CLASSES + 1, fm.POOLED_DIM)
    fresh = fm.make_label_table()
    assert all(torch.equal(table[k], fresh[k]) for k in fresh)
    pe, pooled = fm.condition(torch.tensor([3, fm.NULL_LABEL]), table)
    assert pe.shape == (2, fm.TEXT_TOKENS, fm.JOINT_DIM) and pooled.shape == (2, fm.POOLED_DIM)
    with pytest.raises(ValueError):
        fm.condition(torch.tensor([11]), table)


def test_packing_is_fluxpipelines():
    x = torch.randn(3, 1, fm.RESOLUTION, fm.RESOLUTION)
    P = diffusers.FluxPipeline
    packed = fm.pack(x)
    assert torch.equal(packed, P._pack_latents(x, 3, 1, fm.RESOLUTION, fm.RESOLUTION))
    assert torch.equal(fm.unpack(packed), x)
    assert torch.equal(P._unpack_latents(packed, fm.PIXEL_SIZE, fm.PIXEL_SIZE, 8), x)
    half = fm.RESOLUTION // 2
    assert torch.equal(fm.image_ids(), P._prepare_latent_image_ids(1, half, half, "cpu", torch.float32))


def test_a_4_step_pipeline_run_through_compile_pipeline_is_finite(shipped):
    model, table = shipped
    pipe = build_pipeline(model)
    handle = compile_pipeline(pipe, policy=FixedPolicy(interval=2), regions="stack", inner="eager")
    try:
        x = sample(pipe, [0, 7], num_steps=4, cfg_scale=3.0, table=table)
        stats = handle.stats()["total"]
    finally:
        handle.remove()
    assert x.shape == (2, 1, fm.RESOLUTION, fm.RESOLUTION) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0
    assert stats["steps"] == 4 and stats["forecast"] > 0
    assert stats["calls"] == 8                              # true CFG: cond and uncond calls each step


def test_never_forecast_through_compile_pipeline_equals_the_uncached_pipeline(shipped):
    model, table = shipped
    pipe = build_pipeline(model)
    noise = initial_noise(3, seed=5)
    want = sample(pipe, [1, 4, 9], num_steps=6, table=table, noise=noise)
    handle = compile_pipeline(pipe, policy="never", regions="stack", inner="eager")
    try:
        got = sample(pipe, [1, 4, 9], num_steps=6, table=table, noise=noise)
        assert handle.stats()["total"]["compute"] == 6 and handle.stats()["total"]["forecast"] == 0
    finally:
        handle.remove()
    assert torch.equal(got, want)


def test_the_shipped_model_draws_its_digits(shipped):
    """A small regression guard on quality (the full measurement is in the training log: >= 200
    samples at 28 steps)."""
    from taylorseer_fx.demo.sampling import load_classifier

    model, table = shipped
    labels = torch.arange(10).repeat_interleave(2)
    x = sample(build_pipeline(model), labels, num_steps=28, cfg_scale=3.0, table=table, seed=123)
    acc = float((load_classifier()(x).argmax(1) == labels).float().mean())
    assert acc >= 0.9, acc


def test_the_flux_demo_command(tmp_path, capsys):
    from taylorseer_fx.demo.__main__ import main

    main(["--steps", "8", "--per-class", "1", "--policy", "official", "--out", str(tmp_path)])
    assert "official" in capsys.readouterr().out
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["model"] == "flux" and res["config"]["cfg"] == 3.0
    rows = res["results"]
    assert [r["policy"] for r in rows] == ["uncached", "official"]
    assert all(r["steps"] == 8 for r in rows) and rows[1]["computes"] < 8
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
