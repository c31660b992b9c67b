"""What deciding on the device costs: the shipped Flux in a bare Euler loop (batched true CFG 3), with
the threshold rule decided on the host (``BatchedCache``, one request whose two branches decide together:
one host read per step; its estimate is the larger of the branches', the device's that of the whole
batch, so the computes may differ by one or two) or on the
device (``DeviceStepCache``: ``cond`` -- eager ``torch.cond``, whose branches torch traces with dynamo
and whose predicate eager torch reads on the host; inside a CUDA-graph capture it is a conditional
node -- and ``select`` -- both branches every step, no read at all).

Per variant: wall time of a whole sample (median of interleaved runs), computes, error against the
uncached sample, host reads per sample (counted over one more sample: every value a tensor hands to
the host, the Euler loop's included). No GPU here: the capture itself is not measured.

    python benchmarks/device_decisions.py [--steps 28] [--reps 5] [--threshold 0.1]

Writes ``benchmarks/results/device_decisions.json`` (with the commit).
"""

from __future__ import annotations

import argparse

import torch

from common import counted_host_reads, interleave, iqr_rel, machine, med, rel_l2, setup, table, write_json


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--out", default="device_decisions.json")
    args = ap.parse_args(argv)
    setup()
    from taylorseer_fx import AutoPolicy, BatchedCache
    from taylorseer_fx.demo.flux_model import condition, image_ids, load_label_table, load_transformer, text_ids
    from taylorseer_fx.demo.flux_pipeline import initial_noise
    from taylorseer_fx.serving.device_step import DeviceStepCache

    model, labels = load_transformer(), load_label_table()
    n = args.steps
    sig = [1 - i / n for i in range(n + 1)]
    pe, pooled = condition(torch.tensor([3, 10]), labels)
    ids = dict(img_ids=image_ids(), txt_ids=text_ids())
    policy = AutoPolicy(threshold=args.threshold, select_order=False)

    def velocity(hidden_states, timestep):
        return model(hidden_states=hidden_states, encoder_hidden_states=pe, pooled_projections=pooled,
                     timestep=timestep, return_dict=False, **ids)[0]

    def sample(step):
        x = initial_noise(1, 0)
        with torch.no_grad():
            for i in range(n):
                v = step(torch.cat([x, x]), torch.full((2,), sig[i]))
                vc, vu = v.chunk(2)
                x = x + (sig[i + 1] - sig[i]) * (vu + 3.0 * (vc - vu))
        return x

    runs: dict = {}

    def host():
        cache = BatchedCache(velocity, policy, batch_args=("hidden_states", "timestep"))
        req = cache.open(n, branches=("cond", "uncond"), sigmas=sig[:-1])
        x = sample(lambda h, t: cache(h, t, rows=[req["cond"], req["uncond"]]))
        runs["host"] = (x, sum(req.decisions))

    def device(mode):
        def go():
            cache = DeviceStepCache(velocity, policy, num_steps=n, mode=mode)
            x = sample(cache)
            runs[mode] = (x, sum(cache.decisions()))
        return go

    def plain():
        runs["plain"] = (sample(velocity), n)

    variants = {"plain": plain, "host": host, "cond": device("cond"), "select": device("select")}
    reads = {}
    for name, v in variants.items():     # warm up (dynamo traces torch.cond's branches at its first call) ...
        v()
        with counted_host_reads({}) as counted:    # ... then one counted sample
            v()
        reads[name] = counted["reads"]
    times = interleave(variants, args.reps)
    ref = runs["plain"][0]
    rows, out = [], []
    for name in variants:
        x, computes = runs[name]
        wall = med(times[name]["wall"])
        row = dict(variant=name, wall_s=wall, noise=iqr_rel(times[name]["wall"]), vs_plain=wall / med(times["plain"]["wall"]),
                   computes=computes, error=rel_l2(x, ref), host_reads=reads[name])
        out.append(row)
        rows.append([name, wall, row["noise"], row["vs_plain"], f"{computes}/{n}", row["error"], reads[name]])
    print(table(["variant", "wall s", "IQR/median", "vs plain", "computes", "rel. error", "host reads"], rows,
                title=f"decisions on the device: demo Flux, {n} steps, batched CFG, AutoPolicy(threshold="
                      f"{args.threshold}), 1 CPU thread, median of {args.reps}"))
    print(f"wrote {write_json(args.out, dict(machine=machine(), steps=n, threshold=args.threshold, rows=out))}")


if __name__ == "__main__":
    main()
