"""Which FX nodes form a region: the parts of a dynamo graph that are computed or forecast.

Knows nothing of runtime state. Works on the ``GraphModule`` dynamo hands a backend (torch 2.13):
every ``call_*`` node carries ``node.meta["nn_module_stack"]`` (outermost module first) whose
entries are ``(path, class)`` with paths such as
``L['self'].__dict__['_modules']['transformer_blocks'].0.attn`` or ``L['self'].blocks[0].attn``;
:func:`normalize_path` turns them into ``transformer_blocks.0.attn``.

Region kinds (see :func:`select_regions`):

``stack`` / ``stack-residual``
    From the first node of the first block to the last node of the last block of the model's block
    list(s) (``transformer_blocks``, ``single_transformer_blocks``, ``blocks``, ``layers`` ...; several
    lists in sequence, as Flux's double and single blocks, form one stack). The residual variant is
    the same node set; the runtime forecasts (output - input) for outputs shaped like an input
    (:func:`warn_unpaired_residual` warns where none is: the stack output itself is forecast).
``modules``
    Per block, the outputs of its attention and feed-forward children (``attn``, ``attn1``,
    ``self_attention``, ``audio_attn1``, ``ff``, ``ff_context``, ``txt_ff``, ``ffn``, ``mlp``, ``img_mlp``,
    ``proj_mlp``, ``down_proj`` ...: :data:`~taylorseer_fx.graph.module_names.MODULE_NAMES`). Norms,
    modulation gates, activations and residual adds stay outside.
a regex string or a ``callable(path) -> bool``
    Every call of a module whose normalised path matches (``re.fullmatch``; the shallowest match
    wins) is a region.

A region is always a contiguous run of ``call_*`` nodes in graph order (placeholders and
``get_attr`` nodes are ignored): a module called again later (DiT's final layer reuses block 0's
embedder after the last block) does not pull the later nodes into the region.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

from torch import fx

from .module_names import BLOCK_LIST_NAME, CONDITIONING, EMBEDDING, is_module_name

__all__ = [
    "KINDS", "ALIASES", "Region", "NoRegionError", "normalize_path", "node_module_paths", "block_lists",
    "select_regions", "warn_unpaired_residual",
]

KINDS = ("stack", "stack-residual", "modules", "output")
#: other names of the kinds: ``"lite"`` is what OpenVINO TaylorSeer Lite and diffusers' lite mode forecast:
#: the model's final output (after ``norm_out`` / ``proj_out``)
ALIASES = {"lite": "output"}


class NoRegionError(ValueError):
    """The region selection resolved to no region in a graph.

    ``has_blocks`` tells whether the graph contained any block list at all (a graph without blocks,
    e.g. a graph-break fragment, is run unchanged by the backend; a graph with blocks but no match
    is a configuration error)."""

    def __init__(self, msg: str, has_blocks: bool):
        super().__init__(msg)
        self.has_blocks = has_blocks


@dataclass
class Region:
    """A contiguous run of ``call_*`` nodes of one graph.

    ``name``: normalised module path (``stack`` for the stack kinds; a suffix ``#k`` for the k-th
    further call of the same module); ``nodes`` in graph order; ``residual``: forecast output - input.
    """
    name: str
    nodes: list = field(default_factory=list)
    residual: bool = False

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Region({self.name!r}, {len(self.nodes)} nodes, residual={self.residual})"


# ---------------------------------------------------------------- paths

_SUBS = [
    (re.compile(r"\.__dict__\[(['\"])_modules\1\]"), ""),
    (re.compile(r"\._modules\b"), ""),
    (re.compile(r"\[(['\"])([^'\"]*)\1\]"), r".\2"),
    (re.compile(r"\[(\d+)\]"), r".\1"),
]
_ROOT = re.compile(r"^(?:[LG]\[(['\"])[^'\"]*\1\]|self)")
#: ``forward.__self__`` (and ``forward.func.__closure__.0.cell_contents.forward.__self__``) hops that
#: dynamo records through a module whose forward a hook replaced: the module itself
_HOOK_HOPS = re.compile(r"(?:^|(?<=\.))forward(?:\.func\.__closure__\.\d+\.cell_contents\.forward)*\.__self__(?:\.|$)")
_GETATTR = re.compile(r"getattr\((.*), (['\"])([^'\"]*)\2\)")


def normalize_path(path: str) -> str:
    """``L['self'].__dict__['_modules']['transformer_blocks'].0.attn`` -> ``transformer_blocks.0.attn``.

    Also ``L['self'].transformer_blocks[0].attn``, ``L['self']._modules['blocks']['0']`` and
    ``getattr(L['self'].blocks, '0')`` forms; the root (``L['self']``, ``L['model']`` ...) is dropped, and
    so are the ``forward.__self__`` hops through modules whose forward a hook replaced."""
    p = str(path).strip()
    while True:
        q = _GETATTR.sub(r"\1.\3", p)
        if q == p:
            break
        p = q
    p = _ROOT.sub("", p, count=1)
    for rx, rep in _SUBS:
        p = rx.sub(rep, p)
    p = _HOOK_HOPS.sub("", p)      # a hooked module's forward (diffusers' HookRegistry, context parallelism)
    p = re.sub(r"\.{2,}", ".", p).strip(".")
    return p


def _entry_path(value) -> str:
    if isinstance(value, (tuple, list)) and value:
        return str(value[0])
    return str(value)


def _entry_cls(value):
    if isinstance(value, (tuple, list)) and len(value) > 1:
        return value[1]
    return None


def node_module_paths(node: fx.Node) -> list[tuple[str, object]]:
    """``[(normalised path, class), ...]`` of a node's module stack, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        p = normalize_path(_entry_path(value))
        if p:
            out.append((p, _entry_cls(value)))
    return out


def _is_builtin_leaf(cls) -> bool:
    mod = getattr(cls, "__module__", None) if not isinstance(cls, str) else cls
    return isinstance(mod, str) and mod.startswith("torch.nn.modules")


def _compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]


def _block_of(paths) -> tuple[str, int, int] | None:
    """(list path, index, depth in stack) of the shallowest ``<list>.<int>`` path prefix, else None.

    A prefix equal to an entry's whole path counts only when that module is not a ``torch.nn``
    builtin (``Sequential`` children like ``mlp.0`` are not blocks) or the list is named ``*blocks`` /
    ``*layers`` (a ModuleList of Linear layers named ``layers`` is a stack); a proper prefix is a module with
    children, so it counts (block 0's embedder called from the model's forward belongs to block 0)."""
    for depth, (p, cls) in enumerate(paths):
        comps = p.split(".")
        for k in range(1, len(comps)):
            if not comps[k].isdigit():
                continue
            if k == len(comps) - 1 and _is_builtin_leaf(cls) and not BLOCK_LIST_NAME.match(comps[k - 1]):
                break
            return ".".join(comps[:k]), int(comps[k]), depth
    return None


def block_lists(gm: fx.GraphModule) -> list[str]:
    """The ModuleList paths that hold the model's repeated blocks, in graph order.

    Candidates are lists whose items are non-``torch.nn`` modules (``<list>.<int>`` paths). Lists named
    ``*blocks`` / ``*layers`` are preferred, an unnamed list needs two of its items in the graph; among
    the chosen ones only the shallowest (fewest path components) are kept, and lists inside a refiner,
    embedder, projector or encoder module never count, so conditioning blocks (HunyuanVideo's token
    refiner, also in a graph of its own after a graph break) do not become the stack."""
    first_seen: dict[str, int] = {}
    items: dict[str, set] = {}
    for i, n in enumerate(_compute_nodes(gm)):
        b = _block_of(node_module_paths(n))
        if b is None:
            continue
        lst, idx, _ = b
        first_seen.setdefault(lst, i)
        items.setdefault(lst, set()).add(idx)
    items = {l: v for l, v in items.items() if not CONDITIONING.search(l)}
    if not items:
        return []
    named = [l for l in items if BLOCK_LIST_NAME.match(l.rsplit(".", 1)[-1])]
    # an unnamed list is a stack only with two or more of its items in the graph: a feed-forward's
    # ``ff.net.0`` in the graph of one block's body (a graph break inside the block loop) is not
    pool = named or [l for l in items if len(items[l]) >= 2]
    if not pool:
        return []
    depth = min(l.count(".") for l in pool)
    chosen = [l for l in pool if l.count(".") == depth]
    return sorted(chosen, key=lambda l: first_seen[l])


def _runs(nodes: Sequence[fx.Node], key: Callable[[fx.Node], str | None]) -> list[tuple[str, list]]:
    """Maximal contiguous runs of nodes with the same non-None key."""
    runs: list[tuple[str, list]] = []
    cur_key, cur = None, []
    for n in nodes:
        k = key(n)
        if k is not None and k == cur_key:
            cur.append(n)
            continue
        if cur_key is not None:
            runs.append((cur_key, cur))
        cur_key, cur = k, ([n] if k is not None else [])
    if cur_key is not None:
        runs.append((cur_key, cur))
    return runs


def _name_runs(runs) -> list[Region]:
    seen: dict[str, int] = {}
    out = []
    for k, nodes in runs:
        c = seen.get(k, 0)
        seen[k] = c + 1
        out.append(Region(k if c == 0 else f"{k}#{c}", list(nodes)))
    return out


def _seen_paths(gm: fx.GraphModule, limit: int = 12) -> str:
    tops: list[str] = []
    for n in _compute_nodes(gm):
        paths = node_module_paths(n)
        for p, _ in paths[:2]:
            if p not in tops:
                tops.append(p)
    more = f" (+{len(tops) - limit} more)" if len(tops) > limit else ""
    return ", ".join(tops[:limit]) + more if tops else "<none: no node carries nn_module_stack>"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def describe_graph(gm: fx.GraphModule) -> str:
    """Which graph this is, for messages: dynamo's compile id and the model code it was traced from
    (the outermost frame of its first node's stack trace), e.g. ``graph 0/1 (transformer_flux.py:450
    in forward)``."""
    where = ""
    for n in gm.graph.nodes:
        m = _FRAME.search(n.meta.get("stack_trace") or "")
        if m:
            where = f" ({m.group(1).rsplit('/', 1)[-1]}:{m.group(2)} in {m.group(3)})"
            break
    return f"graph {gm.meta.get('dynamo_compile_id', '?')}{where}"


def _in_embedding(n: fx.Node, lists) -> bool:
    """Whether ``n`` is inside an embedding module that a block owns (``blocks.0.emb``,
    ``transformer_blocks.0.norm1.emb``): conditioning computed by a block, not the block's work."""
    for p, _ in node_module_paths(n):
        parts = p.split(".")
        for i in range(len(parts) - 2):
            if ".".join(parts[:i + 1]) in lists and parts[i + 1].isdigit():
                return any(EMBEDDING.fullmatch(c) for c in parts[i + 2:])
    return False


def _block_item(lists) -> re.Pattern:
    """``<block list>.<index>.<child>`` for the graph's block lists (the child in group 1)."""
    return re.compile(r"(?:%s)\.\d+\.([^.]+)" % "|".join(re.escape(l) for l in lists))


def _block_module(n: fx.Node, item: re.Pattern) -> str | None:
    """The path of the block attention / feed-forward module ``n`` belongs to, or None."""
    for p, _ in node_module_paths(n):
        m = item.fullmatch(p)
        if m and is_module_name(m.group(1)):
            return p
    return None


def _stack_span(nodes: list, lists: list, kind: str, gm: fx.GraphModule) -> tuple[int, int]:
    """Indices (in ``nodes``) of the first and last node of the block stack: from the first block's
    first node to the last block's last node. NoRegionError where the graph has no block stack."""
    if not lists:
        raise NoRegionError(
            f"regions={kind!r}: no block list (ModuleList of repeated blocks such as transformer_blocks, "
            f"blocks, layers) found in this graph; module paths seen: {_seen_paths(gm)}", has_blocks=False)
    chosen = set(lists)
    keys = []
    for n in nodes:
        b = _block_of(node_module_paths(n))
        keys.append((b[0], b[1]) if b is not None and b[0] in chosen else None)
    if all(k is None or _in_embedding(n, chosen) for n, k in zip(nodes, keys)):
        seen = sorted({p for n, k in zip(nodes, keys) if k is not None for p, _ in node_module_paths(n)[:1]})
        raise NoRegionError(
            f"regions={kind!r}: the only block nodes of this graph ({', '.join(seen[:6])}) are embeddings "
            "a block owns (a graph break after the conditioning): not a block stack", has_blocks=False)
    first_node: dict[tuple, int] = {}
    for i, k in enumerate(keys):
        if k is not None:
            first_node.setdefault(k, i)
    start = min(first_node.values())
    last_block = max(first_node, key=first_node.get)
    end = first_node[last_block]
    for j in range(end + 1, len(nodes)):
        if keys[j] == last_block:
            end = j
        elif keys[j] is not None:
            break
    return start, end


def select_regions(gm: fx.GraphModule, kind) -> list[Region]:
    """Regions of ``gm`` for ``kind`` ("stack", "stack-residual", "output", "modules", a regex or a callable).

    Returns non-overlapping regions ordered by graph position. Raises :class:`NoRegionError`
    (a ValueError naming the module paths seen) when nothing is selected, and ValueError for an
    unknown kind."""
    nodes = _compute_nodes(gm)
    lists = block_lists(gm)
    if isinstance(kind, str) and kind in ("stack", "stack-residual", "output"):
        start, end = _stack_span(nodes, lists, kind, gm)
        if kind == "output":            # from the first block to the graph's end: norm_out, proj_out ...
            end = len(nodes) - 1
        return [Region(kind if kind == "output" else "stack", nodes[start:end + 1],
                       residual=(kind == "stack-residual"))]
    if isinstance(kind, str) and kind == "modules":
        if not lists:
            raise NoRegionError(
                f"regions='modules': no block list found in this graph; module paths seen: {_seen_paths(gm)}",
                has_blocks=False)
        item = _block_item(lists)
        regions = _name_runs(_runs(nodes, lambda n: _block_module(n, item)))
        if not regions:
            raise NoRegionError(
                "regions='modules': the blocks have no attention/feed-forward submodule "
                f"(names like attn, attn1, ff, ff_context, mlp, proj_mlp); module paths seen: {_seen_paths(gm)}",
                has_blocks=True)
        return regions
    if isinstance(kind, str):
        if kind in KINDS:  # pragma: no cover
            raise AssertionError(kind)
        try:
            rx = re.compile(kind)
        except re.error as e:
            raise ValueError(f"regions={kind!r} is neither one of {KINDS} nor a valid regex: {e}") from None
        pred = lambda p: rx.fullmatch(p) is not None  # noqa: E731
        label = f"regions={kind!r}"
    elif callable(kind):
        pred = kind
        label = f"regions={getattr(kind, '__name__', kind)!r}"
    else:
        raise ValueError(f"regions must be one of {KINDS}, a regex string or a callable(path) -> bool; got {kind!r}")

    cache: dict[str, bool] = {}

    def key(n):
        for p, _ in node_module_paths(n):
            if p not in cache:
                cache[p] = bool(pred(p))
            if cache[p]:
                return p
        return None

    regions = _name_runs(_runs(nodes, key))
    if not regions:
        raise NoRegionError(f"{label} matched no module path in this graph; module paths seen: {_seen_paths(gm)}",
                            has_blocks=bool(lists))
    return regions


def warn_unpaired_residual(gm: fx.GraphModule, regions: Sequence[Region], infos) -> None:
    """Warn (once for the graph) where a residual region (``stack-residual``) pairs no output with an
    input: none of its outputs has the shape and dtype of one of its inputs, so each output is forecast
    itself, as with ``stack``. ``infos``: the split's ``RegionInfo`` (``.index``, ``.residual``)."""
    if any(regions[i.index].residual and not i.residual for i in infos):
        warnings.warn(f"taylorseer: regions='stack-residual': {describe_graph(gm)} has no residual input of the same "
                      "shape as a stack output; forecasting the stack output itself, as regions='stack' does",
                      UserWarning, stacklevel=3)
