"""quant.project: linear widths projected into a size budget while they learn."""

import pytest
import torch

from diffq_cli import DiffQuantizer
from diffq_cli.quant.project import TOLERANCE_BITS, project_to_budget
from diffq_cli.run.targets import start_control
from diffq_cli.units import MIB_BITS
from tests.quant.conftest import make_net


def _linear(**kwargs):
    q = DiffQuantizer(make_net(), group_size=4, min_size=0, param="linear", **kwargs)
    q.no_optimizer()
    return q


def _spread(q, seed=0):
    """Widths spread over 3-8 bits (the width headers keep their size down to 1.5 bits less)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for qp in q._qparams:
            qp.bit_param.copy_(torch.rand(qp.n_groups, generator=gen) * 5 + 3)


def _widths(q):
    return torch.cat([qp.bit_param.detach().reshape(-1).clone() for qp in q._qparams])


def test_over_the_budget_every_width_moves_down_by_one_shift_to_the_budget():
    q = _linear()
    _spread(q)
    before, size = _widths(q), float(q.model_size().detach())
    budget = size * 0.85
    t = project_to_budget(q, budget)
    after = _widths(q)
    assert t > 0
    now = float(q.model_size().detach())
    assert now <= budget + TOLERANCE_BITS / MIB_BITS
    assert now == pytest.approx(budget, abs=2 * TOLERANCE_BITS / MIB_BITS)
    assert float(after.min()) >= 2.0
    # One common shift, clamped at the floor: the Euclidean projection onto the budget.
    torch.testing.assert_close(after, (before - t).clamp(min=2.0))


def test_the_offset_counts_as_the_controller_counts_it():
    q = _linear()
    _spread(q)
    size = float(q.model_size().detach())
    assert project_to_budget(q, size - 0.005, offset_mb=0.0) > 0
    q2 = _linear()
    _spread(q2)
    # model_size() reads 0.01 MiB above the true size: the budget is met already.
    assert project_to_budget(q2, size - 0.005, offset_mb=0.01) == 0.0


def test_within_the_budget_or_another_parametrisation_nothing_moves():
    q = _linear()
    _spread(q)
    before = _widths(q)
    assert project_to_budget(q, float(q.model_size().detach()) + 0.01) == 0.0
    assert torch.equal(_widths(q), before)
    sigmoid = DiffQuantizer(make_net(), group_size=4, min_size=0, param="bits")
    sigmoid.no_optimizer()
    logits = _widths(sigmoid)
    assert project_to_budget(sigmoid, 1e-6) == 0.0
    assert torch.equal(_widths(sigmoid), logits)


def test_a_budget_below_the_floor_leaves_every_width_at_the_floor():
    q = _linear()
    _spread(q)
    project_to_budget(q, 1e-6)
    assert torch.all(_widths(q) == 2.0)


def test_a_size_target_keeps_linear_widths_within_the_aim_at_every_step():
    """start_control(..., bits_opt) with linear widths: a loss that asks every width to grow
    (the task's pull) cannot take the size above the aim; without the hook it does."""
    sizes = {}
    for hooked in (True, False):
        torch.manual_seed(0)
        q = DiffQuantizer(make_net(), group_size=4, min_size=0, param="linear")
        opt = torch.optim.Adam([{"params": []}], lr=0.2)
        q.setup_optimizer(opt, lr=0.2)
        target = float(q.model_size().detach()) * 0.6  # init_bits 8: the start lowers the widths
        control = start_control(q, 1.0, target, bits_opt=opt if hooked else None)
        control.calibrate(float(q.model_size().detach()), q.true_model_size())
        worst = 0.0
        for _ in range(10):
            opt.zero_grad()
            (-q.model_size()).backward()  # every width pulled up
            opt.step()
            worst = max(worst, float(q.model_size().detach()) - control.offset)
        sizes[hooked] = (worst, control.aim_mb)
        q.detach()
    worst, aim = sizes[True]
    assert worst <= aim + TOLERANCE_BITS / MIB_BITS
    assert sizes[False][0] > aim * 1.05
