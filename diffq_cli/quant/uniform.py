"""Uniform min/max quantization with a fixed number of bits (post-training or QAT)."""

import torch
from torch import nn

from diffq_cli.quant.base import BaseQuantizer
from diffq_cli.quant.params import QParam
from diffq_cli.quant.registry import register
from diffq_cli.quant.sizes import fixed_bits
from diffq_cli.units import MIB_BITS


@register("uniform", qat=True)  # the recipe method trains with the straight-through estimator
class UniformQuantizer(BaseQuantizer):
    """Every quantized tensor on ``bits`` bits over its [min, max] range.

    Args:
        model: the model.
        bits: bits per weight; may be fractional (``2**bits - 1`` steps, stored on
            ``ceil`` bits).
        qat: quantization-aware training: training forwards see quantized weights and gradients
            pass straight through the rounding (straight-through estimator). Without it, training
            uses the float weights and only evaluation is quantized.
        min_size, float16, exclude, detect_bound: as in ``DiffQuantizer``.
        grid: "minmax" (the tensor's [min, max]) or "learned" (each output channel clipped at
            its MSE-optimal zero-centred range, searched again at every quantization; needs
            whole ``bits``, 1 included).
    """

    def __init__(
        self,
        model: nn.Module,
        bits: float = 8.0,
        qat: bool = False,
        min_size: float = 0.01,
        float16: bool = False,
        exclude=None,
        detect_bound: bool = True,
        grid: str = "minmax",
    ):
        if not 1 <= bits <= 15:
            raise ValueError(f"bits must be between 1 and 15, got {bits}")
        self._set_grid(grid)
        if self._grid.per_row and bits != int(bits):  # 1 bit: +-alpha/2 (mid-rise levels)
            raise ValueError(
                f"grid='learned' needs whole bits, got {bits}; "
                "use grid='minmax' for fractional bits")
        self.bits, self.qat = float(bits), bool(qat)
        self._qmax = 2.0**self.bits - 1
        # Integer width that holds the largest level round(2**bits - 1).
        self._width = max(1, int(round(self._qmax)).bit_length())
        super().__init__(model, min_size, float16, exclude, detect_bound, group_size=0)

    def _config(self) -> dict:
        return {**super()._config(), "bits": self.bits, "qat": self.qat, "grid": self.grid}

    def _true_bits(self, qp: QParam) -> torch.Tensor:
        return torch.full((qp.n_groups,), self._width, dtype=torch.int64)

    def _encode(self, qp: QParam) -> dict:
        bits = self._true_bits(qp)
        if self._grid.per_row:  # whole bits: the mid-rise levels' own count
            return self._grid.encode(qp, bits)
        return self._grid.encode(qp, bits, qmax=self._qmax)

    def _train_weights(self):
        if not self.qat:
            return None
        if self._grid.per_row:  # straight through the evaluation's own levels (cached)
            return [qp.param + (q - qp.param).detach()
                    for qp, q in zip(self._qparams, self._eval_weights(), strict=True)]
        return [self._grid.fake(qp, self._true_bits(qp), self._qmax) for qp in self._qparams]

    def model_size(self, exact: bool = False, file: bool = False) -> torch.Tensor:
        """Size in MB with ``bits`` per weight (fractional bits counted as they are); with
        ``file``, the coded file's estimate."""
        if file:
            return torch.tensor(self.file_model_size())
        bits = self._width if exact else self.bits
        total = self._float_bits() + sum(fixed_bits(bits, qp.numel, self._side_bits(qp))
                                         for qp in self._qparams)
        return torch.tensor(total / MIB_BITS)
