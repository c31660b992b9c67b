"""The demo DiT (taylorseer_fx.demo.model / sampling / data): shipped weights, structure, tracing,
deterministic sampling and a fast quality smoke check."""

import pytest
import torch

pytest.importorskip("safetensors")

from taylorseer_fx.demo import (  # noqa: E402
    DigitDiT,
    DiTConfig,
    load_classifier,
    load_model,
    sample,
    sigmas,
)
from taylorseer_fx.demo.sampling import CLASSIFIER_FILE, MODEL_FILE, weights_path  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def _inputs(m, b=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, m.in_channels, m.sample_size, m.sample_size, generator=g)
    t = torch.linspace(0.9, 0.1, b)
    y = torch.tensor([1, 7, m.null_class][:b])
    return x, t, y


def test_shipped_files_exist_and_are_small():
    for name in (MODEL_FILE, CLASSIFIER_FILE):
        p = weights_path(name)
        assert p.is_file(), p
        assert p.stat().st_size <= 10 * 2**20


def test_loaded_model_is_eval_and_frozen(model):
    assert isinstance(model, DigitDiT)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.null_class == model.num_classes == 10


def test_forward_shape_dtype(model):
    x, t, y = _inputs(model)
    with torch.no_grad():
        v = model(x, t, y)
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.isfinite(v).all()


def test_module_paths_are_standard(model):
    names = dict(model.named_modules())
    depth = model.config.depth
    for i in range(depth):
        for sub in ("attn", "ff", "norm1", "norm2"):
            assert f"blocks.{i}.{sub}" in names
    assert f"blocks.{depth}" not in names
    assert isinstance(model.blocks, torch.nn.ModuleList)


def test_untrained_model_is_zero_initialised():
    m = DigitDiT(DiTConfig(hidden_size=32, depth=2, num_heads=2))
    x, t, y = _inputs(m)
    assert torch.equal(m(x, t, y), torch.zeros_like(x))  # adaLN-Zero + zero output projection


def test_dynamo_traces_one_graph_without_breaks(model):
    x, t, y = _inputs(model)
    explain = torch._dynamo.explain(model)(x, t, y)
    assert explain.graph_break_count == 0
    assert explain.graph_count == 1


def test_sigmas():
    s = sigmas(4)
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    s3 = sigmas(4, shift=3.0)
    expected = 3 * torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]) / (1 + 2 * torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(s3, expected)
    assert s3[0] == 1.0 and s3[-1] == 0.0
    with pytest.raises(ValueError, match="num_steps"):
        sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        sigmas(3, shift=-1.0)


def test_sampling_deterministic_with_seed_and_generator(model):
    labels = [0, 3, 9]
    a = sample(model, labels, num_steps=5, seed=123)
    b = sample(model, labels, num_steps=5, generator=torch.Generator().manual_seed(123))
    c = sample(model, labels, num_steps=5, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (3, 1, model.sample_size, model.sample_size)
    assert a.min() >= -1 and a.max() <= 1


def test_sampling_passes_sigma_as_batched_timestep(model):
    calls = []

    def spy(x, t, y):
        calls.append((x.shape[0], t.clone(), y.clone()))
        return model(x, t, y)

    spy.parameters = model.parameters  # sample() reads device/dtype from the parameters
    spy.sample_size, spy.in_channels, spy.null_class = model.sample_size, model.in_channels, model.null_class
    sample(spy, [4, 5], num_steps=4, cfg_scale=2.0, seed=0, batched_cfg=True)
    assert len(calls) == 4
    for (n, t, y), s in zip(calls, sigmas(4)[:-1]):
        assert n == 4 and t.shape == (4,) and torch.all(t == s)
        assert y.tolist() == [4, 5, 10, 10]
    calls.clear()
    sample(spy, [4, 5], num_steps=4, cfg_scale=2.0, seed=0, batched_cfg=False)
    assert len(calls) == 8 and [c[2].tolist() for c in calls[:2]] == [[4, 5], [10, 10]]
    calls.clear()
    sample(spy, [4, 5], num_steps=4, cfg_scale=1.0, seed=0)
    assert len(calls) == 4 and all(c[2].tolist() == [4, 5] for c in calls)


def test_batched_and_separate_cfg_agree(model):
    a = sample(model, [2, 8], num_steps=6, seed=5, batched_cfg=True)
    b = sample(model, [2, 8], num_steps=6, seed=5, batched_cfg=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_callback_sees_every_step(model):
    seen = []
    out = sample(model, [1], num_steps=5, seed=0, clip=False,
                 callback=lambda i, s, x: seen.append((i, s, x.clone())))
    assert [i for i, _, _ in seen] == list(range(5))
    assert [s for _, s, _ in seen] == pytest.approx(sigmas(5)[:-1].tolist())
    assert torch.equal(seen[-1][2], out)


def test_bad_labels_raise(model):
    with pytest.raises(ValueError, match="labels"):
        sample(model, [10], num_steps=2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        sample(model, [], num_steps=2, seed=0)


def test_classifier_on_real_digits(classifier):
    from taylorseer_fx.demo.data import load_digits, split_indices

    images, labels = load_digits()
    _, test = split_indices(len(labels))
    with torch.no_grad():
        acc = (classifier(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert acc >= 0.97, acc
    assert classifier.features(images[:4]).shape == (4, classifier.feature_dim)


def test_data_is_deterministic_and_scaled():
    from taylorseer_fx.demo.data import load_digits

    a, la = load_digits()
    b, lb = load_digits()
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (1797, 1, 16, 16) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.min() == -1
    assert sorted(la.unique().tolist()) == list(range(10))


def test_smoke_quality_20_samples_20_steps(model, classifier):
    labels = torch.arange(10).repeat(2)
    x = sample(model, labels, num_steps=20, cfg_scale=2.0, seed=0)
    with torch.no_grad():
        acc = (classifier(x).argmax(1) == labels).float().mean().item()
    assert acc >= 0.85, acc


def test_weights_metadata_and_byte_reproducible_save(tmp_path):
    from taylorseer_fx.demo.sampling import save_weights, weights_info

    info = weights_info(weights_path(MODEL_FILE))
    assert info["config"]["depth"] >= 1 and "final_loss" in info
    m = DigitDiT(DiTConfig(hidden_size=32, depth=1, num_heads=2))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(m, a, m.config.to_dict(), steps="1", final_loss="0.5")
    save_weights(m, b, m.config.to_dict(), final_loss="0.5", steps="1")
    assert a.read_bytes() == b.read_bytes()
    m2 = load_model(path=a)
    assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), m2.state_dict().values()))
