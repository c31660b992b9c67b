"""Train the digits demo: the class-conditional DiT (rectified flow) and the digit classifier, or the
FLUX model (``--model flux``: a diffusers ``FluxTransformer2DModel``, see ``flux_model.py``).

    python -m taylorseer_fx.demo.train                     # reproduces the shipped DiT + classifier, in ./
    python -m taylorseer_fx.demo.train --steps 200 --out /tmp/dit.safetensors --skip-classifier
    python -m taylorseer_fx.demo.train --model flux        # reproduces ./flux_digits (the FLUX model)

Rectified flow as in SD3 / FLUX: x_t = (1 - sigma) x0 + sigma eps, target v = eps - x0, sigma from a
logit-normal(0, 1); 10% of the labels are replaced by the null class (classifier-free guidance).
AdamW with linear warm-up and cosine decay, EMA of the weights (the EMA is what is saved).
Single-threaded and seeded: the same command on the same machine gives the same weights, byte for byte.

Shipped weights: 1800 steps at batch 64 took 18 min on one thread of a shared 2-vCPU machine (final
loss 0.134); the classifier (40 epochs, ~40 s) is 99.7% accurate on the 20% held-out real digits.
Samples at 50 steps, CFG 2: 100% of 500 (50 per class) recognised by the classifier (also at 20 steps).

FLUX model (``--model flux``, ``flux_train.py``): FluxTransformer2DModel with 2 double + 4 single
blocks, 3 heads x 32, joint/pooled dim 32, 1.30 M parameters (5.2 MB); 1800 steps at batch 64, final
loss 0.131, 1035 s of CPU time on one thread (1719 s wall on the shared 2-vCPU machine under a load
average of 4-5; 0.68 s/step = 20 min when less loaded). Samples through FluxPipeline at 28 steps,
true CFG 3: 100% of 300 (30 per class) recognised by the classifier.
The classifier is not retrained with ``--model flux`` (the shipped one scores the samples).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import RESOLUTION, load_digits, split_indices
from .model import DigitClassifier, DigitDiT, DiTConfig
from .sampling import CLASSIFIER_FILE, MODEL_FILE, sample, save_weights, weights_path

DIT_STEPS = 1800
FLUX_STEPS = 1800
FLUX_DIR = "flux_digits"          # = flux_model.FLUX_DIR (not imported: flux_model needs diffusers)
FLUX_EVAL_PER_CLASS = 30
FLUX_EVAL_CFG = 3.0


def _shift_augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random integer translations (zero = background -1 padding) for the classifier."""
    b = x.shape[0]
    pad = max_shift
    xp = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def train_classifier(epochs: int = 40, seed: int = 0, log_every: int = 10) -> tuple[DigitClassifier, float]:
    """Train the CNN on the 80% train split; return it and its accuracy on the 20% held out."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    images, labels = load_digits(RESOLUTION)
    tr, te = split_indices(len(labels), 0.2, seed=0)
    clf = DigitClassifier(sample_size=RESOLUTION)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 64
    steps_per_epoch = math.ceil(len(tr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    for ep in range(epochs):
        clf.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        total = 0.0
        for j in range(0, len(perm), batch):
            idx = perm[j:j + batch]
            x = _shift_augment(images[idx], g)
            x = x + 0.1 * torch.randn(x.shape, generator=g)  # robustness to slightly noisy samples
            loss = F.cross_entropy(clf(x), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (ep + 1) % log_every == 0 or ep == epochs - 1:
            acc = classifier_test_accuracy(clf, images[te], labels[te])
            print(f"[classifier] epoch {ep + 1}/{epochs} loss {total / len(tr):.4f} held-out acc {acc:.4f}", flush=True)
    clf.eval()
    return clf, classifier_test_accuracy(clf, images[te], labels[te])


@torch.no_grad()
def classifier_test_accuracy(clf: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    was = clf.training
    clf.eval()
    acc = float((clf(x).argmax(1) == y).float().mean())
    clf.train(was)
    return acc


def train_dit(
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 100,
    ema_decay: float = 0.998,
    label_dropout: float = 0.1,
    sigma_sampling: str = "logit_normal",
    seed: int = 0,
    config: DiTConfig | None = None,
    log_every: int = 50,
) -> tuple[DigitDiT, list[float]]:
    """Train the DiT; return the EMA model (eval mode) and the per-log-interval mean losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    config = config or DiTConfig(sample_size=RESOLUTION)
    images, labels = load_digits(config.sample_size)
    n = len(labels)
    model = DigitDiT(config)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay_params = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embed" not in name]
    other_params = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in name)]
    opt = torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": 0.01}, {"params": other_params, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.99),
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"[dit] {config} params {n_params} steps {steps} batch {batch_size} lr {lr} "
          f"sigma {sigma_sampling}", flush=True)
    perm = torch.randperm(n, generator=g)
    pos = 0
    losses: list[float] = []
    running, count = 0.0, 0
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        x0 = images[idx]
        y = labels[idx].clone()
        drop = torch.rand(len(idx), generator=g) < label_dropout
        y[drop] = config.num_classes
        eps = torch.randn(x0.shape, generator=g)
        if sigma_sampling == "logit_normal":
            sigma = torch.sigmoid(torch.randn(len(idx), generator=g))
        elif sigma_sampling == "uniform":
            sigma = torch.rand(len(idx), generator=g)
        else:
            raise ValueError(f"unknown sigma_sampling {sigma_sampling!r}")
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * eps
        target = eps - x0
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        pred = model(xt, sigma, y)
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        running += float(loss.detach())
        count += 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            losses.append(running / count)
            el = time.perf_counter() - t0
            print(f"[dit] step {step + 1}/{steps} loss {running / count:.4f} lr {lr_at(step):.2e} "
                  f"elapsed {el:.0f}s ({el / (step + 1):.3f}s/step)", flush=True)
            running, count = 0.0, 0
    return ema, losses


@torch.no_grad()
def sample_accuracy(model: DigitDiT, clf: DigitClassifier, per_class: int = 50, num_steps: int = 50,
                    cfg_scale: float = 2.0, seed: int = 0, chunk: int = 250) -> float:
    """Fraction of class-conditional samples that the classifier labels as their class."""
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for j in range(0, len(labels), chunk):
        lab = labels[j:j + chunk]
        x = sample(model, lab, num_steps=num_steps, cfg_scale=cfg_scale, generator=g)
        correct += int((clf(x).argmax(1) == lab).sum())
    return correct / len(labels)


def parser() -> argparse.ArgumentParser:
    """The command line. Weights go where ``--out`` / ``--classifier-out`` say, by default into the
    working directory: never over the files shipped inside the installed package."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["dit", "flux"], default="dit",
                    help="dit (default): the custom DiT + classifier; flux: the diffusers FluxTransformer2DModel")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"optimisation steps (default {DIT_STEPS} for dit, {FLUX_STEPS} for flux)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sigma-sampling", choices=["logit_normal", "uniform"], default="logit_normal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"DiT weights file (default ./{MODEL_FILE}; the shipped one is {weights_path(MODEL_FILE)}); "
                         f"with --model flux the diffusers folder (default ./{FLUX_DIR})")
    ap.add_argument("--classifier-out", type=Path, default=Path(CLASSIFIER_FILE),
                    help=f"classifier weights file (default ./{CLASSIFIER_FILE})")
    ap.add_argument("--classifier-epochs", type=int, default=40)
    ap.add_argument("--skip-classifier", action="store_true", help="do not train/save the classifier")
    ap.add_argument("--skip-dit", action="store_true", help="do not train/save the DiT")
    ap.add_argument("--eval", action="store_true",
                    help="after training, report classifier accuracy of 500 samples (50 steps, CFG 2); "
                         f"flux: of {FLUX_EVAL_PER_CLASS * 10} samples through FluxPipeline (28 steps, "
                         f"true CFG {FLUX_EVAL_CFG})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return ap


def weights_out(args) -> Path:
    """Where the model's weights go: ``--out``, else ``./<shipped name>`` (the DiT file, or the Flux
    folder with ``--model flux``) in the working directory."""
    if args.out is not None:
        return args.out
    return Path(FLUX_DIR) if args.model == "flux" else Path(MODEL_FILE)


def main_flux(args) -> None:
    """``--model flux``: train, save the diffusers folder + label table, optionally evaluate."""
    from .flux_model import LABEL_TABLE_FILE, save_label_table, save_transformer
    from .flux_train import train_flux

    out = weights_out(args)
    steps = args.steps if args.steps is not None else FLUX_STEPS
    ema, table, losses, secs = train_flux(steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    save_transformer(ema, out, steps=steps, batch_size=args.batch_size, final_loss=f"{losses[-1]:.4f}",
                     train_seconds=f"{secs:.0f}", threads=args.threads)
    save_label_table(table, out / LABEL_TABLE_FILE)
    print(f"[flux] trained in {secs:.0f}s, final loss {losses[-1]:.4f} -> {out}", flush=True)
    if args.eval:
        from .flux_pipeline import sample_accuracy as flux_accuracy
        from .sampling import load_classifier
        t0 = time.perf_counter()
        acc = flux_accuracy(ema, table, load_classifier(), per_class=FLUX_EVAL_PER_CLASS, num_steps=28,
                            cfg_scale=FLUX_EVAL_CFG)
        print(f"[eval] FluxPipeline sample accuracy (28 steps, true CFG {FLUX_EVAL_CFG}, "
              f"{FLUX_EVAL_PER_CLASS * 10} samples): {acc:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "flux":
        main_flux(args)
        return
    args.steps = args.steps if args.steps is not None else DIT_STEPS
    args.out = weights_out(args)

    clf = None
    if not args.skip_classifier:
        t0 = time.perf_counter()
        clf, acc = train_classifier(epochs=args.classifier_epochs, seed=args.seed)
        save_weights(clf, args.classifier_out, clf.config, heldout_accuracy=f"{acc:.4f}")
        print(f"[classifier] held-out accuracy {acc:.4f} ({time.perf_counter() - t0:.0f}s) -> {args.classifier_out}",
              flush=True)
    if not args.skip_dit:
        t0 = time.perf_counter()
        ema, losses = train_dit(args.steps, batch_size=args.batch_size, lr=args.lr,
                                sigma_sampling=args.sigma_sampling, seed=args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_weights(ema, args.out, ema.config.to_dict(), steps=str(args.steps),
                     final_loss=f"{losses[-1]:.4f}")
        print(f"[dit] trained in {time.perf_counter() - t0:.0f}s, final loss {losses[-1]:.4f} -> {args.out}",
              flush=True)
        if args.eval:
            from .sampling import load_classifier
            clf = clf if clf is not None else load_classifier()
            for steps in (50, 20):
                acc = sample_accuracy(ema, clf, num_steps=steps)
                print(f"[eval] sample accuracy ({steps} steps, CFG 2, 500 samples): {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
