"""quant.budget: floor and init sizes, the bits<->logits inverse, rounding that fits a budget."""

import pytest
import torch

from diffq_cli import DiffQuantizer, UniformQuantizer
from diffq_cli.quant.budget import (
    fit_budget,
    learned_bits,
    logits_for_bits,
    size_at_bits,
    size_floor,
)
from diffq_cli.quant.sizes import HEADER_BITS, header_bits, tensor_bits
from tests.quant.conftest import make_net


def _quantizer(**kwargs):
    q = DiffQuantizer(make_net(), group_size=4, **kwargs)
    q.no_optimizer()
    return q


def _spread_around_3_5():
    """A quantizer whose real bits spread over 3.05-3.95: plain rounding gives ~half the
    groups 4 bits."""
    q = _quantizer()
    torch.manual_seed(0)
    for qp in q._qparams:
        with torch.no_grad():
            qp.bit_param.copy_(logits_for_bits(q, 3.5 + 0.45 * (2 * torch.rand(qp.n_groups) - 1)))
    return q


def test_header_rule_is_the_same_on_tensors_and_on_integers():
    """The differentiable size sums headers over tensors (one spread per tensor, on device);
    the true size counts one tensor at a time: each width on spread.bit_length() bits."""
    spreads, groups = torch.arange(15), torch.arange(1, 16) * 7
    for s, g in zip(spreads.tolist(), groups.tolist(), strict=True):
        assert header_bits(s, g, 16) == HEADER_BITS + 16 + s.bit_length() * g
    want = sum(header_bits(s, g) for s, g in zip(spreads.tolist(), groups.tolist(), strict=True))
    assert float(header_bits(spreads.float(), groups, 48)) == want + 48


def test_floor_is_every_group_at_min_bits():
    q = _quantizer(min_bits=2)
    expected = q._float_bits()
    for qp in q._qparams:
        expected += tensor_bits(torch.full((qp.n_groups,), 2), qp.numel, qp.group_size)[1]
    assert size_floor(q) == pytest.approx(expected / (8 * 2**20))
    # At init every group rounds to init_bits, which is what true_model_size() reports.
    assert size_at_bits(q, q.init_bits) == pytest.approx(q.true_model_size())
    assert size_floor(q) < size_at_bits(q, 4) < q.true_model_size()


@pytest.mark.parametrize("param", ["bits", "noise"])
def test_logits_for_bits_inverts_the_parametrisation(param):
    q = _quantizer(param=param)
    bits = torch.tensor([2.0, 2.7, 5.4, 8.0, 14.2, 15.0])
    logits = logits_for_bits(q, bits)
    back, _ = q._bits_and_unit(logits)
    assert torch.allclose(back.double(), bits.double(), atol=1e-3)
    assert torch.equal(torch.round(back), torch.round(bits))  # bounds keep their rounding


def test_fit_budget_rounds_down_the_cheapest_groups_until_it_fits():
    q = _spread_around_3_5()
    real = torch.cat(learned_bits(q))
    over = q.true_model_size()
    target = (size_at_bits(q, 3) + over) / 2  # forces rounding some groups down
    assert over > target
    fit = fit_budget(q, target)
    assert fit["fits"] and fit["lowered"] > 0
    assert q.true_model_size() <= target and fit["true_mb"] == q.true_model_size()
    after = torch.cat([q._true_bits(qp) for qp in q._qparams])
    lowered = after < torch.round(real)
    assert bool(lowered.any()) and bool((after >= torch.round(real) - 1).all())
    # Cheapest first: every lowered group was closer above its rounding threshold than every
    # group that kept its width (among groups rounding to the same width).
    margin = real - (torch.round(real) - 0.5)
    kept_at_4 = (~lowered) & (torch.round(real) == 4)
    assert margin[lowered].max() <= margin[kept_at_4].min() + 1e-6
    # The saved state agrees with the new widths.
    state = q.get_quantized_state()
    restored = DiffQuantizer(make_net(), group_size=4)
    restored.restore_quantized_state(state)


def test_fit_budget_leaves_a_fitting_model_alone_and_reports_an_impossible_budget():
    q = _quantizer()
    logits = [qp.bit_param.detach().clone() for qp in q._qparams]
    assert fit_budget(q, q.true_model_size() + 1) == {
        "fits": True, "true_mb": pytest.approx(q.true_model_size()), "lowered": 0, "raised": 0,
        "tau": 0.0}
    assert all(torch.equal(a, qp.bit_param) for a, qp in zip(logits, q._qparams, strict=True))
    fit = fit_budget(q, size_floor(q) / 2)  # impossible: the floor is the nearest
    assert not fit["fits"] and fit["true_mb"] == pytest.approx(size_floor(q))
    assert q.true_model_size() == pytest.approx(size_floor(q))


def test_fit_budget_fill_raises_the_groups_nearest_their_threshold_while_it_fits():
    q = _spread_around_3_5()
    real = torch.cat(learned_bits(q))
    under = q.true_model_size()
    target = (under + size_at_bits(q, 4)) / 2  # room for some groups, not all, to gain a bit
    assert fit_budget(q, target)["raised"] == 0  # without fill nothing moves
    fit = fit_budget(q, target, fill=True)
    assert fit["fits"] and fit["raised"] > 0 and fit["lowered"] == 0 and fit["tau"] < 0
    assert under < q.true_model_size() <= target and fit["true_mb"] == q.true_model_size()
    after = torch.cat([q._true_bits(qp) for qp in q._qparams])
    raised = after > torch.round(real)
    assert bool((after <= torch.round(real) + 1).all())
    # Mirror order: every raised group sat closer below its next threshold than every group
    # left at 3 bits.
    gap = (torch.round(real) + 0.5) - real
    kept_at_3 = (~raised) & (torch.round(real) == 3)
    assert gap[raised].max() <= gap[kept_at_3].min() + 1e-6
    # Filling again changes nothing: the widths now sit on integers, raising any needs t >= 0.5
    # for all of them at once.
    assert fit_budget(q, target, fill=True)["raised"] == 0
    # Over the budget, fill lowers exactly as without it.
    assert fit_budget(q, size_at_bits(q, 3), fill=True)["lowered"] > 0


def test_budget_helpers_need_a_diffquantizer():
    q = UniformQuantizer(make_net(), bits=4)
    with pytest.raises(TypeError, match="DiffQuantizer"):
        size_floor(q)


def _next_bit_gain(sensitivity, qp, width):
    """Loss removed per stored bit by one more bit on every group of ``qp`` at ``width``."""
    return sensitivity[qp.name] * 4.0**-width / qp.numel


def test_start_at_size_gives_integer_widths_greedily_by_loss_per_bit():
    from diffq_cli.quant.budget import integer_widths, start_at_size

    q = _quantizer(min_size=1e-4)
    target = (size_at_bits(q, 3) + size_at_bits(q, 4)) / 2
    sensitivity = {qp.name: 1.0 for qp in q._qparams}
    got = start_at_size(q, target, sensitivity)
    assert got == pytest.approx(q.true_model_size()) and got <= target
    widths = dict(zip([qp.name for qp in q._qparams], integer_widths(q), strict=True))
    # Whole tensors by loss per bit; only the tensor next in line gets a prefix of its groups
    # one bit wider, so at most one tensor mixes widths, and two adjacent ones.
    mixed = [qp for qp in q._qparams if len(set(widths[qp.name].tolist())) > 1]
    assert len(mixed) == 1
    (next_in_line,) = mixed
    low = int(widths[next_in_line.name].min())
    assert int(widths[next_in_line.name].max()) == low + 1
    # Greedy: the next in line's bit was worth the most of the bits left (every tensor below
    # max_bits), and every bit given was worth at least as much.
    line = _next_bit_gain(sensitivity, next_in_line, low)
    for qp in q._qparams:
        if qp is next_in_line:
            continue
        b = int(widths[qp.name][0])
        assert bool((widths[qp.name] == b).all())
        if b < q.max_bits:
            assert _next_bit_gain(sensitivity, qp, b) <= line
        if b > q.min_bits:
            assert _next_bit_gain(sensitivity, qp, b - 1) >= line
    # With equal sensitivities the gain is 4**-b / numel: the smallest tensors get wider.
    by_size = sorted(q._qparams, key=lambda qp: qp.numel)
    means = [float(widths[qp.name].float().mean()) for qp in by_size]
    assert means == sorted(means, reverse=True) and means[0] > means[-1]
    # The start spends the budget: short of it by less than one more group (its width and the
    # per-group header bit that mixing widths adds).
    slack = max(qp.n_groups + qp.group_size for qp in q._qparams) / (8 * 2**20)
    assert target - got < slack
    # The real bits sit on the integers: no gap between training noise and rounding.
    for b in learned_bits(q):
        assert torch.allclose(b, torch.round(b), atol=1e-3)
    assert start_at_size(q, 1e6, sensitivity) == pytest.approx(size_at_bits(q, q.init_bits))


def test_moved_groups_counts_the_widths_that_left_their_start():
    from diffq_cli.quant.budget import integer_widths, moved_groups

    q = _quantizer()
    start = integer_widths(q)
    assert bool((start[0][:3] == 8).all())
    with torch.no_grad():
        qp = q._qparams[0]  # two widths move (by 1 and 2 bits), one stays
        qp.bit_param[:3] = logits_for_bits(q, torch.tensor([7.0, 6.0, 7.8]))
    moved = moved_groups(start, integer_widths(q))
    total = sum(qp.n_groups for qp in q._qparams)
    assert moved == {"groups": total, "groups_moved": 2, "moved_fraction": 2 / total,
                     "moved_mean_bits": pytest.approx(3 / total)}
    assert integer_widths(UniformQuantizer(make_net(), bits=4)) is None
    assert moved_groups(None, None) == {}


def test_start_at_size_by_sensitivity_gives_the_sensitive_tensor_the_bits():
    from diffq_cli.quant.budget import integer_widths, start_at_size

    q = _quantizer(min_size=1e-4)
    names = [qp.name for qp in q._qparams]
    target = size_at_bits(q, 3)  # room for 3 bits everywhere
    # One tensor a thousand times more sensitive than the others: it gets wider, the rest
    # pay for it, and the budget is spent.
    sensitivity = {n: 1.0 for n in names}
    sensitivity[names[0]] = 1000.0
    assert start_at_size(q, target, sensitivity=sensitivity) <= target
    widths = {qp.name: w for qp, w in zip(q._qparams, integer_widths(q), strict=True)}
    assert float(widths[names[0]].float().mean()) > 3
    assert min(float(widths[n].float().mean()) for n in names[1:]) < 3
    assert q.true_model_size() > 0.97 * target
