"""The block-child names the ``modules`` kind selects, and the ``stack-residual`` warning where no stack output
has an input of its shape (select.py, module_names.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from taylorseer_fx import FixedPolicy, taylorseer_backend
from taylorseer_fx.graph.module_names import MODULE_NAMES, is_module_name
from taylorseer_fx.graph.select import select_regions, warn_unpaired_residual
from taylorseer_fx.graph.transform import split

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

# block children that are a block's attention / feed-forward (diffusers' names)
ATTENTION_FF = [
    "attn", "attn1", "attn2", "attention", "self_attn", "cross_attn", "self_attention", "cross_attention",
    "av_cross_attention",                                                   # Kandinsky 6
    "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn", "audio_ff",   # LTX2
    "ff", "ff_context", "ffn", "feed_forward", "txt_ff",                    # EasyAnimate: txt_ff
    "ff_i", "ff_t",                                                         # HiDream's two streams
    "mlp", "img_mlp", "txt_mlp", "proj_mlp",
    "down_proj",                                                            # PRX's inline gated MLP output
]
# norms, modulation, activations, embeddings, pieces of an inline MLP, output projections
NOT_ATTENTION_FF = [
    "norm", "norm1", "norm2", "norm1_context", "norm2_context", "norm_out", "attn_norm", "ffn_norm1",
    "attention_norm1", "self_attention_norm", "cross_attention_norm", "feed_forward_norm", "audio_norm1",
    "audio_to_video_norm", "img_norm1", "pre_attn_norm", "pre_mlp_norm", "mlp_norm", "self_attn_norm",
    "input_layernorm", "post_attention_layernorm", "img_pre_norm", "adaLN_mlp_ln", "adaLN_sa_ln",
    "modulation", "adaLN_modulation", "adaln_mlp", "img_mod", "txt_mod", "text_modulation", "visual_modulation",
    "act", "act_mlp", "mlp_act", "silu",
    "gate_proj", "up_proj", "ff_in", "ff_out", "proj_in", "proj_out", "to_out", "encoder_proj",
    "time_embed", "time_mlp", "pos_embed", "scale_shift_table",
]


@pytest.mark.parametrize("name", ATTENTION_FF)
def test_attention_and_feed_forward_names_match(name):
    assert is_module_name(name)


@pytest.mark.parametrize("name", NOT_ATTENTION_FF)
def test_other_block_children_do_not_match(name):
    assert not is_module_name(name)


def test_module_names_is_a_whole_name_pattern():
    assert MODULE_NAMES.fullmatch("attn") and not MODULE_NAMES.fullmatch("attn.to_q")
    assert not is_module_name("") and not is_module_name("0")


# ---------------------------------------------------------------- stack-residual without a residual input


def _zoo(name):
    pytest.importorskip("diffusers")
    from tiny_zoo import ZOO
    fam = ZOO[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, mk = fam.make(0)
    args, kwargs = mk(step_t=fam.timesteps(4)[0])
    return model, args, kwargs


def _graphs(model, args, kwargs):
    got = []

    def backend(gm, example_inputs):
        got.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*args, **kwargs)
    torch._dynamo.reset()
    return got


def _unpaired_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning) and "no residual input" in str(w.message)]


# AuraFlow's stack ends in the single blocks on the concatenated text + image tokens: no stack input has that
# shape (so do Flux2, Chroma, BriaFibo, Kandinsky5, Helios, Latte); Flux's stack output continues its input.
@pytest.mark.parametrize("family,unpaired", [("auraflow", True), ("flux", False)])
def test_unpaired_residual_warns_once_per_graph(family, unpaired):
    model, args, kwargs = _zoo(family)
    (gm,) = _graphs(model, args, kwargs)
    regions = select_regions(gm, "stack-residual")
    _, infos, _ = split(gm, regions)
    assert (not infos[0].residual) == unpaired
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warn_unpaired_residual(gm, regions, infos)
        warn_unpaired_residual(gm, select_regions(gm, "stack"), infos)      # not residual: never a warning
    got = _unpaired_warnings(record)
    assert len(got) == int(unpaired), [str(w.message) for w in record]
    if unpaired:
        msg = str(got[0].message)
        assert "stack-residual" in msg and "graph " in msg and "forecasting the stack output" in msg


@pytest.mark.parametrize("family,unpaired", [
    ("auraflow", True),
    ("flux", False),
])
def test_backend_warns_for_unpaired_stack_residual(family, unpaired):
    model, args, kwargs = _zoo(family)
    be = taylorseer_backend(FixedPolicy(interval=1), regions="stack-residual", inner="eager")
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend=be)
        for _ in range(2):
            compiled(*args, **kwargs)
    torch._dynamo.reset()
    assert len(_unpaired_warnings(record)) == int(unpaired), [str(w.message) for w in record]
