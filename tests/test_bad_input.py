"""Bad input is a ValueError that names the field, quickly (issue 25, items 10-13)."""

from __future__ import annotations

import time

import pytest
import torch

from taylorseer_fx import load_policy, taylorseer_backend


@pytest.mark.parametrize("value", ["123", b"123", bytearray(b"12"), 56, 5.0, object()])
@pytest.mark.parametrize("field", ["timesteps", "schedule"])
def test_a_session_schedule_that_is_not_a_sequence_of_numbers_is_refused(field, value):
    be = taylorseer_backend(inner="eager")
    with pytest.raises(ValueError, match=field):
        be.session(**{field: value})


def test_load_policy_says_value_error_for_every_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="cannot be read|not found"):
        load_policy("./" + "x" * 300 + ".toml")            # a name too long for the file system
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ValueError):
        load_policy(tmp_path / "dir.toml")


@pytest.mark.parametrize("text", [
    "kind = " + "[" * 1000 + "]" * 1000 + "\n",                       # deep arrays: RecursionError in the parser
    "kind = " + "{a=" * 600 + "1" + "}" * 600 + "\n",                 # deep inline tables
    ".".join(["a"] * 30000) + " = 1\n",                                # a dotted key of 30,000 parts (quadratic)
    'kind = "fixed"\n' + "#" * (70 * 1024) + "\n",                     # over 64 KiB
])
def test_a_preset_too_deep_or_too_large_is_refused_at_once(tmp_path, text):
    p = tmp_path / "evil.toml"
    p.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="evil.toml"):
        load_policy(p)
    assert time.perf_counter() - t0 < 0.5


def test_a_bare_preset_name_never_reads_another_distributions_policies_folder(tmp_path, monkeypatch):
    """Installed, the package sits in site-packages beside other distributions: a ``policies/`` folder
    there (another package's) is not ours, unless this project's pyproject.toml sits beside it."""
    import shutil

    import taylorseer_fx
    from taylorseer_fx.policy import presets
    site = tmp_path / "site-packages"
    pkg = site / "taylorseer_fx"
    shutil.copytree(taylorseer_fx.__path__[0], pkg, ignore=shutil.ignore_patterns("demo", "__pycache__"))
    (site / "policies").mkdir()
    (site / "policies" / "sneaky.toml").write_text('kind = "fixed"\ninterval = 1\n')
    monkeypatch.setattr(presets, "__file__", str(pkg / "policy" / "presets.py"))
    assert all(d.resolve() != (site / "policies").resolve() for d in presets._preset_dirs())
    with pytest.raises(ValueError, match="unknown policy preset 'sneaky'"):
        presets.load_policy("sneaky")
    (site / "pyproject.toml").write_text('[project]\nname = "taylorseer-fx"\n')     # a source checkout
    assert (site / "policies").resolve() in [d.resolve() for d in presets._preset_dirs()]


def test_the_demo_loads_safetensors_only(tmp_path):
    pytest.importorskip("diffusers")
    from taylorseer_fx.demo.flux_model import flux_dir, load_transformer
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "config.json").write_text((flux_dir() / "config.json").read_text())
    model = load_transformer()
    torch.save(model.state_dict(), folder / "diffusion_pytorch_model.bin")   # a pickle only
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_transformer(folder)


def test_a_preset_whose_comments_and_values_hold_many_dots_loads(tmp_path):
    p = tmp_path / "dots.toml"
    p.write_text('# Tuned on FLUX.1-dev, 28 steps. See docs/auto.md. Errors 0.1, 0.2, 0.3, 0.4, 0.5.\n'
                 'description = "a.b.c.d.e.f.g.h.i.j.k"\nkind = "fixed"\ninterval = 3\n')
    assert load_policy(p).interval == 3
