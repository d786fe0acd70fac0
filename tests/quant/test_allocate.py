"""quant.allocate: widths priced by expected loss per bit (group sums, sensitivities, the fit)."""

import math

import pytest
import torch

from diffq_cli import DiffQuantizer
from diffq_cli.quant.allocate import group_sensitivity, group_sums
from diffq_cli.quant.budget import (
    fit_budget,
    integer_widths,
    logits_for_bits,
    size_at_bits,
)
from diffq_cli.quant.grids import rows_of
from tests.quant.conftest import make_net


def _quantizer(**kwargs):
    q = DiffQuantizer(make_net(), group_size=4, min_size=1e-4, **kwargs)
    q.no_optimizer()
    return q


def _at(q, bits: float):
    for qp in q._qparams:
        with torch.no_grad():
            qp.bit_param.copy_(logits_for_bits(q, torch.full((qp.n_groups,), bits)))


def _scores(q, sensitivity):
    """log4(3 s / n) per group, flat: the price of each group's bit."""
    out = []
    for qp, s in zip(q._qparams, sensitivity, strict=True):
        n = torch.full((qp.n_groups,), float(qp.group_size), dtype=torch.float64)
        if qp.numel % qp.group_size:
            n[-1] = qp.numel % qp.group_size
        out.append(torch.log(3 * s / n) / math.log(4))
    return torch.cat(out)


def _random_sensitivity(q, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(qp.n_groups, generator=g, dtype=torch.float64).exp2() ** 8
            for qp in q._qparams]


def test_group_sums_add_each_group_including_a_short_last_one():
    q = DiffQuantizer(make_net(), group_size=5, min_size=1e-4)
    q.no_optimizer()
    ones = {qp.name: torch.ones_like(qp.param) for qp in q._qparams}
    sums = group_sums(q, ones)
    for qp, s in zip(q._qparams, sums, strict=True):
        assert s.numel() == qp.n_groups and float(s.sum()) == qp.numel
        assert torch.all(s[:-1] == 5) and float(s[-1]) == qp.numel - 5 * (qp.n_groups - 1)
    assert group_sums(q, {})[0] is None


@pytest.mark.parametrize("grid", ["minmax", "learned"])
def test_group_sensitivity_is_the_squared_gradient_times_the_squared_range(grid):
    q = _quantizer(grid=grid)
    sums = [torch.ones(qp.n_groups, dtype=torch.float64) for qp in q._qparams]
    sens = group_sensitivity(q, sums)
    for qp, s in zip(q._qparams, sens, strict=True):
        w = qp.param.detach().double()
        _, per_row = rows_of(w.shape)
        row = (torch.arange(qp.n_groups) * qp.group_size) // per_row
        if grid == "minmax":
            expected = torch.full((qp.n_groups,), float(w.max() - w.min()) ** 2)
        else:
            expected = ((2 * qp.scale_param.detach().double().exp()) ** 2)[row]
        torch.testing.assert_close(s, expected.double(), rtol=1e-5, atol=0)
    assert group_sensitivity(q, [None] * len(sums)) is None


def test_fit_lowers_the_groups_whose_bit_costs_least_not_by_fractional_part():
    q = _quantizer()
    _at(q, 4.0)
    # Real bits that would lower the *first* tensor first by fractional part (4.01 vs 4.45)...
    for i, qp in enumerate(q._qparams):
        with torch.no_grad():
            bits = torch.full((qp.n_groups,), 4.01 if i == 0 else 4.45)
            qp.bit_param.copy_(logits_for_bits(q, bits))
    sens = _random_sensitivity(q)
    sens[0] = sens[0] * 1e6  # ...but its bits are a million times dearer.
    target = (size_at_bits(q, 3) + size_at_bits(q, 4)) / 2
    fit = fit_budget(q, target, sensitivity=sens)
    assert fit["fits"] and fit["true_mb"] <= target and fit["lowered"] > 0
    widths = integer_widths(q)
    assert torch.all(widths[0] == 4)  # the sensitive tensor keeps its bits
    lowered = torch.cat(widths) < 4
    scores = _scores(q, sens)
    # A price threshold: every lowered group is cheaper than every group kept (same width).
    assert float(scores[lowered].max()) <= float(scores[~lowered].min())
    # Tight: the cheapest kept group back... the size is within one group's bits of the target.
    assert fit["true_mb"] > target - 64 / (8 * 2**20)


def test_fill_raises_the_groups_whose_bit_saves_most():
    q = _quantizer()
    _at(q, 3.0)
    sens = _random_sensitivity(q, seed=1)
    target = (size_at_bits(q, 3) + size_at_bits(q, 4)) / 2
    fit = fit_budget(q, target, fill=True, sensitivity=sens)
    assert fit["fits"] and fit["raised"] > 0 and fit["lowered"] == 0
    assert target - 64 / (8 * 2**20) < fit["true_mb"] <= target  # the budget is spent
    widths = torch.cat(integer_widths(q))
    raised = widths > 3
    scores = _scores(q, sens)
    # A price threshold, but for the top-up that spends what one price leaves (a few groups).
    above = scores[raised] >= float(scores[~raised].max())
    assert float(above.double().mean()) > 0.95
    # Two bits go only where one bit's price is 4x over the threshold: never cheaper groups.
    assert torch.all(widths <= 3 + 2)


def test_fit_with_sensitivity_reaches_the_floor_when_nothing_else_fits():
    q = _quantizer()
    _at(q, 5.0)
    sens = _random_sensitivity(q)
    floor = size_at_bits(q, 2)
    fit = fit_budget(q, floor / 2, sensitivity=sens)
    assert not fit["fits"] and torch.all(torch.cat(integer_widths(q)) == 2)


def test_fill_spends_the_budget_when_every_group_has_the_same_price():
    # Equal sensitivities (e.g. no gradient reached a layer): one price raises all or none of a
    # tensor's groups; the top-up raises as many as still fit, so the budget is spent anyway.
    q = _quantizer()
    _at(q, 3.0)
    sens = [torch.ones(qp.n_groups, dtype=torch.float64) for qp in q._qparams]
    target = (size_at_bits(q, 3) + size_at_bits(q, 4)) / 2
    fit = fit_budget(q, target, fill=True, sensitivity=sens)
    # What is left is less than one more tensor's first raise: a group's bits plus the width
    # header that tensor then needs on every group.
    header = max(qp.n_groups + qp.group_size for qp in q._qparams) / (8 * 2**20)
    assert target - header < fit["true_mb"] <= target
    assert fit["raised"] > 0
