"""Several requests share one compiled model -- on a thread pool, and as asyncio tasks interleaved in
one thread: each request gets what it would get alone, and the backend's cached state stays bounded.

    python examples/threads_server.py [--mode threads|asyncio|both] [--workers 4] [--requests 12]
                                      [--steps 20] [--inner eager]

Runs on the CPU with the shipped demo DiT (no download). Each request is one class-conditional digit
generation; requests run once sequentially, then concurrently, and the outputs are compared bit for
bit (``--inner eager``; inductor: allclose). Nothing in the request code names a request: threads and
asyncio tasks are told apart by the runtime (``asyncio`` mode: an ``await`` between the steps, so the
tasks' steps interleave in one thread).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch

from taylorseer_fx import taylorseer_backend
from taylorseer_fx.demo import load_model, sample, sigmas


async def async_request(model, label: int, steps: int, seed: int) -> torch.Tensor:
    """One generation as an asyncio task: Euler flow matching with batched CFG (scale 2), yielding to
    the event loop after every step."""
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    s = sigmas(steps)
    labels = torch.tensor([label, 10])
    for i in range(steps):
        with torch.no_grad():
            v = model(torch.cat([x, x]), torch.full((2,), float(s[i])), labels)
        vc, vu = v.chunk(2)
        x = x + (float(s[i + 1]) - float(s[i])) * (vu + 2.0 * (vc - vu))
        await asyncio.sleep(0)                    # another request's step runs here
    return x


def _report(what: str, alone, together, backend, inner: str) -> bool:
    same = [torch.equal(a, b) if inner == "eager" else torch.allclose(a, b, atol=1e-5)
            for a, b in zip(alone, together)]
    s = backend.stats()
    print(f"{len(same)} requests {what}: {sum(same)}/{len(same)} equal to the sequential run; "
          f"{s['forecast']} of {s['steps']} steps forecast; "
          f"cached state held now: {backend.memory_bytes() / 1024:.0f} KiB")
    return all(same)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("threads", "asyncio", "both"), default="both")
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

    ok = True
    if args.mode in ("threads", "both"):
        alone = [request(k) for k in range(args.requests)]            # also compiles
        with ThreadPoolExecutor(args.workers) as pool:
            together = list(pool.map(request, range(args.requests)))
        ok &= _report(f"on {args.workers} threads", alone, together, backend, args.inner)
    if args.mode in ("asyncio", "both"):
        backend.reset()
        jobs = [(k % 10, args.steps, k) for k in range(args.requests)]
        alone = [asyncio.run(async_request(model, *job)) for job in jobs]

        async def serve():
            return await asyncio.gather(*(async_request(model, *job) for job in jobs))
        together = asyncio.run(serve())
        ok &= _report("as asyncio tasks in one thread", alone, together, backend, args.inner)
    if not ok:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
