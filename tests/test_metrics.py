"""metrics.py: PSNR, relative L2, classifier accuracy and the Fréchet distance."""

import math

import pytest
import torch

from taylorseer_fx.demo.metrics import classifier_accuracy, frechet_distance, psnr, relative_l2


class _Clf(torch.nn.Module):
    """A fixed 'classifier': features = mean intensity per image quadrant; class = argmax of 10 slots."""

    def features(self, x):
        b = x.shape[0]
        q = x.reshape(b, 2, x.shape[-2] // 2, 2, x.shape[-1] // 2).mean(dim=(2, 4)).reshape(b, 4)
        return q

    def forward(self, x):
        return torch.nn.functional.one_hot(x.reshape(x.shape[0], -1)[:, 0].long().clamp(0, 9), 10).float()


def test_psnr_known_values():
    a = torch.zeros(2, 1, 4, 4)
    assert psnr(a, a) == math.inf
    # MSE 0.04 on data range 2: 10 log10(4 / 0.04) = 20 dB
    assert psnr(a + 0.2, a) == pytest.approx(20.0)
    assert psnr(a + 0.2, a, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.04))


def test_relative_l2_known_values():
    ref = torch.tensor([3.0, 4.0]).reshape(1, 1, 1, 2)
    assert relative_l2(ref, ref) == 0.0
    assert relative_l2(ref * 1.1, ref) == pytest.approx(0.1)
    assert relative_l2(torch.zeros_like(ref), ref) == pytest.approx(1.0)


def test_classifier_accuracy_counts_matches():
    imgs = torch.zeros(4, 1, 4, 4)
    imgs[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert classifier_accuracy(imgs, torch.tensor([1, 2, 3, 4]), _Clf()) == 1.0
    assert classifier_accuracy(imgs, torch.tensor([1, 2, 0, 0]), _Clf()) == 0.5


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    assert frechet_distance(x, x, _Clf()) == pytest.approx(0.0, abs=1e-6)
    d1 = frechet_distance(x + 0.5, x, _Clf())
    d2 = frechet_distance(x + 1.0, x, _Clf())
    # a pure mean shift by s moves all 4 features by s: distance 4 s^2
    assert d1 == pytest.approx(4 * 0.25, rel=1e-4)
    assert d2 == pytest.approx(4 * 1.0, rel=1e-4)


@pytest.mark.parametrize("call", [
    lambda: psnr(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3)),
    lambda: relative_l2(torch.zeros(2), torch.zeros(3)),
    lambda: relative_l2(torch.zeros(2), torch.zeros(2)),
    lambda: psnr(torch.zeros(2), torch.zeros(2), data_range=0),
    lambda: classifier_accuracy(torch.zeros(3, 1, 4, 4), torch.zeros(2), _Clf()),
    lambda: frechet_distance(torch.zeros(1, 1, 4, 4), torch.zeros(3, 1, 4, 4), _Clf()),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
