"""select.py and transform.py on the graphs dynamo hands a backend (torch 2.13)."""

from __future__ import annotations

import operator

import pytest
import torch

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx.graph.select import NoRegionError, block_lists, node_module_paths, normalize_path, select_regions
from taylorseer_fx.graph.placeholders import find_timestep
from taylorseer_fx.graph.transform import plan_partitions, split

torch.set_num_threads(1)


def capture(model, *args, **kwargs):
    """(gm, example_inputs) of the single graph dynamo hands a backend for model(*args, **kwargs)."""
    got = []

    def backend(gm, example_inputs):
        got.append((gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*args, **kwargs)
    torch._dynamo.reset()
    assert len(got) == 1
    return got[0]


@pytest.fixture(scope="module")
def dit_graph():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    return capture(model, x, torch.full((2,), 500.0), y)


def _tiny(family):
    tiny_models = pytest.importorskip("tiny_models")
    model, make_inputs = tiny_models.FAMILIES[family]()
    args, kwargs = make_inputs()
    return capture(model, *args, **kwargs)


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("raw,norm", [
    ("L['self'].__dict__['_modules']['transformer_blocks'].0.attn", "transformer_blocks.0.attn"),
    ("L['self'].transformer_blocks[0].attn", "transformer_blocks.0.attn"),
    ("L['self']._modules['blocks']['0']", "blocks.0"),
    ("getattr(L['self'].blocks, '0').attn", "blocks.0.attn"),
    ("L['self'].blocks.0.emb", "blocks.0.emb"),
    ("L['model'].layers[3]", "layers.3"),
    ("L['self']", ""),
])
def test_normalize_path(raw, norm):
    assert normalize_path(raw) == norm


# ---------------------------------------------------------------- regions

def test_plain_dit_stack_is_a_contiguous_run_from_block0_to_the_last_block(dit_graph):
    gm, _ = dit_graph
    assert block_lists(gm) == ["blocks"]
    (r,) = select_regions(gm, "stack")
    first, last = node_module_paths(r.nodes[0]), node_module_paths(r.nodes[-1])
    assert first[0][0] == "blocks.0.emb" and last[0][0] == "blocks.2"
    order = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    i0 = order.index(r.nodes[0])
    assert order[i0:i0 + len(r.nodes)] == r.nodes          # contiguous
    after = order[i0 + len(r.nodes):]
    # block 0's embedder is called again by the final layer after the last block: not in the region
    assert any(node_module_paths(n) and node_module_paths(n)[0][0] == "blocks.0.emb" for n in after)


def test_plain_dit_modules_and_patterns(dit_graph):
    gm, _ = dit_graph
    names = [r.name for r in select_regions(gm, "modules")]
    assert names == [f"blocks.{i}.{m}" for i in range(3) for m in ("attn", "mlp")]
    names = [r.name for r in select_regions(gm, r"blocks\.0\.emb")]
    assert names == ["blocks.0.emb", "blocks.0.emb#1"]                  # two separate calls, two regions
    assert [r.name for r in select_regions(gm, lambda p: p == "final_layer")] == ["final_layer"]


def test_no_region_errors_name_what_was_seen(dit_graph):
    gm, _ = dit_graph
    with pytest.raises(NoRegionError, match="matched no module path.*blocks.0") as e:
        select_regions(gm, r"nothing\.here")
    assert e.value.has_blocks
    flat = capture(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), torch.randn(2, 4))[0]
    with pytest.raises(NoRegionError, match="no block list") as e:
        select_regions(flat, "stack")
    assert not e.value.has_blocks
    with pytest.raises(ValueError, match="regions"):
        select_regions(gm, 42)


def test_flux_stack_spans_double_and_single_blocks_and_rope_moves_in():
    gm, ex = _tiny("flux")
    assert block_lists(gm) == ["transformer_blocks", "single_transformer_blocks"]
    (r,) = select_regions(gm, "stack")
    assert node_module_paths(r.nodes[0])[0][0] == "transformer_blocks.0"
    assert node_module_paths(r.nodes[-1])[0][0] == "single_transformer_blocks.1"
    split_gm, infos, _ = split(gm, [r])
    sub = getattr(split_gm, infos[0].submod)
    inputs = [n.name for n in sub.graph.nodes if n.op == "placeholder"]
    # the rotary embedding (computed from img_ids/txt_ids, used only by the blocks) moved into the stack
    assert "l_kwargs_img_ids_" in inputs and "l_kwargs_txt_ids_" in inputs


def test_hunyuan_video_stack_excludes_nested_refiner_list():
    gm, _ = _tiny("hunyuan_video")
    assert block_lists(gm) == ["transformer_blocks", "single_transformer_blocks"]


def test_pixart_modules_names():
    gm, _ = _tiny("pixart")
    names = [r.name for r in select_regions(gm, "modules")]
    assert names == [f"transformer_blocks.{i}.{m}" for i in range(2) for m in ("attn1", "attn2", "ff")]


# ---------------------------------------------------------------- timestep

def test_find_timestep_matches_whole_names_only(dit_graph):
    gm, _ = dit_graph
    assert find_timestep(gm).name == "l_timestep_"
    assert find_timestep(gm, timestep_arg="y").name == "l_y_"
    assert find_timestep(gm, timestep_arg="nope") is None


def test_find_timestep_kwargs_and_not_parameters():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.timestep_embedder = torch.nn.Linear(1, 4)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

        def forward(self, x, **kwargs):
            return self.blocks[0](x + self.timestep_embedder(kwargs["sigma"][:, None]))

    gm, _ = capture(M(), torch.randn(2, 4), sigma=torch.ones(2))
    assert find_timestep(gm).name == "l_kwargs_sigma_"
    gm, _ = capture(M(), torch.randn(2, 4), sigma=torch.ones(2))
    params = [n.name for n in gm.graph.nodes if n.op == "placeholder" and "timestep" in n.name]
    assert params and find_timestep(gm, timestep_arg="timestep") is None


# ---------------------------------------------------------------- partition and split

def test_prefix_nodes_used_only_by_a_region_move_into_it(dit_graph):
    gm, _ = dit_graph
    (r,) = select_regions(gm, "stack")
    pid, region_pid = plan_partitions(gm, [r])
    conv = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.conv2d)
    assert pid[conv] == region_pid[0]                      # patch embedding: used only by the stack
    expand = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "expand")
    assert pid[expand] != region_pid[0]                    # timestep: also used after the stack
    (rr,) = select_regions(gm, "stack-residual")
    pid, region_pid = plan_partitions(gm, [rr])
    h = next(n for n in gm.graph.nodes if n.name == "h")
    assert pid[h] != region_pid[0] and pid[conv] != region_pid[0]   # the residual base h stays out


def test_tuple_nodes_and_their_getitems_share_a_piece(dit_graph):
    gm, _ = dit_graph
    regions = select_regions(gm, "modules")
    pid, _ = plan_partitions(gm, regions)
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is operator.getitem and n.args[0] in pid:
            ev = n.args[0].meta.get("example_value")
            if isinstance(ev, (tuple, list)):
                assert pid[n] == pid[n.args[0]]


def test_split_pieces_carry_dynamo_metadata(dit_graph):
    gm, ex = dit_graph
    regions = select_regions(gm, "modules")
    split_gm, infos, submod_region = split(gm, regions)
    assert [i.index for i in infos] == list(range(6)) and len(submod_region) == 6
    for name in split_gm.meta["partition_names"]:
        sub = getattr(split_gm, name)
        assert sub.meta.get("dynamo_compile_id") == gm.meta["dynamo_compile_id"]
        assert sub._param_name_to_source is gm._param_name_to_source
        for n in sub.graph.find_nodes(op="placeholder"):
            if n.name.startswith("l_self_"):
                assert n._dynamo_source is not None       # parameters stay static inputs
    info = infos[0]
    sub = getattr(split_gm, info.submod)
    phs = list(sub.graph.find_nodes(op="placeholder"))
    assert all(not phs[i].name.startswith("l_self_") for i in info.dynamic_inputs)
    # the split graph computes what the original does
    with torch.no_grad():
        torch.testing.assert_close(split_gm(*ex), gm(*ex), rtol=0, atol=0)


def test_residual_map_points_at_the_stack_input(dit_graph):
    gm, _ = dit_graph
    split_gm, infos, _ = split(gm, select_regions(gm, "stack-residual"))
    sub = getattr(split_gm, infos[0].submod)
    phs = list(sub.graph.find_nodes(op="placeholder"))
    assert {k: phs[v].name for k, v in infos[0].residual.items()} == {0: "h"}
