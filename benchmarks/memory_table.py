"""Cached-state memory per region kind for FLUX.1-dev and Wan 2.1 14B shapes, computed from the shapes.

Per cached output of ``n`` elements, one stream: ``stored factors x n x 4`` bytes with float32
factors (``factor_dtype``): ``order + 1`` factors for fixed policies, ``max_order + 1`` (``order + 2``)
for order-selecting ones (``AutoPolicy``'s default). Plus, once per generation, 2 float32 work buffers
as large as the largest single cached output (shared by every region). CFG as two calls per step is
two streams (double the factors); a batch of B is B times the elements.
``--check`` builds forecasters sharing one ``Scratch`` and checks ``memory_bytes()`` against the formula.

    python benchmarks/memory_table.py
"""

from __future__ import annotations

import argparse

import torch

from taylorseer_fx import Forecaster

GIB = 2 ** 30

# FLUX.1-dev at 1024x1024: 64x64 latent patches = 4096 image tokens, 512 text tokens, hidden 3072;
# 19 dual-stream blocks (attn -> image + text outputs, ff on image, ff_context on text), 38 single
# blocks on image + text tokens (attn and proj_mlp, 4 x 3072 wide). The stack's output: the image tokens.
FLUX = {"hidden": 3072, "img": 4096, "txt": 512, "dual": 19, "single": 38}
# Wan 2.1 14B at 1280x720, 81 frames: 21 x 45 x 80 = 75,600 tokens, hidden 5120, 40 blocks (attn1,
# attn2, ffn outputs, each tokens x hidden).
WAN = {"hidden": 5120, "tokens": 21 * 45 * 80, "blocks": 40}


def elements() -> dict:
    """Elements cached per sample and stream, and the largest single cached output:
    {(model, region kind): (n, largest)}."""
    f, w = FLUX, WAN
    h, img, txt, both = f["hidden"], f["img"], f["txt"], f["img"] + f["txt"]
    flux_modules = f["dual"] * (img * h + txt * h + img * h + txt * h) + f["single"] * (both * h + both * 4 * h)
    wh, tok = w["hidden"], w["tokens"]
    flux, wan = "FLUX.1-dev 1024x1024", "Wan 2.1 14B 720p 81 frames"
    return {(flux, "stack"): (img * h, img * h), (flux, "stack-residual"): (img * h, img * h),
            (flux, "modules"): (flux_modules, both * 4 * h),
            (wan, "stack"): (tok * wh, tok * wh), (wan, "stack-residual"): (tok * wh, tok * wh),
            (wan, "modules"): (w["blocks"] * 3 * tok * wh, tok * wh)}


def held_bytes(n: int, largest: int, factors: int, factor_bytes: int = 4) -> int:
    """Bytes of one generation: the factors of ``n`` cached elements and the shared work buffers."""
    return n * factors * factor_bytes + 2 * largest * 4


def check() -> None:
    from taylorseer_fx.forecast.buffers import Scratch
    shapes = [(3, 5), (7, 2), (4,)]
    for order, select in ((1, None), (2, None), (2, 1)):
        scratch = Scratch()
        fs = [Forecaster(order, "newton", select=select, scratch=scratch) for _ in shapes]
        for f, shape in zip(fs, shapes):
            f.update(0.0, torch.zeros(shape, dtype=torch.bfloat16))
        n = sum(a * b for a, b in ((3, 5), (7, 2), (4, 1)))
        got = sum(f.memory_bytes() for f in fs) + scratch.memory_bytes()
        want = held_bytes(n, 15, order + 1)
        assert got == want, (order, select, got, want)


def rows() -> list[list]:
    out = []
    for (model, kind), (n, largest) in elements().items():
        out.append([model, kind, f"{n / 1e6:.1f} M", f"{2 * largest * 4 / GIB:.2f}"]
                   + [f"{held_bytes(n, largest, k) / GIB:.2f}" for k in (2, 3)])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    check()
    print("| model | regions | cached elements (batch 1) | work buffers, GiB (in the totals) | GiB, order 1 (fixed) "
          "| GiB, order 2 or auto (order 1 + selection) |")
    print("|---|---|---|---|---|---|")
    for r in rows():
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
