"""The contract every quantizer keeps (DiffQ, uniform, LSQ): one suite, several configurations."""

import pytest
import torch
from torch import nn

from diffq_cli import DiffQuantizer, restore_quantized_state
from diffq_cli.quant.summary import summarize_state
from diffq_cli.units import MIB_BITS as MB

ALLOWED_LEAVES = (torch.Tensor, str, int, float, bool, type(None))


def _walk(obj, path="state"):
    """Yields (path, leaf) for every leaf of nested dicts and lists."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert isinstance(key, str), f"{path} has a non-str key {key!r}"
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, obj


def _weights(net, quantizer):
    """Model parameters (without the quantizer's own) and buffers, cloned, by name."""
    own = {id(p) for p in quantizer._bit_parameters()}
    out = {n: p.detach().clone() for n, p in net.named_parameters() if id(p) not in own}
    out.update({n: b.clone() for n, b in net.named_buffers()})
    return out


def _trained(h, cls, kwargs, batch, **extra):
    net = h.make_net(0)
    quantizer, opt = h.attach(cls, net, **kwargs, **extra)
    h.train_steps(net, quantizer, opt, batch, steps=2)
    return net, quantizer


def test_round_trip_is_exact(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    net.eval()
    with torch.no_grad():
        expected_out = net(batch)
    with quantizer.enter_quantize():
        expected = _weights(net, quantizer)

    state = h.save_load(quantizer.get_quantized_state())
    fresh = h.zeroed(h.make_net(7))
    restore_quantized_state(fresh, state)
    fresh.eval()
    restored = _weights(fresh, quantizer)
    assert restored.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(restored[name], value), name
    with torch.no_grad():
        assert torch.equal(fresh(batch), expected_out)


def test_restore_through_the_quantizer(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    state = h.save_load(quantizer.get_quantized_state())
    with quantizer.enter_quantize():
        expected = _weights(net, quantizer)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    quantizer.restore_quantized_state(state)
    for name, value in _weights(net, quantizer).items():
        assert torch.equal(value, expected[name]), name
    net.eval()
    with torch.no_grad():
        out = net(batch)
    # After a restore the floats are already quantized values: quantizing them changes nothing.
    with quantizer.enter_quantize(), torch.no_grad():
        assert torch.equal(net(batch), out)


def test_state_holds_only_plain_types(h, qconfig):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    quantizer = cls(net, **kwargs)
    state = quantizer.get_quantized_state()
    assert state["format"] and isinstance(state["version"], int)
    assert state["quantizer"] == cls.__name__
    for path, leaf in _walk(state):
        assert isinstance(leaf, ALLOWED_LEAVES), f"{path} is a {type(leaf).__name__}"
    assert set(state["quantized"]) == {"conv2.weight", "fc1.weight"}
    assert set(state["floats"]) == {
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "conv2.bias",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }


def test_eval_is_deterministic_and_leaves_floats(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    with torch.no_grad():
        first, second = net(batch), net(batch)
    assert torch.equal(first, second)
    after = net.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # Nothing left behind in the modules' instance dicts.
    assert "weight" not in net.fc1.__dict__ and "weight" not in net.conv2.__dict__


@pytest.mark.parametrize(
    ("patterns", "kept"),
    [
        (["fc1.weight"], "fc1.weight"),  # full name
        (["weig*"], None),  # short name: every weight
        (["conv*"], "conv2.weight"),  # full-name glob
    ],
)
def test_exclude_keeps_matching_params_float(h, qconfig, batch, patterns, kept):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    original = {n: p.detach().clone() for n, p in net.named_parameters()}
    quantizer = cls(net, exclude=patterns, **kwargs)
    state = h.save_load(quantizer.get_quantized_state())
    if kept is None:
        assert state["quantized"] == {}
        assert not quantizer._bit_parameters()
    else:
        assert kept in state["floats"] and kept not in state["quantized"]
        assert len(state["quantized"]) == 1
    fresh = h.zeroed(h.make_net(3))
    restore_quantized_state(fresh, state)
    for name in state["floats"]:
        assert torch.equal(fresh.get_parameter(name), original[name]), name


def test_exclude_accepts_a_single_string(h):
    net = h.make_net(0)
    quantizer = DiffQuantizer(net, exclude="fc1.*")
    assert list(quantizer.get_quantized_state()["quantized"]) == ["conv2.weight"]


def test_float16_stores_kept_tensors_in_half(h, qconfig):
    _, cls, kwargs = qconfig
    full = cls(h.make_net(0), **kwargs)
    half_net = h.make_net(0)
    half = cls(half_net, float16=True, **kwargs)
    state = h.save_load(half.get_quantized_state())
    kept = sum(t.numel() for t in state["floats"].values())
    assert all(t.dtype == torch.float16 for t in state["floats"].values())
    assert full.true_model_size() - half.true_model_size() == pytest.approx(16 * kept / MB)
    assert full.packed_model_size() - half.packed_model_size() == pytest.approx(2 * kept / 2**20)
    fresh = h.zeroed(h.make_net(3))
    restore_quantized_state(fresh, state)
    for name in state["floats"]:
        original = half_net.get_parameter(name).detach()
        assert torch.equal(fresh.get_parameter(name), original.half().float()), name


def test_sizes_are_consistent(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    true = quantizer.true_model_size()
    packed = quantizer.packed_model_size()
    compressed = quantizer.compressed_model_size()
    estimate = quantizer.model_size()
    assert isinstance(estimate, torch.Tensor) and estimate.dim() == 0
    float_mb = sum(p.numel() for p in net.parameters()) * 4 / 2**20
    assert 0 < true < float_mb
    assert abs(packed - true) <= 0.1 * true
    assert compressed <= 1.5 * true
    assert true / 1.5 <= estimate.item() <= 1.5 * true


@pytest.mark.parametrize("grid", ["minmax", "learned"])
@pytest.mark.parametrize("spread", [0, 4])
def test_differentiable_size_equals_true_size_at_integer_bits(h, grid, spread):
    """Two independent code paths (the batched differentiable estimate and the per-tensor
    count of the rounded widths) agree exactly when every learned width is an integer: the
    differentiable size charges each tensor's header (and the learned grid's scales) by the
    true size's rule, on the spread of its rounded widths (0: one width, no per-group bits)."""
    net = h.make_net(0)
    quantizer = DiffQuantizer(net, group_size=8, min_bits=2, max_bits=10, init_bits=6,
                              grid=grid)
    with torch.no_grad():
        for i, qp in enumerate(quantizer._qparams):
            # Widths from 3 by group: sigmoid(logit) = (b - 2) / 8 exactly representable.
            b = 3 + torch.arange(qp.n_groups) % (spread + 1) + i % 2
            t = (b.float() - 2) / 8
            qp.bit_param.copy_(torch.log(t / (1 - t)))
    true = quantizer.true_model_size()
    assert quantizer.model_size().item() == pytest.approx(true, rel=1e-6)
    # and the differentiable estimate moves with the widths while the floats stay counted
    with torch.no_grad():
        for qp in quantizer._qparams:
            qp.bit_param.add_(1.0)
    assert quantizer.model_size().item() > true


def test_model_size_is_differentiable_for_diffq(h):
    net = h.make_net(0)
    quantizer = DiffQuantizer(net, group_size=8)
    size = quantizer.model_size()
    assert size.requires_grad
    size.backward()
    for p in quantizer._bit_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert (p.grad > 0).all()  # more bits, bigger model


def _renamed():
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 16, 3, padding=1))
    net.add_module("bn1", nn.BatchNorm2d(16))
    net.add_module("conv_two", nn.Conv2d(16, 32, 3, padding=1))
    net.add_module("fc1", nn.Linear(128, 64))
    net.add_module("fc2", nn.Linear(64, 10))
    return net


def _reshaped(h):
    net = h.make_net(0)
    net.fc1 = nn.Linear(128, 32)
    net.fc2 = nn.Linear(32, 10)
    return net


@pytest.mark.parametrize(
    ("build", "first_mismatch"),
    [
        (lambda h: _renamed(), "conv2.weight"),
        (_reshaped, "fc1.weight"),
        # Wrapped: every stored name is wrong; the message names one of them.
        (lambda h: nn.Sequential(h.make_net(0), nn.Linear(10, 2)), r"(conv|fc)\d\.(weight|bias)"),
    ],
)
def test_restore_names_the_first_mismatch(h, qconfig, build, first_mismatch):
    _, cls, kwargs = qconfig
    quantizer = cls(h.make_net(0), **kwargs)
    state = h.save_load(quantizer.get_quantized_state())
    with pytest.raises(ValueError, match=f"'{first_mismatch}'"):
        restore_quantized_state(build(h), state)


def test_restore_rejects_other_dicts(h):
    with pytest.raises(ValueError, match="format"):
        restore_quantized_state(h.make_net(0), {"conv1.weight": torch.zeros(1)})
    state = DiffQuantizer(h.make_net(0)).get_quantized_state()
    with pytest.raises(ValueError, match="version"):
        restore_quantized_state(h.make_net(0), {**state, "version": 999})


def test_quantize_unquantize_round_trip(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    floats = _weights(net, quantizer)
    net.eval()
    with torch.no_grad():
        quantized_out = net(batch)
    quantizer.quantize()
    quantizer.quantize()  # idempotent
    quantized = _weights(net, quantizer)
    assert not torch.equal(quantized["fc1.weight"], floats["fc1.weight"])
    assert torch.equal(quantized["fc2.weight"], floats["fc2.weight"])  # kept float
    with torch.no_grad():
        assert torch.equal(net(batch), quantized_out)
    quantizer.unquantize()
    quantizer.unquantize()
    for name, value in _weights(net, quantizer).items():
        assert torch.equal(value, floats[name]), name
    with quantizer.enter_quantize():
        for name, value in _weights(net, quantizer).items():
            assert torch.equal(value, quantized[name]), name
    for name, value in _weights(net, quantizer).items():
        assert torch.equal(value, floats[name]), name


def test_attaching_twice_raises(h, qconfig):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    quantizer = cls(net, **kwargs)
    with pytest.raises(RuntimeError, match="already attached"):
        cls(net, **kwargs)
    quantizer.detach()
    cls(net, **kwargs)  # fine once detached


def test_detach_gives_back_a_plain_model(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    names = [n for n, _ in net.named_parameters()]
    plain = h.make_net(0)
    quantizer = cls(net, **kwargs)
    quantizer.no_optimizer()
    for model in (net, plain):  # same BatchNorm statistics updates on both
        model.train()
        model(batch)
    quantizer.detach()
    assert [n for n, _ in net.named_parameters()] == names
    assert not net._forward_hooks and not net._forward_pre_hooks
    for mode in (True, False):
        net.train(mode)
        plain.train(mode)
        with torch.no_grad():
            assert torch.equal(net(batch), plain(batch))


def test_a_training_forward_does_not_change_the_parameters(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    quantizer, _ = h.attach(cls, net, **kwargs)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    net.train()
    net(batch).sum().backward()
    for key, value in before.items():
        if "num_batches" not in key:
            assert torch.equal(net.state_dict()[key], value), key
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_module_level_restore_on_an_attached_model(h, qconfig, batch):
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch)
    state = h.save_load(quantizer.get_quantized_state())
    with quantizer.enter_quantize():
        expected = _weights(net, quantizer)
    # The model also holds the quantizer's own parameters; the state does not.
    restore_quantized_state(net, state)
    for name, value in _weights(net, quantizer).items():
        assert torch.equal(value, expected[name]), name


def test_summary_of_a_saved_state_matches_the_quantizer(h, qconfig, batch):
    _, cls, kwargs = qconfig
    for float16 in (False, True):
        net, quantizer = _trained(h, cls, kwargs, batch, float16=float16)
        summary = summarize_state(h.save_load(quantizer.get_quantized_state()))
        assert summary["true_mb"] == pytest.approx(quantizer.true_model_size(), rel=1e-9)
        assert summary["params"] == sum(
            p.numel()
            for p in net.parameters()
            if all(p is not b for b in quantizer._bit_parameters())
        )
        assert summary["float_mb"] == pytest.approx(summary["params"] * 4 / 2**20)


@pytest.mark.parametrize("train", [True, False])
def test_a_failing_forward_leaves_the_floats_in_place(h, qconfig, batch, train):
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    quantizer, _ = h.attach(cls, net, **kwargs)
    net.train(train)
    with pytest.raises(RuntimeError):
        net(batch[:, :2])  # wrong number of channels
    for module in net.modules():
        assert not set(module.__dict__) & set(module._parameters), type(module).__name__
    net.eval()
    with torch.no_grad():
        first = net(batch)
    restored = h.zeroed(h.make_net(1))
    restore_quantized_state(restored, quantizer.get_quantized_state())
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(batch), first)


def test_a_training_forward_after_quantize_trains_the_floats(h, qconfig, batch):
    """As in the reference: quantize(), then a training step, keeps that step (the training
    forward restores the floats first) instead of training the quantized values and losing
    the step at the next unquantize()."""
    _, cls, kwargs = qconfig
    net = h.make_net(0)
    quantizer, opt = h.attach(cls, net, **kwargs)
    floats = _weights(net, quantizer)
    quantizer.quantize()
    h.train_steps(net, quantizer, opt, batch, steps=1)
    trained = _weights(net, quantizer)
    quantizer.unquantize()  # nothing left to undo
    after = _weights(net, quantizer)
    for name in ("conv2.weight", "fc1.weight"):
        assert torch.equal(after[name], trained[name]), name
        assert not torch.equal(after[name], floats[name]), name
    # The step started from the floats: without noise or quantization in between, an SGD step
    # is w - lr * grad, so it lies close to the float weights, not to the quantized ones.
    assert quantizer._quantized_backup is None


def test_float16_live_eval_is_the_restored_state(h, qconfig, batch):
    """With float16=True the kept float tensors go through fp16 in the eval forward,
    quantize() and enter_quantize(), exactly as the saved state stores them."""
    _, cls, kwargs = qconfig
    net, quantizer = _trained(h, cls, kwargs, batch, float16=True)
    with torch.no_grad():
        net.fc2.bias.add_(1e-4)  # a value fp16 cannot hold exactly
    net.eval()
    with torch.no_grad():
        live = net(batch)
        restored = h.zeroed(h.make_net(1))
        restore_quantized_state(restored, h.save_load(quantizer.get_quantized_state()))
        expected = restored.eval()(batch)
        assert torch.equal(live, expected)
        with quantizer.enter_quantize():
            assert torch.equal(net(batch), expected)
            assert torch.equal(net.fc2.bias, restored.fc2.bias)
    # the floats are back, unrounded, outside the quantized views
    assert not torch.equal(net.fc2.bias, restored.fc2.bias)
    net.train()
    assert "bias" not in net.fc2.__dict__
