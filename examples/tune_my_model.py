"""Tune where a compute budget's computes go on your pipeline, write the preset, use it.

    python examples/tune_my_model.py            # the shipped demo Flux, offline (~30 s on one CPU thread)

Here the pipeline is the demo Flux (no download); put yours in ``pipe`` and your prompts in ``INPUTS``
(a few representative ones; the last third are held out to validate, never searched on). The tuner
runs each candidate placement on the calibration inputs, keeps the best, checks it on the held-out
inputs and on fresh noise beside the untuned budget, and writes a preset ``load_policy`` reads. The
same from a shell: ``python -m taylorseer_fx.tuning --budget 0.35 --steps 20,28 --out tuned.toml``.
See docs/tuning.md.
"""

import sys

import torch

from taylorseer_fx import compile_pipeline, load_policy, tune
from taylorseer_fx.demo.flux_model import PIXEL_SIZE
from taylorseer_fx.demo.flux_pipeline import build_pipeline, pipeline_inputs

torch.set_num_threads(1)
pipe = build_pipeline()            # yours: DiffusionPipeline.from_pretrained(...), uncompiled
INPUTS = [dict(pipeline_inputs([k]), height=PIXEL_SIZE, width=PIXEL_SIZE, output_type="latent") for k in (1, 4, 7)]
out = sys.argv[1] if len(sys.argv) > 1 else "tuned.toml"

result = tune(pipe, INPUTS, budget=0.35, steps=[16], sweeps=1, checkpoint=out + ".progress.json")
print(result.table())
result.write(out)

policy = load_policy(out)          # the preset: a tuned placement or threshold per step count, the budget elsewhere
handle = compile_pipeline(pipe, policy=policy, inner="eager")      # inductor (the default) to deploy
for steps in (16, 20):             # 16: tuned (placement or threshold); 20: not tuned, the budget places (warned)
    pipe(**INPUTS[0], num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    trace = handle.stats()["transformer"]["trace"]
    computed = sorted({c["step"] for c in trace if c["stream"] == 0 and c["decision"] == "compute"})
    print(f"{steps} steps: computed {computed}")
    handle.reset()
handle.remove()
