"""Several threads share one compiled model (a web server's worker pool): each request gets what it
would get alone, and the backend's cached state stays bounded.

    python examples/threads_server.py [--workers 4] [--requests 12] [--steps 20] [--inner eager]

Runs on the CPU with the shipped demo DiT (no download). Each request is one class-conditional digit
generation; requests run once sequentially, then concurrently on a thread pool, and the outputs are
compared bit for bit (``--inner eager``; inductor: allclose).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch

from taylorseer_fx import taylorseer_backend
from taylorseer_fx.demo import load_model, sample


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inner", default="eager")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    backend = taylorseer_backend("auto-balanced", inner=args.inner)
    model = torch.compile(load_model(), backend=backend)

    def request(k: int) -> torch.Tensor:
        with torch.no_grad():
            return sample(model, labels=[k % 10], num_steps=args.steps, seed=k)

    alone = [request(k) for k in range(args.requests)]            # also compiles
    with ThreadPoolExecutor(args.workers) as pool:
        together = list(pool.map(request, range(args.requests)))
    same = [torch.equal(a, b) if args.inner == "eager" else torch.allclose(a, b, atol=1e-5)
            for a, b in zip(alone, together)]
    s = backend.stats()
    print(f"{args.requests} requests on {args.workers} threads: {sum(same)}/{len(same)} equal to the "
          f"sequential run; {s['forecast']} of {s['steps']} steps forecast; "
          f"cached state held now: {backend.memory_bytes() / 1024:.0f} KiB")
    if not all(same):
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
