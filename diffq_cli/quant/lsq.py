"""LSQ: learned step size quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020).

Signed levels in ``[-2**(b-1), 2**(b-1) - 1]`` times a learned step ``s`` per tensor, rounding
with a straight-through estimator, and the step's gradient scaled by
``1 / sqrt(numel * (2**(b-1) - 1))`` as in the paper.
"""

import math

import torch
from torch import nn

from diffq_cli.quant.base import BaseQuantizer
from diffq_cli.quant.params import QParam
from diffq_cli.quant.registry import register
from diffq_cli.quant.state import HEADER_BITS
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
        suffix: name suffix of the registered step parameters (``weight_lsq``).
        min_size, float16, exclude, detect_bound: as in ``DiffQuantizer``.
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
    ):
        if int(bits) != bits or not 2 <= bits <= 15:
            raise ValueError(f"LSQ bits must be an integer between 2 and 15, got {bits}")
        self.bits, self.suffix = int(bits), suffix
        self._qn, self._qp = 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        super().__init__(model, min_size, float16, exclude, detect_bound, group_size=0)

    def _config(self) -> dict:
        return {**super()._config(), "bits": self.bits}

    def _prepare(self, qp: QParam) -> None:
        with torch.no_grad():
            init = 2 * qp.param.detach().abs().mean().float() / math.sqrt(self._qp)
        step = nn.Parameter(init.clamp_min(1e-8).reshape(1).to(qp.param.device))
        module, attr = qp.bindings[0]
        module.register_parameter(attr + self.suffix, step)
        qp.bit_param = step

    def _fake_quant(self, qp: QParam) -> torch.Tensor:
        w = qp.param.float()
        step = _grad_scale(
            qp.bit_param.float().abs().clamp_min(1e-8), 1 / math.sqrt(qp.numel * self._qp)
        )
        q = _round_ste(torch.clamp(w / step, -self._qn, self._qp))
        return (q * step).to(qp.param.dtype)

    def _train_weights(self):
        return [self._fake_quant(qp) for qp in self._qparams]

    def _true_bits(self, qp: QParam) -> torch.Tensor:
        return torch.full((qp.n_groups,), self.bits, dtype=torch.int64)

    def _encode(self, qp: QParam) -> dict:
        step = qp.bit_param.detach().float().abs().clamp_min(1e-8).reshape(())
        levels = torch.clamp(
            torch.round(qp.param.detach().float().reshape(-1) / step), -self._qn, self._qp
        )
        return {
            "scheme": "lsq",
            "levels": (levels + self._qn).to(torch.int32),
            "bits": self._true_bits(qp),
            "step": step,
            "offset": self._qn,
        }

    def model_size(self, exact: bool = False) -> torch.Tensor:
        """Size in MiB: ``bits`` per weight plus a header per tensor (no gradient: LSQ learns
        steps, not widths; ``exact`` changes nothing since the widths are whole already)."""
        total = self._float_bits() + sum(
            self.bits * qp.numel + HEADER_BITS for qp in self._qparams
        )
        return torch.tensor(total / MIB_BITS)
