"""The README example: TaylorSeer on f(t) = t**2, sampled at t = 0..9.

With warm-up 4, a compute every 2nd step and first-order factors (the seed's defaults) it prints
0, 1, 4, 9, 14, 25, 33, 49, 61, 81 -- each marked computed or forecast. With ``--form newton
--order 2`` the forecasts are exact (t**2 is a polynomial of degree 2); ``--form heun --order 2``
damps the quadratic term (exact for lines only: 0, 1, 4, 9, 15.25, 25, ...), ``--form hermite``
contracts the series (taylorseer_fx/forecast/forms.py).

    python examples/toy_square.py
    python examples/toy_square.py --form newton --order 2
    python examples/toy_square.py --form heun --order 2
"""

import argparse

import torch
from torch import nn

from taylorseer_fx import taylor_seer
from taylorseer_fx.forecast.forms import FORMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--form", choices=FORMS, default="taylor")
    parser.add_argument("--order", type=int, default=1, help="n_derivatives")
    parser.add_argument("--warmup", type=int, default=4, help="warmup_steps")
    parser.add_argument("--interval", type=int, default=2, help="skip_interval_steps")
    args = parser.parse_args()

    @taylor_seer(warmup_steps=args.warmup, skip_interval_steps=args.interval, n_derivatives=args.order, form=args.form)
    class Square(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t**2

    model = Square()
    for t in range(10):
        y = model(torch.tensor(float(t)))
        print(f"t={t}  f(t)={y.item():g}  ({model.cache_trace[-1]}, true {t * t})")


if __name__ == "__main__":
    main()
