"""LSQ: learned step size quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020).

Signed levels in ``[-2**(b-1), 2**(b-1) - 1]`` times a learned step ``s`` per tensor, rounding
with a straight-through estimator, and the step's gradient scaled by
``1 / sqrt(numel * qp)`` (``qp`` the largest level) as in the paper.

A tensor whose values all have one sign when the quantizer is attached (BatchNorm scales, most
often) gets a one-signed grid instead: ``[0, 2**b - 1]`` (or its negative). The paper does the
same for activations after a ReLU. On the signed grid, 2 bits leave such a tensor only the
levels {0, 1}: every BatchNorm scale becomes 0 or one step, and a model with its BatchNorm
quantized collapsed to chance. The state stores each tensor's grid as its ``offset`` (levels
are stored non-negative, ``value = (level - offset) * step``), so states written before this
grid existed decode unchanged.

With ``grid="learned"`` each output channel (row) learns its own step on the signed grid,
starting at the row's MSE-optimal clip, and the state stores it as the ``learned`` scheme of
``grids.py`` (``alpha = step * 2**(b-1)`` per row, float16).
"""

import math

import torch
from torch import nn

from diffq_cli.quant import grids
from diffq_cli.quant.base import BaseQuantizer
from diffq_cli.quant.params import QParam
from diffq_cli.quant.registry import register
from diffq_cli.quant.sizes import fixed_bits
from diffq_cli.units import MIB_BITS


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    # Forward value x, gradient scaled by ``scale``.
    return (x - x * scale).detach() + x * scale


@register("lsq")
class LSQ(BaseQuantizer):
    """Learned step size quantizer on ``bits`` bits.

    Args:
        model: the model; attach after creating its optimizer.
        bits: integer bits per weight (2 to 15).
        suffix: name suffix of the registered parameters (``weight_lsq``), each the log of
            a tensor's step.
        min_size, float16, exclude, detect_bound: as in ``DiffQuantizer``.
        grid: "minmax" (one step per tensor, the paper's) or "learned" (one step per output
            channel; see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        bits: int = 8,
        min_size: float = 0.01,
        float16: bool = False,
        suffix: str = "_lsq",
        exclude=None,
        detect_bound: bool = True,
        grid: str = "minmax",
    ):
        self._set_grid(grid)
        self._rows = self._grid.per_row  # a step per output row, stored as the learned scheme
        if int(bits) != bits or not 2 <= bits <= 15:
            raise ValueError(f"LSQ bits must be an integer between 2 and 15, got {bits}")
        self.bits, self.suffix = int(bits), suffix
        self._qn, self._qp = 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        self._level_range: dict[int, tuple[int, int]] = {}  # id(QParam) -> (lowest, highest) level
        super().__init__(model, min_size, float16, exclude, detect_bound, group_size=0)

    def _config(self) -> dict:
        return {**super()._config(), "bits": self.bits, "grid": self.grid}

    def _levels(self, qp: QParam) -> tuple[int, int]:
        """(lowest, highest) integer level of ``qp``'s grid, decided once at attach time."""
        return self._level_range[id(qp)]

    def _side_bits(self, qp: QParam) -> int:
        return self._grid.side_bits(qp.param.shape)

    def _prepare(self, qp: QParam) -> None:
        if self._rows:
            self._prepare_rows(qp)
            return
        with torch.no_grad():
            lo, hi = (float(v) for v in torch.aminmax(qp.param.detach().float()))
        top = 2**self.bits - 1
        # One-signed tensors (a zero tensor counts as non-negative) use every level on their side.
        grid = (0, top) if lo >= 0 else (-top, 0) if hi <= 0 else (-self._qn, self._qp)
        self._level_range[id(qp)] = grid
        with torch.no_grad():
            # The paper's init, with the grid's largest level (a min/max init of one-signed
            # grids trained worse: 75 % against 92 % in tests/quant/test_lsq.py's model).
            init = 2 * qp.param.detach().abs().mean().float() / math.sqrt(max(grid[1], -grid[0]))
        # The parameter is log(step): Adam (the bits' optimizer, at `bits_lr`) then moves the step
        # by a fraction of itself per iteration, whatever its scale. On the raw step, lr 1e-2 moved
        # steps of ~0.01-0.05 by up to 0.01 per iteration, and 2-bit LSQ fell 10 points.
        step = nn.Parameter(init.clamp_min(1e-8).log().reshape(1).to(qp.param.device))
        module, attr = qp.bindings[0]
        module.register_parameter(attr + self.suffix, step)
        qp.bit_param = step

    def _prepare_rows(self, qp: QParam) -> None:
        """One log step per output channel on the signed grid."""
        self._level_range[id(qp)] = (-self._qn, self._qp)
        flat, shape = qp.param.detach().float().reshape(-1), qp.param.shape
        with torch.no_grad():
            step = grids.mse_alpha(flat, shape, self.bits) / self._qn
        qp.bit_param = nn.Parameter(step.clamp_min(1e-8).log())
        module, attr = qp.bindings[0]
        module.register_parameter(attr + self.suffix, qp.bit_param)

    def _fake_quant(self, qp: QParam) -> torch.Tensor:
        if self._rows:
            cols = grids.rows_of(qp.param.shape)[1]
            step = _grad_scale(qp.bit_param.float().exp(), 1 / math.sqrt(cols * self._qp))
            alpha = grids.per_row(step * self._qn, qp.param.shape)
            return grids.learned_fake(qp.param, alpha, torch.tensor(float(self._qn)))
        w = qp.param.float()
        low, high = self._levels(qp)
        step = _grad_scale(
            qp.bit_param.float().exp(), 1 / math.sqrt(qp.numel * max(high, -low))
        )
        q = _round_ste(torch.clamp(w / step, low, high))
        return (q * step).to(qp.param.dtype)

    def _train_weights(self):
        return [self._fake_quant(qp) for qp in self._qparams]

    def _true_bits(self, qp: QParam) -> torch.Tensor:
        return torch.full((qp.n_groups,), self.bits, dtype=torch.int64)

    def _encode(self, qp: QParam) -> dict:
        if self._rows:
            log_alpha = qp.bit_param.detach() + math.log(self._qn)
            return self._grid.encode(qp, self._true_bits(qp), alpha=log_alpha)
        step = qp.bit_param.detach().float().exp().reshape(())
        low, high = self._levels(qp)
        levels = torch.clamp(torch.round(qp.param.detach().float().reshape(-1) / step), low, high)
        return {
            "scheme": "lsq",
            "levels": (levels - low).to(torch.int32),  # stored non-negative
            "bits": self._true_bits(qp),
            "step": step,
            "offset": -low,
        }

    def model_size(self, exact: bool = False, file: bool = False) -> torch.Tensor:
        """Size in MiB: ``bits`` per weight plus a header per tensor (no gradient: LSQ learns
        steps, not widths; ``exact`` changes nothing since the widths are whole already); with
        ``file``, the coded file's estimate."""
        if file:
            return torch.tensor(self.file_model_size())
        total = self._float_bits() + sum(
            fixed_bits(self.bits, qp.numel, self._side_bits(qp)) for qp in self._qparams
        )
        return torch.tensor(total / MIB_BITS)
