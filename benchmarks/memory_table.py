"""Cached-state memory per region kind for FLUX.1-dev and Wan 2.1 14B shapes, computed from the shapes.

Per cached output of ``n`` elements, one stream: ``(stored factors + 2 scratch) x n x 4`` bytes with
float32 factors (``factor_dtype``): ``order + 1`` factors for fixed policies, ``max_order + 1``
(``order + 2``) for order-selecting ones (``AutoPolicy``'s default); the 2 scratch buffers are float32.
CFG as two calls per step is two streams (double); a batch of B is B times the elements.
``--check`` builds a Forecaster on a small shape and checks ``memory_bytes()`` against the formula.

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
    """Elements cached per sample and stream: {(model, region kind): n}."""
    f, w = FLUX, WAN
    h, img, txt, both = f["hidden"], f["img"], f["txt"], f["img"] + f["txt"]
    flux_modules = f["dual"] * (img * h + txt * h + img * h + txt * h) + f["single"] * (both * h + both * 4 * h)
    wh, tok = w["hidden"], w["tokens"]
    return {("FLUX.1-dev 1024x1024", "stack"): img * h, ("FLUX.1-dev 1024x1024", "stack-residual"): img * h,
            ("FLUX.1-dev 1024x1024", "modules"): flux_modules,
            ("Wan 2.1 14B 720p 81 frames", "stack"): tok * wh, ("Wan 2.1 14B 720p 81 frames", "stack-residual"): tok * wh,
            ("Wan 2.1 14B 720p 81 frames", "modules"): w["blocks"] * 3 * tok * wh}


def per_element_bytes(factors: int, factor_bytes: int = 4) -> int:
    return factors * factor_bytes + 2 * 4


def check() -> None:
    for order, select in ((1, None), (2, None), (2, 1)):
        f = Forecaster(order, "newton", select=select)
        f.update(0.0, torch.zeros(3, 5, dtype=torch.bfloat16))
        want = 15 * per_element_bytes(order + 1)
        assert f.memory_bytes() == want, (order, select, f.memory_bytes(), want)


def rows() -> list[list]:
    out = []
    for (model, kind), n in elements().items():
        out.append([model, kind, f"{n / 1e6:.1f} M"] + [f"{n * per_element_bytes(k) / GIB:.2f}" for k in (2, 3)])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    check()
    print("| model | regions | cached elements (batch 1) | GiB, order 1 (fixed) | GiB, order 2 or auto (order 1 + selection) |")
    print("|---|---|---|---|---|")
    for r in rows():
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
