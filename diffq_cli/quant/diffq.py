"""DiffQ: pseudo quantization noise with a learned number of bits per group of weights.

Défossez, Adi, Synnaeve, "Differentiable Model Compression via Pseudo Quantization Noise",
TMLR 2022. In training each group of ``group_size`` weights gets noise of the size of the
quantization error for its current (real valued) number of bits; ``model_size()`` is a
differentiable function of those bits, so ``loss + mu * model_size()`` trades size for accuracy.
"""

import functools

import torch
from torch import nn

from diffq_cli.quant.base import BaseQuantizer
from diffq_cli.quant.coded import CodedTables
from diffq_cli.quant.noise import NoisePool
from diffq_cli.quant.params import QParam
from diffq_cli.quant.registry import register
from diffq_cli.quant.sizes import group_lengths, header_bits
from diffq_cli.quant.widths import MODES, BitsAndUnit, forget_hook, init_value, unit_bounds
from diffq_cli.units import MIB_BITS


@register("diffq")
class DiffQuantizer(BaseQuantizer):
    """Differentiable quantizer (see the module docstring).

    Args:
        model: the model; attach after creating its optimizer, before DDP wrapping.
        min_size: tensors under this many MB (as float32) stay float.
        float16: keep those tensors in float16 in the saved state.
        group_size: weights sharing one bit width (0: one per tensor). 8 to 16 in the paper.
        min_bits, max_bits: range of the learned bit widths.
        init_bits: starting bit width.
        extra_bits: added to the learned bits before rounding, at true quantization.
        suffix: name suffix of the registered bit parameters (``weight_diffq``).
        exclude: fnmatch patterns of parameter names (full or short) to keep float.
        detect_bound: quantize a Parameter shared by several modules once.
        param: how one learned number gives a group's width (``quant/widths.py``): "bits"
            (a sigmoid over [min_bits, max_bits], the paper's) or "noise" (the noise scale in
            log space, the reference's other option).
        noise: "gaussian" (std = step / 2, the paper's) or "uniform" (on [-step/2, step/2]:
            rounding's variance, measured better at 2-3 bits' size; the CLI's default).
        grid: "minmax" (each tensor's [min, max], the reference) or "learned" (a clipped
            zero-centred range per output channel, learned with the bits; ``grids.py``).
            Training noise is drawn on the grid that evaluation rounds to.

    Example:
        >>> quantizer = DiffQuantizer(model, group_size=8)
        >>> quantizer.setup_optimizer(optimizer)
        >>> loss = criterion(model(x), y) + 1e-3 * quantizer.model_size()
    """

    def __init__(
        self,
        model: nn.Module,
        min_size: float = 0.01,
        float16: bool = False,
        group_size: int = 1,
        min_bits: float = 2,
        max_bits: float = 15,
        init_bits: float = 8,
        extra_bits: float = 0,
        suffix: str = "_diffq",
        exclude=None,
        detect_bound: bool = True,
        param: str = "bits",
        noise: str = "gaussian",
        grid: str = "minmax",
    ):
        if param not in MODES:
            raise ValueError(f"param must be one of {', '.join(MODES)}; got {param!r}")
        if noise not in ("gaussian", "uniform"):
            raise ValueError(f"noise must be 'gaussian' or 'uniform', got {noise!r}")
        if not 1 <= min_bits <= init_bits <= max_bits <= 15:
            raise ValueError(
                "need 1 <= min_bits <= init_bits <= max_bits <= 15, got "
                f"min_bits={min_bits}, init_bits={init_bits}, max_bits={max_bits}"
            )
        self.min_bits, self.max_bits = float(min_bits), float(max_bits)
        self.init_bits, self.extra_bits = float(init_bits), float(extra_bits)
        self.suffix, self.param, self.noise = suffix, param, noise
        self._set_grid(grid)
        self._bits_cache = None
        self._shape_cache = None
        self._tables = None  # coded.CodedTables, for model_size(file=True)
        self._frozen = False
        super().__init__(model, min_size, float16, exclude, detect_bound, group_size)
        self._noise = self._make_noise()

    def _config(self) -> dict:
        keys = ("min_bits", "max_bits", "init_bits", "extra_bits", "param", "noise", "grid")
        return {**super()._config(), **{k: getattr(self, k) for k in keys}}

    # ------------------------------------------------------------ bits <-> logits
    def _unit_bounds(self):
        return unit_bounds(self.min_bits, self.max_bits)

    def _init_logit(self) -> float:
        return init_value(self.param, self.init_bits, self.min_bits, self.max_bits)

    def _bits_and_unit(self, *logits: torch.Tensor):
        """Real bits and noise unit (step for a range of 1) of the groups of ``logits``
        (several tensors are concatenated)."""
        if self.param != "noise":
            lo, hi = self.min_bits, self.max_bits
        else:
            lo, hi = self._unit_bounds()
        return BitsAndUnit.apply(lo, hi, self.param, *logits)

    # ------------------------------------------------------------ hooks
    def _prepare(self, qp: QParam) -> None:
        logit = nn.Parameter(torch.full((qp.n_groups,), self._init_logit(), device=qp.param.device))
        module, attr = qp.bindings[0]
        module.register_parameter(attr + self.suffix, logit)
        qp.bit_param = logit
        # A learned grid's log(alpha) per output channel, in the bits' optimizer group (like
        # LSQ's step), starts at the MSE-optimal clip for the starting width.
        scale = self._grid.init_scale(qp, self.init_bits)
        if scale is not None:
            qp.scale_param = nn.Parameter(scale)
            module.register_parameter(attr + "_alpha" + self.suffix, qp.scale_param)

    def _make_noise(self):
        unique = self._qparams
        device = unique[0].param.device if unique else torch.device("cpu")
        sizes = [qp.numel for qp in unique] or [1]
        return NoisePool(self.noise, max(sizes), sum(sizes), device)

    def _batched_bits(self, unique, reuse: bool = False):
        """(bits, unit) of every group of every parameter, in one batched op over all logits.

        With ``reuse``, takes (once) the result of the last training forward if no logit changed
        since: ``loss + mu * model_size()`` then shares the forward's graph instead of
        recomputing it. Taken once, so a second ``model_size()`` builds a fresh graph.
        """
        key = tuple((qp.bit_param._version, qp.bit_param.data_ptr()) for qp in unique)
        cached, self._bits_cache = self._bits_cache, None
        if reuse and cached is not None and cached[0] == key and torch.is_grad_enabled():
            return cached[1], cached[2]
        bits, unit = self._bits_and_unit(*(qp.bit_param for qp in unique))
        if not reuse and torch.is_grad_enabled():
            self._bits_cache = (key, bits, unit)
            if unit.requires_grad:
                unit.register_hook(forget_hook(self, self._bits_cache))
        return bits, unit

    def freeze_bits(self, frozen: bool = True) -> None:
        """Training forwards see the truly quantized weights (rounded widths, straight-through
        gradient to the weights) instead of noise: a final phase that trains the weights for
        the rounding the evaluation applies. The widths stop moving only if the bit logits are
        no longer stepped (no gradient reaches them from a frozen forward; leave
        ``model_size()`` out of the loss too)."""
        self._frozen = bool(frozen)

    @property
    def frozen(self) -> bool:
        """Whether ``freeze_bits()`` is on."""
        return self._frozen

    def _train_factories(self):
        unique = self._qparams
        if not unique:
            return []
        if self._frozen:
            return [functools.partial(self._frozen_weight, qp) for qp in unique]
        if self._noise.device != unique[0].param.device:
            self._noise.to(unique[0].param.device)
        bits, unit = self._batched_bits(unique)
        units = unit.split([qp.n_groups for qp in unique])
        # Refresh first: the previous step's windows are released by now, so the replaced
        # chunk is freed at once instead of living alongside its successor until the backward.
        self._noise.refresh()
        windows = self._noise.windows([qp.numel for qp in unique])
        half = 0.5 if self.noise == "gaussian" else 1.0
        # Lazy: each noisy weight is computed when its layer is about to run (see install.py).
        return [functools.partial(self._grid.noisy, qp, b, u, noise, sign * half)
                for qp, b, u, (noise, sign) in zip(
                    unique, bits.split([qp.n_groups for qp in unique]), units, windows,
                    strict=True)]

    def _frozen_weight(self, qp: QParam):
        """(``qp``'s weight truly quantized at its rounded widths, straight-through; no recipe);
        a learned grid's scales keep learning, LSQ-style."""
        return self._grid.fake(qp, self._true_bits(qp)), None

    def noise_state_dict(self) -> dict:
        """State of the noise source (for exact resumption of a training run)."""
        return self._noise.state_dict()

    def load_noise_state_dict(self, state: dict) -> None:
        self._noise.load_state_dict(state)

    def _true_bits(self, qp: QParam) -> torch.Tensor:
        bits, _ = self._bits_and_unit(qp.bit_param.detach())
        return torch.clamp(torch.round(bits + self.extra_bits), 1, 15).to(torch.int64)

    def _encode(self, qp: QParam, bits: torch.Tensor | None = None) -> dict:
        bits = self._true_bits(qp) if bits is None else bits
        if qp.scale_param is not None:
            return self._grid.encode(qp, bits, alpha=qp.scale_param)
        return self._grid.encode(qp, bits)

    # ------------------------------------------------------------ size
    def refresh_file_tables(self) -> CodedTables:
        """Measures again each tensor's coded bits per weight at each width (the weights
        moved): what ``model_size(file=True)`` interpolates. Returns the tables."""
        self._tables = CodedTables(self).refresh()
        return self._tables

    def model_size(self, exact: bool = False, file: bool = False) -> torch.Tensor:
        """Differentiable size in MB: learned bits of every weight, plus the headers and kept
        floats as the true size counts them (``sizes.py``: the headers follow the rounded
        widths, so they carry no gradient).

        Args:
            exact: use the rounded bits of true quantization (not differentiable).
            file: the entropy-coded file's size instead (``coded.py``; its tables are measured
                on the first call and by ``refresh_file_tables()``).
        """
        if exact:
            return torch.tensor(self.file_model_size() if file else self.true_model_size())
        unique = self._qparams
        if not unique:
            return torch.tensor(self._float_bits() / MIB_BITS)
        bits, _ = self._batched_bits(unique, reuse=True)
        device = bits.device
        # Values per group (the last group of a tensor may be shorter) and groups per tensor
        # only depend on shapes: cached.
        key = (tuple(qp.numel for qp in unique), self.group_size, device)
        if self._shape_cache is None or self._shape_cache[0] != key:
            lengths = torch.cat([group_lengths(qp.numel, qp.group_size, device) for qp in unique])
            groups = torch.tensor([qp.n_groups for qp in unique], device=device)
            self._shape_cache = (key, lengths.float(), groups)
            self._group_counts = [qp.n_groups for qp in unique]
            self._side = sum(self._side_bits(qp) for qp in unique)
        _, lengths, groups = self._shape_cache
        if file:
            if self._tables is None:
                self.refresh_file_tables()
            return self._tables.size_bits(bits + self.extra_bits, groups, lengths) / MIB_BITS
        payload = torch.dot(bits, lengths)
        # The true size's header rule, on the widths as true quantization rounds them. One
        # fused multi-tensor max and min (segment_reduce is 20x slower on CPU), on device.
        rounded = torch.clamp(torch.round(bits.detach() + self.extra_bits), 1, 15)
        parts = list(rounded.split(self._group_counts))
        spread = torch.stack(torch._foreach_max(parts)) + torch.stack(
            torch._foreach_max(torch._foreach_neg(parts)))
        headers = header_bits(spread, groups, self._side)
        return (payload + headers + self._float_bits()) / MIB_BITS
