"""Say how fast: a compute budget on a diffusers pipeline, and where its computes go.

    python examples/budget.py           # the shipped demo Flux, offline (~20 s on one CPU thread)

``AutoPolicy(budget=...)`` computes exactly ``round(budget * N)`` (halves up) of an N-step run
(``compile_pipeline`` tells it N). By default (``pacing="even"``) it computes the first step, the last
(where at least 4 computes are left after the first), and the rest at the budget's even spacing,
reading no estimate; ``pacing="estimate"`` places them where the estimated error
grows fastest. Even spacing measured better on both shipped models over many samples (docs/auto.md);
on the two samples here either may win. Where you know your model, ``taylorseer_fx.tune`` places the
computes on your inputs (examples/tune_my_model.py).
"""

import torch

from taylorseer_fx import AutoPolicy, compile_pipeline
from taylorseer_fx.demo import metrics
from taylorseer_fx.demo.flux_model import PIXEL_SIZE
from taylorseer_fx.demo.flux_pipeline import build_pipeline, pipeline_inputs

torch.set_num_threads(1)
STEPS = 28
pipe = build_pipeline()            # yours: DiffusionPipeline.from_pretrained(...), uncompiled
inputs = dict(pipeline_inputs([3, 8]), height=PIXEL_SIZE, width=PIXEL_SIZE, output_type="latent",
              num_inference_steps=STEPS)


def run():
    return pipe(**inputs, generator=torch.Generator().manual_seed(0)).images


reference = run()                  # uncached
handle = compile_pipeline(pipe, policy=AutoPolicy(budget="3x"), inner="eager")   # inductor (default) to deploy
for policy in (AutoPolicy(budget="3x"), AutoPolicy(budget="3x", pacing="estimate"), AutoPolicy(budget=0.25)):
    handle.backends["transformer"].policy = policy
    handle.reset()
    out = run()
    trace = handle.stats()["transformer"]["trace"]
    computed = sorted({c["step"] for c in trace if c["stream"] == 0 and c["decision"] == "compute"})
    print(f"{policy!r}: {len(computed)} of {STEPS} steps computed {computed}, "
          f"relative L2 to uncached {metrics.relative_l2(out, reference):.4f}")
handle.remove()
