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
    shift = project_to_budget(q, budget)
    after = _widths(q)
    assert shift < 0
    now = float(q.model_size().detach())
    assert now <= budget + TOLERANCE_BITS / MIB_BITS
    assert now == pytest.approx(budget, abs=2 * TOLERANCE_BITS / MIB_BITS)
    assert float(after.min()) >= 2.0
    # One common shift, clamped at the floor: the Euclidean projection onto the budget.
    torch.testing.assert_close(after, (before + shift).clamp(min=2.0))


def test_with_fill_a_run_under_the_budget_is_raised_to_it_by_one_shift():
    q = _linear()
    _spread(q)
    with torch.no_grad():  # a few groups at the floor, which rise with the rest
        q._qparams[0].bit_param[:5] = 2.0
    before, size = _widths(q), float(q.model_size().detach())
    budget = size * 1.1
    assert project_to_budget(q, budget) == 0.0  # fits: without fill nothing moves
    shift = project_to_budget(q, budget, fill=True)
    assert shift > 0
    now = float(q.model_size().detach())
    assert now <= budget + TOLERANCE_BITS / MIB_BITS
    assert now == pytest.approx(budget, abs=2 * TOLERANCE_BITS / MIB_BITS)
    torch.testing.assert_close(_widths(q), (before + shift).clamp(max=15.0))
    # At max_bits nothing can rise: the widths stop there.
    assert project_to_budget(q, size * 100, fill=True) > 0
    assert torch.all(_widths(q) == 15.0)


def test_the_offset_counts_as_the_controller_counts_it():
    q = _linear()
    _spread(q)
    size = float(q.model_size().detach())
    assert project_to_budget(q, size - 0.005, offset_mb=0.0) < 0
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


def test_a_size_target_holds_linear_widths_at_the_aim_at_every_step():
    """start_control(..., bits_opt) with linear widths: a loss that asks every width to grow
    (the task's pull) cannot take the size above the aim, and one that asks every width to
    shrink (the size term alone) cannot take it below; without the hook both drift."""
    drift = {}
    for hooked in (True, False):
        for sign in (-1.0, 1.0):
            torch.manual_seed(0)
            q = DiffQuantizer(make_net(), group_size=4, min_size=0, param="linear")
            opt = torch.optim.Adam([{"params": []}], lr=0.2)
            q.setup_optimizer(opt, lr=0.2)
            target = float(q.model_size().detach()) * 0.6  # init_bits 8: the start lowers them
            control = start_control(q, 1.0, target, bits_opt=opt if hooked else None)
            control.calibrate(float(q.model_size().detach()), q.true_model_size())
            worst = 0.0
            for _ in range(10):
                opt.zero_grad()
                (sign * q.model_size()).backward()  # -1: every width pulled up; +1: down
                opt.step()
                now = float(q.model_size().detach()) - control.offset
                worst = max(worst, abs(now - control.aim_mb))
            drift[hooked, sign] = worst / control.aim_mb
            q.detach()
    assert drift[True, -1.0] < 1e-3 and drift[True, 1.0] < 1e-3
    assert drift[False, -1.0] > 0.05 and drift[False, 1.0] > 0.05
