"""Names of modules that the region kinds of :mod:`taylorseer_fx.graph.select` look for: block lists, the
attention / feed-forward children of a block (the ``modules`` kind), conditioning and embedding modules."""

from __future__ import annotations

import re

__all__ = ["BLOCK_LIST_NAME", "MODULE_NAMES", "NOT_MODULE_NAMES", "is_module_name", "CONDITIONING", "EMBEDDING"]

#: last path component of a ModuleList that holds the transformer blocks.
BLOCK_LIST_NAME = re.compile(r"(^|.*_)(blocks|layers)$")

#: names of the attention / feed-forward children of a block (the ``modules`` kind; ``fullmatch``): a core
#: name (``attn``, ``attention``, ``ff``, ``ffn``, ``feed_forward``, ``mlp``, maybe numbered) after qualifier
#: words (``self_``, ``cross_``, ``audio_``, ``txt_``, ``img_``, ``audio_to_video_`` ...) and before an
#: optional ``_context`` or one-letter stream suffix (``ff_i``, ``ff_t``); also ``proj_mlp`` (the MLP input
#: of a Flux-style single block) and ``down_proj`` (the output of a block's inline gated MLP: PRX's
#: ``down_proj(act(gate_proj(x)) * up_proj(x))``, whose other pieces move into that region)
MODULE_NAMES = re.compile(
    r"(?:[A-Za-z0-9]+_)*(?:attn|attention|ff|ffn|feed_forward|mlp)\d*(?:_context|_[a-z])?|proj_mlp|down_proj")
#: never a ``modules`` region (``search``): norms, modulation / adaLN, activations, embeddings, output
#: projections (``proj_out`` of a single block mixes the selected attention and MLP)
NOT_MODULE_NAMES = re.compile(r"(?i)norm|modulat|embed|(?:^|_)(?:adaln|ln|act|mod|emb|temb|time|out)(?:_|\d|$)")


def is_module_name(name: str) -> bool:
    """Whether a block child called ``name`` is an attention / feed-forward module (``modules`` kind)."""
    return MODULE_NAMES.fullmatch(name) is not None and NOT_MODULE_NAMES.search(name) is None


#: a block list inside one of these is conditioning (HunyuanVideo's / HunyuanImage's token refiner,
#: an embedder's layers), never the denoiser's block stack
CONDITIONING = re.compile(r"(?:^|\.)\w*(?:refiner|embedder|embedding|embed|projector|encoder)\w*\.", re.I)

#: a block child that computes conditioning (``blocks.0.emb``, ``transformer_blocks.0.norm1.emb``)
EMBEDDING = re.compile(r"(?:.*_)?(?:emb|embed|embedder|embedding|embeddings|time_proj|timestep\w*)(?:_.*)?", re.I)
