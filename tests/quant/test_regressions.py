"""Cases where the reference implementation broke (README, "The library"), one test each."""

import io

import pytest
import torch
from torch import nn

from diffq_cli import LSQ, DiffQuantizer, UniformQuantizer, restore_quantized_state


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10)).to(dtype)


def _train_eval_round_trip(h, make, quantizer_fn, x, steps=2):
    """Train steps, eval, save/load/restore into a zeroed copy; returns (quantizer, outputs)."""
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    quantizer = quantizer_fn(net)
    quantizer.setup_optimizer(opt, lr=0.05)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = net(x).float().pow(2).mean() + 1e-2 * quantizer.model_size()
        loss.backward()
        assert torch.isfinite(loss)
        opt.step()
    net.eval()
    with torch.no_grad():
        expected = net(x)
    fresh = h.zeroed(make())
    restore_quantized_state(fresh, h.save_load(quantizer.get_quantized_state()))
    fresh.eval()
    with torch.no_grad():
        restored = fresh(x)
    return quantizer, expected, restored


def test_group_size_that_does_not_divide_a_tensor(h):
    # Biases of 10 and 64 values, weights of 1024 and 640, with groups of 8 and of 24.
    for group_size in (8, 24):
        quantizer, expected, restored = _train_eval_round_trip(
            h,
            _mlp,
            lambda m, g=group_size: DiffQuantizer(m, min_size=0, group_size=g),
            torch.randn(4, 16),
        )
        assert torch.equal(restored, expected)
        state = quantizer.get_quantized_state()
        assert state["quantized"]["2.bias"]["group_size"] == min(group_size, 10)
        assert state["quantized"]["0.bias"]["group_size"] == group_size


def test_group_size_zero_save_restore(h):
    quantizer, expected, restored = _train_eval_round_trip(
        h, _mlp, lambda m: DiffQuantizer(m, min_size=0, group_size=0), torch.randn(4, 16)
    )
    assert torch.equal(restored, expected)
    assert len(quantizer._bit_parameters()[0]) == 1  # one bit width per tensor


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(DiffQuantizer, {"group_size": 8}), (UniformQuantizer, {"bits": 4}), (LSQ, {"bits": 4})],
)
def test_nothing_large_enough_to_quantize(h, cls, kwargs):
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    quantizer = cls(net, **kwargs)  # default min_size: nothing is quantized
    x = torch.randn(3, 4)
    plain = nn.Linear(4, 2)
    plain.load_state_dict(net.state_dict())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
    net.train()
    net(x).sum().backward()
    size = quantizer.model_size()
    assert isinstance(size, torch.Tensor)
    assert quantizer.true_model_size() == pytest.approx(10 * 4 / 2**20)
    state = h.save_load(quantizer.get_quantized_state())
    assert state["quantized"] == {}
    fresh = h.zeroed(nn.Linear(4, 2))
    restore_quantized_state(fresh, state)
    assert torch.equal(fresh.weight, net.weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (DiffQuantizer, {"group_size": 8}),
        (UniformQuantizer, {"bits": 4, "qat": True}),
        (LSQ, {"bits": 4}),
    ],
)
def test_half_precision_models(h, dtype, cls, kwargs):
    make = lambda: _mlp(dtype=dtype)  # noqa: E731
    quantizer, expected, restored = _train_eval_round_trip(
        h, make, lambda m: cls(m, min_size=0, **kwargs), torch.randn(4, 16, dtype=dtype)
    )
    assert expected.dtype == dtype
    assert torch.isfinite(expected.float()).all()
    assert torch.equal(restored, expected)
    state = quantizer.get_quantized_state()
    assert {e["dtype"] for e in state["quantized"].values()} == {str(dtype).split(".")[1]}


def test_uniform_fractional_bits_save_restore(h):
    quantizer, expected, restored = _train_eval_round_trip(
        h, _mlp, lambda m: UniformQuantizer(m, bits=3.5, min_size=0), torch.randn(4, 16)
    )
    assert torch.equal(restored, expected)
    state = quantizer.get_quantized_state()
    levels = 2**3.5 - 1
    assert all(e["qmax"] == pytest.approx(levels) for e in state["quantized"].values())
    # round(2**3.5 - 1) = 10 levels above zero, stored on 4 bits.
    assert {e["bits_min"] for e in state["quantized"].values()} == {4}
    with quantizer.enter_quantize():
        for p in quantizer.model.parameters():
            assert 2 < torch.unique(p).numel() <= 11


def test_saved_state_loads_with_weights_only(h, tmp_path):
    net = _mlp()
    quantizer = DiffQuantizer(net, min_size=0, group_size=8)
    path = tmp_path / "model.th"
    torch.save(quantizer.get_quantized_state(), path)
    state = torch.load(path, weights_only=True)
    fresh = h.zeroed(_mlp())
    restore_quantized_state(fresh, state)
    with quantizer.enter_quantize():
        for name, p in fresh.named_parameters():
            assert torch.equal(p, net.get_parameter(name)), name
    # And through a plain in-memory buffer, as the artifact writer does.
    buf = io.BytesIO()
    torch.save(quantizer.get_quantized_state(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["quantizer"] == "DiffQuantizer"


def test_recipe_methods_are_the_registered_quantizers():
    """The recipe's quant.method choices and the registry name the same methods, and each
    builds its class from the settings given (plus the registration's fixed ones); a key its
    constructor does not take is an error naming it, never silently dropped."""
    from torch import nn

    from diffq_cli.config.schema import QuantConfig
    from diffq_cli.quant import LSQ, DiffQuantizer, UniformQuantizer, registry

    assert sorted(QuantConfig.choices["method"]) == registry.methods()
    common = {"min_size": 0.0, "exclude": ("*.bias",)}
    for name, cls, own in (("diffq", DiffQuantizer, {"group_size": 4}),
                           ("uniform", UniformQuantizer, {"bits": 3}),
                           ("lsq", LSQ, {"bits": 3})):
        quantizer = registry.build(name, nn.Linear(8, 8), {**common, **own})
        assert type(quantizer) is cls and quantizer.exclude == ["*.bias"]
        for key, value in own.items():
            assert getattr(quantizer, key) == value
    assert registry.build("uniform", nn.Linear(8, 8), {"bits": 3}).qat  # the recipe method trains
    with pytest.raises(TypeError, match="bits"):
        registry.build("diffq", nn.Linear(8, 8), {"group_size": 4, "bits": 3})
    with pytest.raises(ValueError, match="choose one of: diffq, lsq, uniform"):
        registry.build("nope", nn.Linear(8, 8), common)
