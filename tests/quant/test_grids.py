"""The per-channel grid (``grid="learned"``): levels, files, training, calibration."""

import math

import pytest
import torch
from torch import nn

from diffq_cli import LSQ, DiffQuantizer, UniformQuantizer, restore_quantized_state
from diffq_cli.files.check import check_state_deep
from diffq_cli.files.coding import decode_state, encode_state
from diffq_cli.quant import grids
from diffq_cli.quant.calibrate import recalibrate_batchnorm
from diffq_cli.quant.state import FORMAT, VERSION, dequantize_entry, entry_group_bits
from diffq_cli.quant.summary import entropy_bits, summarize_state


def linear(rows, cols, seed=0, dist="gauss"):
    torch.manual_seed(seed)
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        w = torch.randn(rows, cols) if dist == "gauss" else torch.distributions.Laplace(
            0.0, 1.0).sample((rows, cols))
        # rows of different scales: what a per-channel grid is for
        layer.weight.copy_(w * torch.linspace(0.2, 2.0, rows)[:, None])
    return layer


def mse(layer, quantizer) -> float:
    w = layer.weight.detach().clone()
    with quantizer.enter_quantize():
        return float((layer.weight.detach() - w).pow(2).mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_learned_beats_minmax_on_a_gaussian_tensor(bits):
    errors = {}
    for grid in grids.GRIDS:
        layer = linear(64, 96)
        q = UniformQuantizer(layer, bits=bits, min_size=0, grid=grid)
        errors[grid] = mse(layer, q)
        q.detach()
    assert errors["learned"] < errors["minmax"]
    if bits == 2:
        assert errors["learned"] < 0.5 * errors["minmax"]


def test_learned_values_are_odd_multiples_of_alpha_over_2_to_the_width():
    """Mid-rise: every value is (2q + 1) alpha / 2**b, symmetric about zero, and up to 7 bits
    an int8 times alpha / 128, exactly."""
    layer = linear(6, 13)
    q = DiffQuantizer(layer, min_size=0, group_size=5, grid="learned", min_bits=2, max_bits=7,
                      init_bits=4)
    q.no_optimizer()
    with torch.no_grad():  # widths 2..7 spread over the groups
        q._qparams[0].bit_param.copy_(torch.linspace(-6, 6, q._qparams[0].n_groups))
    entry = q.get_quantized_state()["quantized"]["weight"]
    assert entry["offset"] == 1
    bits = entry_group_bits(entry)
    assert int(bits.min()) == 2 and int(bits.max()) == 7
    alpha = entry["scales"].float()
    values = dequantize_entry(entry)
    units = values / (alpha[:, None] / 128)
    ints = units.round()
    assert torch.equal(units, ints)  # exact, not approximately
    assert int(ints.min()) >= -127 and int(ints.max()) <= 127
    bits_e = grids.per_group(bits, values.numel(), 5).view(values.shape)
    odd = values / (alpha[:, None] / 2.0**bits_e)
    assert torch.equal(odd.remainder(2), torch.ones_like(odd))  # odd: no zero level
    as_int8 = ints.to(torch.int8).float() * (alpha[:, None] / 128)
    assert torch.equal(as_int8, values)


def test_learned_2_bit_levels_are_symmetric_and_all_used():
    w = torch.linspace(-1, 1, 100).repeat(4, 1) * torch.tensor([[1.0], [2], [0.5], [3]])
    layer = nn.Linear(100, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    q = UniformQuantizer(layer, bits=2, min_size=0, grid="learned")
    values = dequantize_entry(q.get_quantized_state()["quantized"]["weight"])
    for row in values:
        levels = torch.unique(row)
        assert levels.numel() == 4
        torch.testing.assert_close(levels, -levels.flip(0))  # -3a/4, -a/4, a/4, 3a/4


def test_learned_1_bit_groups_are_plus_minus_half_alpha():
    """Mid-rise levels make 1 bit a binary quantizer, +-alpha/2 per row, exact in int8."""
    from diffq_cli.files.intweights import int_weight

    layer = linear(8, 24, seed=2)
    q = DiffQuantizer(layer, min_size=0, group_size=8, grid="learned", min_bits=1, max_bits=4,
                      init_bits=1)
    q.no_optimizer()
    entry = q.get_quantized_state()["quantized"]["weight"]
    assert int(entry_group_bits(entry).max()) == 1
    values = dequantize_entry(entry)
    half_alpha = entry["scales"].float()[:, None] / 2
    torch.testing.assert_close(values.abs(), half_alpha.expand_as(values), rtol=0, atol=0)
    w = layer.weight.detach()
    assert torch.equal(values.sign(), torch.where(w >= 0, 1.0, -1.0))  # the sign of each weight
    ints = int_weight(entry)
    assert ints["q"].dtype == torch.int8 and ints["exact"]
    assert torch.equal(ints["q"].float() * ints["scale"][:, None], values)


def test_groups_straddling_rows_use_each_value_s_row_and_group():
    """Rows of 7 values, groups of 4: most groups hold values of two rows."""
    layer = linear(5, 7, seed=3)
    # A different width per group, checked value by value.
    q = DiffQuantizer(layer, min_size=0, group_size=4, grid="learned", min_bits=2, max_bits=6,
                      init_bits=4)
    q.no_optimizer()
    with torch.no_grad():
        q._qparams[0].bit_param.copy_(torch.tensor([-5.0, 5, -1, 1, -5, 5, 0, -3, 3]))
    entry = q.get_quantized_state()["quantized"]["weight"]
    bits = entry_group_bits(entry).tolist()
    assert len(set(bits)) >= 3
    w = layer.weight.detach()
    got = dequantize_entry(entry)
    scales = entry["scales"].float()
    for i in range(35):
        r, b = i // 7, bits[i // 4]
        step = float(scales[r]) / 2 ** (b - 1)
        level = min(max(math.floor(float(w.view(-1)[i]) / step), -(2 ** (b - 1))),
                    2 ** (b - 1) - 1)
        want = (level + 0.5) * step
        assert float(got.view(-1)[i]) == pytest.approx(want, rel=1e-5, abs=1e-6), (i, r, b)


@pytest.mark.parametrize("cls,kwargs", [
    (DiffQuantizer, {"group_size": 10, "grid": "learned", "init_bits": 3}),
    (UniformQuantizer, {"bits": 3, "grid": "learned"}),
    (UniformQuantizer, {"bits": 3, "grid": "learned", "qat": True}),
    (UniformQuantizer, {"bits": 1, "grid": "learned", "qat": True}),  # +-alpha/2
    (LSQ, {"bits": 3, "grid": "learned"}),
])
def test_file_round_trip_through_the_coded_artifact(h, cls, kwargs, batch):
    net = h.make_net(0)
    quantizer, opt = h.attach(cls, net, **kwargs)
    h.train_steps(net, quantizer, opt, batch)
    net.eval()
    expected = net(batch)
    state = h.save_load(quantizer.get_quantized_state())
    check_state_deep(state)
    schemes = {e["scheme"] for e in state["quantized"].values()}
    assert schemes == {"learned"}
    coded = h.save_load(encode_state(state))
    decoded, disk = decode_state(coded, FORMAT, VERSION)
    for name, entry in state["quantized"].items():
        assert torch.equal(decoded["quantized"][name]["data"], entry["data"])
        assert torch.equal(decoded["quantized"][name]["scales"], entry["scales"])
        # coded levels within 2% of their order-0 bound (+ the tables)
        bound = entropy_bits(entry)
        assert disk[name] * 8 <= 1.02 * bound + 8 * 6 * 2 ** max(entry_group_bits(entry))
    fresh = h.zeroed(h.make_net(1))
    restore_quantized_state(fresh, decoded)
    fresh.eval()
    assert torch.equal(fresh(batch), expected)
    # sizes count 16 bits per stored scale
    summary = summarize_state(state)
    assert summary["true_mb"] == pytest.approx(quantizer.true_model_size(), rel=1e-9)
    side = sum(16 * e["scales"].numel() for e in state["quantized"].values())
    assert side == sum(quantizer._side_bits(qp) for qp in quantizer._qparams)
    assert {row["grid"] for row in summary["layers"] if "grid" in row} == schemes


def test_minmax_states_carry_no_scales(h):
    net = h.make_net(0)
    state = DiffQuantizer(net, group_size=8).get_quantized_state()
    assert all("scales" not in e and e["scheme"] == "minmax" for e in state["quantized"].values())


def test_damaged_scales_are_refused(h):
    net = h.make_net(0)
    state = DiffQuantizer(net, group_size=8, grid="learned").get_quantized_state()
    entry = next(iter(state["quantized"].values()))
    entry["scales"] = entry["scales"].clone()
    entry["scales"][0] = -1
    with pytest.raises(ValueError, match="scale <= 0"):
        check_state_deep(state)
    entry["scales"] = entry["scales"][:-1]
    with pytest.raises(ValueError, match="float16 scales"):
        check_state_deep(state)


def test_alpha_gets_a_gradient_and_moves(h, batch):
    net = h.make_net(0)
    quantizer, opt = h.attach(DiffQuantizer, net, group_size=8, grid="learned", init_bits=3)
    alphas = [qp.scale_param for qp in quantizer._qparams]
    before = [a.detach().clone() for a in alphas]
    net.train()
    loss = nn.functional.cross_entropy(net(batch), torch.arange(4)) + quantizer.model_size()
    loss.backward()
    assert all(a.grad is not None and float(a.grad.abs().sum()) > 0 for a in alphas)
    opt.step()
    assert all(not torch.equal(a.detach(), b) for a, b in zip(alphas, before, strict=True))
    # and in the frozen phase (true quantization, LSQ-style gradient)
    quantizer.freeze_bits()
    opt.zero_grad()
    nn.functional.cross_entropy(net(batch), torch.arange(4)).backward()
    assert all(float(a.grad.abs().sum()) > 0 for a in alphas)


def test_learned_alpha_starts_at_the_mse_optimal_clip():
    layer = linear(16, 256)
    q = DiffQuantizer(layer, min_size=0, group_size=8, grid="learned", init_bits=2)
    alpha = q._qparams[0].scale_param.detach().exp()
    top = layer.weight.detach().abs().amax(1)
    assert bool((alpha < 0.95 * top).all())  # 2 bits clip inside the largest value
    w = layer.weight.detach()

    def err(a):  # the mid-rise 2-bit grid: (q + 1/2) * alpha / 2, q in -2..1
        step = (a / 2)[:, None]
        return (((w / step - 0.5).round().clamp(-2, 1) + 0.5) * step - w).pow(2).sum(1)

    for ratio in (0.8, 1.25):
        assert bool((err(alpha) <= err(alpha * ratio) + 1e-6).all())


def test_bad_grid_values_are_refused():
    net = nn.Linear(64, 64)
    for cls in (DiffQuantizer, UniformQuantizer, LSQ):
        with pytest.raises(ValueError, match="grid must be one of minmax, learned"):
            cls(net, grid="rows")
        with pytest.raises(ValueError, match="grid must be one of minmax, learned"):
            cls(net, grid="channel")  # files on it still decode; training no longer offers it
    with pytest.raises(ValueError, match="grid='learned' needs whole bits"):
        UniformQuantizer(net, bits=2.5, grid="learned")
    assert {name: grid.name for name, grid in grids.GRIDS.items()} == {
        "minmax": "minmax", "learned": "learned"}
    assert grids.get("learned") is grids.GRIDS["learned"]
    with pytest.raises(ValueError, match="per-channel min/max grid was removed"):
        grids.get("channel")


def test_recipe_key_quant_grid_validates():
    from diffq_cli.config.load import Recipe

    assert Recipe(quant={"grid": "learned"}).quant.grid == "learned"
    with pytest.raises(ValueError, match=r"quant\.grid.*minmax, learned"):
        Recipe(quant={"grid": "rows"})


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, bias=False)
        self.bn = nn.BatchNorm2d(32, momentum=0.3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def test_batchnorm_recalibration_measures_the_quantized_model():
    torch.manual_seed(0)
    net = ConvBN()
    q = UniformQuantizer(net, bits=2, min_size=0, exclude=["bn.*"])
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    with torch.no_grad():
        with q.enter_quantize():  # what the quantized conv outputs on those batches
            outs = [net.conv(x) for x in batches]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    net.train()
    net.drop.eval()  # a mode of its own, restored as it was
    used = recalibrate_batchnorm(net, [(x, None) for x in batches] + [(batches[0], None)],
                                 num_batches=3)
    assert used == 3
    assert torch.allclose(net.bn.running_mean, means, atol=1e-5)
    assert torch.allclose(net.bn.running_var, variances, rtol=1e-4)
    assert net.bn.num_batches_tracked.item() == 3
    assert net.training and net.bn.training and not net.drop.training and net.conv.training
    assert net.bn.momentum == 0.3
    # float weights give other statistics: the quantized model's were measured
    q.detach()
    with torch.no_grad():
        float_mean = torch.stack([net.conv(x).mean((0, 2, 3)) for x in batches]).mean(0)
    assert not torch.allclose(float_mean, means, atol=1e-3)
    assert recalibrate_batchnorm(net, batches, num_batches=0) == 0
    assert torch.allclose(net.bn.running_mean, means, atol=1e-5)


def test_batchnorm_recalibration_restores_modes_when_a_forward_fails():
    net = ConvBN().eval()
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(net, [torch.randn(2, 5, 6, 6)])
    assert not net.training and not net.bn.training and net.bn.momentum == 0.3
