"""DiffQuantizer: training noise, bits, the size penalty, tied weights, RNNs, errors, kernels."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diffq_cli import LSQ, DiffQuantizer, UniformQuantizer, restore_quantized_state
from diffq_cli.quant.noise import NoisePool
from diffq_cli.quant.ops import noisy_weight
from diffq_cli.quant.state import entry_group_bits as entry_bits


def _float_out(h, x, train=True):
    net = h.make_net(0)
    net.train(train)
    with torch.no_grad():
        return net(x)


# ---------------------------------------------------------------------------- training noise
@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_training_forwards_are_noisy_and_eval_is_not(h, batch, noise):
    net = h.make_net(0)
    quantizer, _ = h.attach(DiffQuantizer, net, group_size=8, noise=noise)
    reference = _float_out(h, batch)
    net.train()
    with torch.no_grad():
        first, second = net(batch), net(batch)
    assert not torch.equal(first, second)
    assert not torch.equal(first, reference)
    # Noise of the size of an 8-bit step: close to the float model.
    assert torch.allclose(first, reference, atol=0.05)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(batch), net(batch))


def _noisy_weight(layer: nn.Linear) -> torch.Tensor:
    # A bias-free Linear fed the identity returns its (noisy) weight, transposed.
    with torch.no_grad():
        return layer(torch.eye(layer.in_features)).T


@pytest.mark.parametrize("param", ["bits", "noise"])
@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_noise_has_the_size_of_the_quantization_step(noise, param):
    torch.manual_seed(0)
    layer = nn.Linear(256, 256, bias=False)
    quantizer = DiffQuantizer(layer, group_size=0, init_bits=4, noise=noise, param=param)
    quantizer.no_optimizer()
    weight = layer.weight.detach()
    delta = float(weight.max() - weight.min()) / (2**4 - 1)
    added = _noisy_weight(layer) - weight
    if noise == "gaussian":
        assert float(added.std()) == pytest.approx(delta / 2, rel=0.03)
    else:
        assert float(added.abs().max()) <= delta / 2 * (1 + 1e-5)
        assert float(added.std()) == pytest.approx(delta / math.sqrt(12), rel=0.03)
    assert abs(float(added.mean())) < 0.02 * delta


def test_each_group_gets_noise_for_its_own_bits():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64, bias=False)
    quantizer = DiffQuantizer(layer, group_size=64, min_bits=2, max_bits=10)
    quantizer.no_optimizer()
    with torch.no_grad():  # even groups (rows) on 3 bits, odd ones on 9
        layer.weight_diffq.copy_(torch.tensor([-1.5, 2.0]).repeat(32))
    bits = 2 + 8 * torch.sigmoid(layer.weight_diffq.detach())
    weight = layer.weight.detach()
    span = float(weight.max() - weight.min())
    std = (_noisy_weight(layer) - weight).std(dim=1)
    expected = span / (2**bits - 1) / 2
    assert torch.allclose(std, expected, rtol=0.35)
    assert float(std[0::2].mean() / std[1::2].mean()) > 30


def test_parameters_and_state_dict_unchanged_by_forwards(h, batch):
    net = h.make_net(0)
    quantizer, _ = h.attach(DiffQuantizer, net, group_size=8)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.train()
    net(batch).sum().backward()
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net(batch)
    for name, p in net.named_parameters():
        assert torch.equal(p, params[name]), name
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_gradients_reach_weights_and_bits(h, batch):
    net = h.make_net(0)
    quantizer, _ = h.attach(DiffQuantizer, net, group_size=8)
    net.train()
    net(batch).pow(2).sum().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert net.fc1.weight_diffq.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- size penalty
def test_size_penalty_alone_lowers_the_true_size(h):
    net = h.make_net(0)
    quantizer = DiffQuantizer(net, group_size=8)
    # The separate-optimizer form of the reference API.
    quantizer.opt = torch.optim.Adam([{"params": []}])
    quantizer.setup_optimizer(quantizer.opt, lr=0.2)
    start = quantizer.true_model_size()
    sizes = []
    for _ in range(6):
        quantizer.opt.zero_grad()
        quantizer.model_size().backward()
        quantizer.opt.step()
        sizes.append(quantizer.true_model_size())
    assert sizes[-1] < start
    assert all(b <= a for a, b in zip(sizes, sizes[1:], strict=False))


def test_extra_bits_and_bit_bounds(h):
    net = h.make_net(0)
    base = DiffQuantizer(net, group_size=8).true_model_size()
    plus = DiffQuantizer(h.make_net(0), group_size=8, extra_bits=2).true_model_size()
    quantized = 128 * 64 + 16 * 32 * 9
    assert plus - base == pytest.approx(2 * quantized / (8 * 2**20), rel=1e-6)
    low = DiffQuantizer(h.make_net(0), group_size=8, min_bits=3, init_bits=3, max_bits=3)
    state = low.get_quantized_state()
    for entry in state["quantized"].values():
        assert set(entry_bits(entry).tolist()) == {3}


# ---------------------------------------------------------------------------- tied weights
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.dec = nn.Linear(32, 100)
        self.dec.weight = self.emb.weight

    def forward(self, x):
        return self.dec(self.emb(x))


def _tied_step(detect_bound):
    torch.manual_seed(0)
    net = Tied()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    quantizer = DiffQuantizer(net, group_size=8, detect_bound=detect_bound)
    quantizer.setup_optimizer(opt)
    tokens = torch.randint(0, 100, (4, 6))
    net.train()
    loss = nn.functional.cross_entropy(net(tokens).flatten(0, 1), tokens.flatten())
    (loss + 1e-2 * quantizer.model_size()).backward()
    opt.step()
    return net, quantizer, tokens


def test_tied_weights_share_one_set_of_bits(h):
    net, quantizer, tokens = _tied_step(detect_bound=True)
    bit_names = [n for n, _ in net.named_parameters() if n.endswith("_diffq")]
    assert bit_names == ["emb.weight_diffq"]
    assert net.emb.weight_diffq.grad.abs().sum() > 0
    state = h.save_load(quantizer.get_quantized_state())
    assert list(state["quantized"]) == ["emb.weight"]
    net.eval()
    with torch.no_grad():
        expected = net(tokens)
    torch.manual_seed(1)
    fresh = Tied()
    restore_quantized_state(fresh, state)
    assert fresh.dec.weight is fresh.emb.weight
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(tokens), expected)


def test_detect_bound_false_quantizes_twice(h):
    net, quantizer, tokens = _tied_step(detect_bound=False)
    bound, _, _ = _tied_step(detect_bound=True)
    bit_names = [n for n, _ in net.named_parameters() if n.endswith("_diffq")]
    assert bit_names == ["emb.weight_diffq", "dec.weight_diffq"]
    # Both bit sets are trained, both stored, and the size counts the tensor twice.
    assert net.emb.weight_diffq.grad.abs().sum() > 0
    assert net.dec.weight_diffq.grad.abs().sum() > 0
    state = h.save_load(quantizer.get_quantized_state())
    assert list(state["quantized"]) == ["emb.weight", "dec.weight"]
    single = DiffQuantizer(Tied(), group_size=8).true_model_size()
    assert quantizer.true_model_size() > 1.8 * single
    fresh = Tied()
    restore_quantized_state(fresh, state)  # both entries land on the one shared tensor
    floats = net.emb.weight.detach().clone()
    with quantizer.enter_quantize():
        assert torch.equal(fresh.emb.weight, net.emb.weight)  # the last entry wins in both
    assert torch.equal(net.emb.weight, floats)  # floats are back


# ---------------------------------------------------------------------------- RNNs
class Recurrent(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(8, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnn_trains_evaluates_and_round_trips(h, cls):
    torch.manual_seed(0)
    net = Recurrent(cls)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    quantizer = DiffQuantizer(net, min_size=0, group_size=8)
    quantizer.setup_optimizer(opt, lr=1e-2)
    x = torch.randn(16, 5, 8)
    y = x.sum(dim=(1, 2))[:, None] / 4
    losses = []
    net.train()
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        (loss + 1e-3 * quantizer.model_size()).backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    # After a forward the RNN's weight list points at the real Parameters again.
    assert net.rnn._flat_weights[0] is net.rnn.weight_ih_l0
    net.eval()
    with torch.no_grad():
        out = net(x)
        with quantizer.enter_quantize():
            quantized = net(x)
    assert torch.isfinite(out).all()
    state = h.save_load(quantizer.get_quantized_state())
    fresh = h.zeroed(Recurrent(cls))
    restore_quantized_state(fresh, state)
    fresh.eval()
    with torch.no_grad():
        restored = fresh(x)
    assert torch.equal(restored, quantized)
    # Same weights; the RNN kernel may sum in another order for differently laid out tensors.
    assert torch.allclose(restored, out, atol=1e-6)


# ---------------------------------------------------------------------------- errors
def test_optimizer_holding_the_bits_is_refused(h):
    net = h.make_net(0)
    quantizer = DiffQuantizer(net)
    late = torch.optim.SGD(net.parameters(), lr=0.1)  # includes the *_diffq parameters
    with pytest.raises(RuntimeError, match="create the optimizer before the quantizer"):
        quantizer.setup_optimizer(late)


@pytest.mark.parametrize(("cls", "kwargs"), [(DiffQuantizer, {}), (LSQ, {"bits": 4})])
def test_training_needs_setup_optimizer_or_no_optimizer(h, batch, cls, kwargs):
    net = h.make_net(0)
    quantizer = cls(net, **kwargs)
    net.eval()
    net(batch)  # evaluation is fine
    net.train()
    with pytest.raises(RuntimeError, match="setup_optimizer"):
        net(batch)
    quantizer.no_optimizer()
    net(batch).sum().backward()


def test_uniform_without_qat_trains_without_setup(h, batch):
    net = h.make_net(0)
    UniformQuantizer(net, bits=4)
    net.train()
    with torch.no_grad():
        assert torch.equal(net(batch), _float_out(h, batch))


def test_setup_opt_alias_adds_one_group(h):
    net = h.make_net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-4)
    quantizer = DiffQuantizer(net)
    quantizer.setup_opt(opt, lr=3e-3)
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["lr"] == 3e-3 and group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in quantizer._bit_parameters()}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"param": "log"},
        {"param": "linear"},
        {"noise": "laplace"},
        {"min_bits": 4, "init_bits": 3},
        {"max_bits": 16},
        {"group_size": -1},
    ],
)
def test_bad_diffq_arguments(h, kwargs):
    with pytest.raises(ValueError):
        DiffQuantizer(h.make_net(0), **kwargs)


def test_bad_arguments_of_the_other_quantizers(h):
    with pytest.raises(ValueError):
        UniformQuantizer(h.make_net(0), bits=0)
    with pytest.raises(ValueError):
        LSQ(h.make_net(0), bits=3.5)
    with pytest.raises(TypeError):
        DiffQuantizer(torch.zeros(3))


# ---------------------------------------------------------------------------- housekeeping
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(64, 64)
        self.unused = nn.Linear(64, 64)

    def forward(self, x):
        return self.used(x)


def test_check_unused_zeroes_the_bit_grads_of_unused_params():
    torch.manual_seed(0)
    net = TwoHeads()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    quantizer = DiffQuantizer(net, min_size=0, group_size=8)
    quantizer.setup_optimizer(opt)
    net.train()
    (net(torch.randn(4, 64)).pow(2).sum() + quantizer.model_size()).backward()
    assert net.unused.weight_diffq.grad.abs().sum() > 0  # from the size penalty
    used_grad = net.used.weight_diffq.grad.clone()
    assert sorted(quantizer.check_unused()) == ["unused.bias", "unused.weight"]
    assert not net.unused.weight_diffq.grad.any() and not net.unused.bias_diffq.grad.any()
    assert torch.equal(net.used.weight_diffq.grad, used_grad)


def test_detach_removes_bit_params_and_hooks(h, batch):
    net = h.make_net(0)
    quantizer = DiffQuantizer(net, group_size=8)
    assert any(n.endswith("_diffq") for n, _ in net.named_parameters())
    quantizer.detach()
    assert not any(n.endswith("_diffq") for n, _ in net.named_parameters())
    assert not net._forward_pre_hooks and not net._forward_hooks
    net.train()
    with torch.no_grad():
        assert torch.equal(net(batch), _float_out(h, batch))


# ---------------------------------------------------------------------------- NoisyWeight
def _reference_noisy(weight, unit, noise, group_size, mult):
    """The same function written with plain autograd ops."""
    flat = weight.reshape(-1)
    span = flat.max() - flat.min()
    per_value = unit.repeat_interleave(group_size)[: flat.numel()]
    return (flat + noise * per_value * (span * mult)).view(weight.shape)


@pytest.mark.parametrize(
    ("shape", "group_size"),
    [((10,), 8), ((37,), 8), ((4, 8), 8), ((5, 7), 1), ((6, 6), 36), ((3, 11, 13), 16)],
)
@pytest.mark.parametrize("mult", [0.5, -0.5, 1.0])
def test_noisy_weight_matches_plain_autograd(shape, group_size, mult):
    generator = torch.Generator().manual_seed(0)
    numel = math.prod(shape)
    groups = -(-numel // group_size)
    weight = torch.randn(shape, generator=generator)
    unit = torch.rand(groups, generator=generator) + 0.1
    noise = torch.randn(numel, generator=generator)
    upstream = torch.randn(shape, generator=generator)
    grads = []
    for fn in (noisy_weight, _reference_noisy):
        w = weight.clone().requires_grad_()
        u = unit.clone().requires_grad_()
        out = fn(w, u, noise, group_size, mult)
        out.backward(upstream)
        grads.append((out.detach(), w.grad, u.grad))
    (out, gw, gu), (ref_out, ref_gw, ref_gu) = grads
    assert torch.allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gw, ref_gw, rtol=1e-5, atol=1e-5)
    assert torch.allclose(gu, ref_gu, rtol=1e-5, atol=1e-5)
    # The range term lands on exactly the max and min entries.
    changed = (gw - upstream).reshape(-1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted([int(weight.argmax()), int(weight.argmin())])


@pytest.mark.parametrize("where", [0, 20_000, 4095, 4096, 50_000 - 1])
@pytest.mark.parametrize("shape", [(50_000,), (50, 40, 5, 5), (64, 32, 3, 3)])
def test_noisy_weight_range_gradient_on_large_tensors(where, shape):
    # Above 4 rows of 4096 the range is found row by row (with a shorter tail row when the
    # size is not a multiple of 4096), and the extremes are searched in the winning rows only.
    generator = torch.Generator().manual_seed(0)
    n = math.prod(shape)
    where %= n
    flat = torch.randn(n, generator=generator)
    flat[where] = 10.0
    flat[(where + 17) % n] = -10.0
    weight = flat.view(shape)
    unit = torch.full((-(-n // 8),), 0.01)
    noise = torch.randn(n, generator=generator)
    upstream = torch.ones(shape)
    w = weight.clone().requires_grad_()
    noisy_weight(w, unit, noise, 8, 0.5).backward(upstream)
    w_ref = weight.clone().requires_grad_()
    _reference_noisy(w_ref, unit, noise, 8, 0.5).backward(upstream)
    assert torch.allclose(w.grad, w_ref.grad, atol=1e-4)
    changed = (w.grad != 1).reshape(-1).nonzero().flatten().tolist()
    assert changed == sorted([where, (where + 17) % n])


def test_noisy_weight_does_not_corrupt_a_shared_upstream_gradient():
    # ``out = noisy + b`` hands one gradient tensor to both inputs.
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(40, generator=generator, requires_grad=True)
    b = torch.randn(40, generator=generator, requires_grad=True)
    unit = torch.full((5,), 0.1, requires_grad=True)
    upstream = torch.randn(40, generator=generator)
    kept = upstream.clone()
    (noisy_weight(w, unit, torch.randn(40, generator=generator), 8, 0.5) + b).backward(
        upstream
    )
    assert torch.equal(b.grad, kept)
    assert torch.equal(upstream, kept)


# ---------------------------------------------------------------------------- noise sources
@pytest.mark.parametrize(("kind", "std"), [("gaussian", 1.0), ("uniform", 1 / math.sqrt(12))])
def test_pool_windows_have_the_right_statistics(kind, std):
    torch.manual_seed(0)
    pool = NoisePool(kind, largest=100_000, total=300_000, device=torch.device("cpu"))
    values = torch.cat([w * s for w, s in pool.windows([100_000, 100_000, 60_000])])
    assert abs(float(values.mean())) < 0.01
    assert float(values.std()) == pytest.approx(std, rel=0.02)
    if kind == "uniform":
        assert float(values.abs().max()) <= 0.5
    else:
        assert float(values.abs().max()) > 3.5  # real tails, not a clipped distribution


def test_pool_gives_different_windows_each_step():
    torch.manual_seed(0)
    pool = NoisePool("gaussian", largest=5000, total=5000, device=torch.device("cpu"))
    seen = []
    for _ in range(5):
        ((window, sign),) = pool.windows([5000])
        seen.append(window * sign)
        pool.refresh()
    for i in range(len(seen)):
        for j in range(i):
            assert not torch.equal(seen[i], seen[j])


def test_pool_refresh_leaves_handed_out_windows_alone():
    torch.manual_seed(0)
    pool = NoisePool("gaussian", largest=5000, total=20_000, device=torch.device("cpu"))
    windows = [w for w, _ in pool.windows([5000, 3000])]
    copies = [w.clone() for w in windows]
    for _ in range(pool.num_chunks * 10):  # every part of every chunk is redrawn
        pool.refresh()
    for window, copy in zip(windows, copies, strict=True):
        assert torch.equal(window, copy)


def _grads_two_forwards(h, batch, together: bool):
    net = h.make_net(0)
    torch.manual_seed(123)
    quantizer, _ = h.attach(DiffQuantizer, net, group_size=8)
    net.train()
    halves = batch[:2], batch[2:]
    if together:  # gradient accumulation: both forwards, then one backward
        sum(net(x).pow(2).sum() for x in halves).backward()
    else:
        for x in halves:
            net(x).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_noise_stays_valid_for_a_pending_backward(h, batch):
    together = _grads_two_forwards(h, batch, together=True)
    apart = _grads_two_forwards(h, batch, together=False)
    for name, grad in together.items():
        assert torch.isfinite(grad).all(), name
        assert torch.allclose(grad, apart[name], rtol=1e-4, atol=1e-6), name


# ---------------------------------------------------------------------------- mixed bits
class Flat(nn.Module):
    def __init__(self, numel):
        super().__init__()
        self.w = nn.Parameter(torch.randn(numel))


@settings(max_examples=30, deadline=None)
@given(
    numel=st.integers(1, 3000),
    group_size=st.integers(0, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_mixed_bit_widths_round_trip(numel, group_size, seed):
    torch.manual_seed(seed)
    net = Flat(numel)
    quantizer = DiffQuantizer(net, min_size=0, group_size=group_size, min_bits=1, max_bits=15)
    with torch.no_grad():
        net.w_diffq.copy_(torch.randn(net.w_diffq.shape) * 4)
    state = quantizer.get_quantized_state()
    entry = state["quantized"]["w"]
    qp = quantizer._qparams[0]
    assert torch.equal(entry_bits(entry), quantizer._true_bits(qp))
    with quantizer.enter_quantize():
        expected = net.w.detach().clone()
    fresh = Flat(numel)
    restore_quantized_state(fresh, state)
    assert torch.equal(fresh.w, expected)
    # Each value is within half a step of its group's grid.
    w = net.w.detach()
    bits = quantizer._true_bits(qp).repeat_interleave(qp.group_size)[:numel]
    step = (w.max() - w.min()) / (2.0**bits - 1)
    assert ((w - expected).abs() <= step / 2 * 1.001 + 1e-6).all()


def test_separate_optimizer_for_the_bits(h, batch):
    net = h.make_net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    quantizer = DiffQuantizer(net, group_size=8)
    quantizer.opt = torch.optim.Adam([{"params": []}])
    quantizer.setup_optimizer(quantizer.opt)
    assert len(opt.param_groups) == 1
    bits = net.fc1.weight_diffq.detach().clone()
    weight = net.fc1.weight.detach().clone()
    net.train()
    for _ in range(2):
        opt.zero_grad()
        quantizer.opt.zero_grad()
        (net(batch).pow(2).mean() + 1e-2 * quantizer.model_size()).backward()
        opt.step()
        quantizer.opt.step()
    assert not torch.equal(net.fc1.weight_diffq, bits)
    assert not torch.equal(net.fc1.weight, weight)


def test_learned_scales_share_the_widths_group(h):
    # The learned grid's log-scales go with the widths: one group at ``lr``, no weight decay.
    opt = torch.optim.Adam([{"params": []}])
    quantizer = DiffQuantizer(h.make_net(0), group_size=8, grid="learned")
    quantizer.setup_optimizer(opt, lr=0.08)
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["lr"] == 0.08 and group["weight_decay"] == 0.0
    expected = {id(p) for qp in quantizer._qparams for p in (qp.bit_param, qp.scale_param)}
    assert {id(p) for p in group["params"]} == expected


def test_model_size_after_a_separate_backward(h, batch):
    net = h.make_net(0)
    quantizer, _ = h.attach(DiffQuantizer, net, group_size=8)
    alone = DiffQuantizer(h.make_net(0), group_size=8)
    alone.model_size().backward()
    net.train()
    net(batch).pow(2).sum().backward()  # frees the forward's graph
    task_grad = net.fc1.weight_diffq.grad.clone()
    quantizer.model_size().backward()  # must not reuse the freed graph
    size_grad = net.fc1.weight_diffq.grad - task_grad
    assert torch.allclose(size_grad, alone.model.fc1.weight_diffq.grad)
    # In one loss the forward's bits are shared, with the same gradient.
    net.zero_grad()
    (net(batch).pow(2).sum() * 0 + quantizer.model_size()).backward()
    assert torch.allclose(net.fc1.weight_diffq.grad, alone.model.fc1.weight_diffq.grad)


@pytest.mark.parametrize("param", ["bits", "noise"])
def test_bits_and_unit_function_matches_the_plain_chain(param):
    """The fused logits -> (bits, unit) Function gives the autograd chain's values and
    gradients (for either output alone and both together)."""
    import math

    from diffq_cli.quant.widths import BitsAndUnit

    lo, hi = (-math.log(2**15 - 1), -math.log(3)) if param == "noise" else (2.0, 15.0)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, generator=gen) * 3).requires_grad_()
    g_bits, g_unit = torch.randn(300, generator=gen), torch.randn(300, generator=gen) * 1e3

    def chain(x):
        t = torch.sigmoid(x)
        if param == "bits":
            bits = lo + (hi - lo) * t
            return bits, 1 / (torch.exp2(bits) - 1)
        unit = torch.exp(lo + (hi - lo) * t)
        return unit.reciprocal().add(1).log2(), unit

    for weights in ((1, 0), (0, 1), (1, 1)):
        grads = []
        for fn in (chain, lambda x: BitsAndUnit.apply(lo, hi, param, x[:100], x[100:])):
            bits, unit = fn(logits)
            (weights[0] * (bits * g_bits).sum() + weights[1] * (unit * g_unit).sum()).backward()
            grads.append((bits.detach(), unit.detach(), logits.grad.clone()))
            logits.grad = None
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_bits_train_through_true_quantization():
    """freeze_bits(): a training forward sees exactly the evaluation's quantized weights, and
    the weights get the straight-through (identity) gradient; the logits get none."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    quantizer = DiffQuantizer(net, group_size=8, min_size=0, init_bits=3)
    quantizer.no_optimizer()
    x = torch.randn(5, 32)
    net.eval()
    with torch.no_grad():
        evaluated = net(x)
    quantizer.freeze_bits()
    net.train()
    out = net(x)
    # Same quantized weights; ``w + (q - w)`` may differ from ``q`` in its last bit.
    torch.testing.assert_close(out, evaluated, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in quantizer._bit_parameters())
    quantizer.freeze_bits(False)
    net.train()
    assert not torch.equal(net(x), evaluated)  # noise again
