"""Training loop of the FLUX digits model (rectified flow, class-conditional through the label table).

Called by ``python -m taylorseer_fx.demo.train --model flux``. Same recipe as the DiT (``train.py``):
x_sigma = (1 - sigma) x0 + sigma eps, target v = eps - x0, sigma ~ logit-normal(0, 1) (flow time in
[0, 1], passed to the model as its ``timestep``), labels replaced by the null label 10 with
probability ``label_dropout``, AdamW with warm-up + cosine decay, gradient clipping, EMA of the weights
(the EMA is what is saved). Images are packed into FLUX tokens with :func:`.flux_model.pack`.
Seeded and single-threaded: reproducible on one machine.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F

from .data import RESOLUTION, load_digits
from .flux_model import (NULL_LABEL, build_transformer, condition, flux_config, image_ids, make_label_table, pack,
                         text_ids)

__all__ = ["train_flux"]


def train_flux(
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 100,
    ema_decay: float = 0.998,
    label_dropout: float = 0.1,
    seed: int = 0,
    config: dict | None = None,
    table: dict | None = None,
    log_every: int = 50,
    max_seconds: float | None = None,
):
    """Train; return ``(ema_model (eval), label_table, per-log-interval mean losses, seconds)``
    (wall-clock seconds; the log lines also show this process's CPU seconds, ``cpu``, which on a
    shared machine is the better measure of one thread's work).

    ``steps`` counts optimiser steps; ``max_seconds`` (optional) stops early with the cosine schedule
    unchanged (only for pilots: a stopped run is not the full schedule)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    config = config or flux_config()
    table = table if table is not None else make_label_table()
    images, labels = load_digits(RESOLUTION)
    x_all = pack(images)                                  # [N, 64, 4]
    n = len(labels)
    model = build_transformer(config, seed=seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    named = list(model.named_parameters())
    decay = [p for name, p in named if p.ndim >= 2 and "embed" not in name]
    other = [p for name, p in named if not (p.ndim >= 2 and "embed" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    img_ids, txt_ids = image_ids(), text_ids()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[flux] {config} params {n_params} steps {steps} batch {batch_size} lr {lr}", flush=True)
    perm = torch.randperm(n, generator=g)
    pos = 0
    losses: list[float] = []
    running, count = 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    for step in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        x0 = x_all[idx]
        y = labels[idx].clone()
        y[torch.rand(len(idx), generator=g) < label_dropout] = NULL_LABEL
        eps = torch.randn(x0.shape, generator=g)
        sigma = torch.sigmoid(torch.randn(len(idx), generator=g))
        s = sigma[:, None, None]
        xt = (1 - s) * x0 + s * eps
        pe, pooled = condition(y, table)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        pred = model(hidden_states=xt, encoder_hidden_states=pe, pooled_projections=pooled, timestep=sigma,
                     img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = F.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe_, pm in zip(ema.parameters(), model.parameters()):
                pe_.lerp_(pm, 1 - d)
        running += float(loss.detach())
        count += 1
        el = time.perf_counter() - t0
        last = step == steps - 1 or (max_seconds is not None and el > max_seconds)
        if (step + 1) % log_every == 0 or last:
            losses.append(running / count)
            print(f"[flux] step {step + 1}/{steps} loss {running / count:.4f} lr {lr_at(step):.2e} "
                  f"elapsed {el:.0f}s ({el / (step + 1):.3f}s/step) cpu {time.process_time() - c0:.0f}s", flush=True)
            running, count = 0.0, 0
        if last:
            break
    return ema, table, losses, time.perf_counter() - t0
