"""DiffQ: pseudo quantization noise with a learned number of bits per group of weights.

Défossez, Adi, Synnaeve, "Differentiable Model Compression via Pseudo Quantization Noise",
TMLR 2022. In training each group of ``group_size`` weights gets noise of the size of the
quantization error for its current (real valued) number of bits; ``model_size()`` is a
differentiable function of those bits, so ``loss + mu * model_size()`` trades size for accuracy.
"""

import functools

import torch
from torch import nn

from diffq_cli.quant import grids
from diffq_cli.quant.base import BaseQuantizer
from diffq_cli.quant.coded import CodedTables
from diffq_cli.quant.gridnoise import channel_noisy_and_again, learned_noisy_and_again
from diffq_cli.quant.noise import FreshNoise, NoisePool
from diffq_cli.quant.ops import minmax_levels, noisy_weight_and_again, straight_through
from diffq_cli.quant.params import QParam
from diffq_cli.quant.registry import register
from diffq_cli.quant.state import HEADER_BITS, group_lengths
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
            (a sigmoid over [min_bits, max_bits], the paper's), "noise" (the noise scale in log
            space) or "linear" (the width itself, clamped: moves ~``lr`` bits per Adam step).
        noise: "gaussian" (std = step / 2) or "uniform" (on [-step/2, step/2]).
        noise_source: "pool" (pre-generated exact noise read at random offsets, fast on CPU) or
            "fresh" (new random numbers for every weight at every step).
        grid: "minmax" (each tensor's [min, max], the reference), "channel" (each output
            channel's [min, max]) or "learned" (a clipped zero-centred range per output
            channel, learned with the bits; see ``grids.py``). Training noise is drawn on the
            grid that evaluation rounds to.

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
        noise_source: str = "pool",
        grid: str = "minmax",
    ):
        if param not in MODES:
            raise ValueError(f"param must be one of {', '.join(MODES)}; got {param!r}")
        if noise not in ("gaussian", "uniform"):
            raise ValueError(f"noise must be 'gaussian' or 'uniform', got {noise!r}")
        if noise_source not in ("pool", "fresh"):
            raise ValueError(f"noise_source must be 'pool' or 'fresh', got {noise_source!r}")
        if not 1 <= min_bits <= init_bits <= max_bits <= 15:
            raise ValueError(
                "need 1 <= min_bits <= init_bits <= max_bits <= 15, got "
                f"min_bits={min_bits}, init_bits={init_bits}, max_bits={max_bits}"
            )
        self.min_bits, self.max_bits = float(min_bits), float(max_bits)
        self.init_bits, self.extra_bits = float(init_bits), float(extra_bits)
        self.suffix, self.param, self.noise = suffix, param, noise
        self.noise_source = noise_source
        self.grid = grids.check_grid(grid)
        self._bits_cache = None
        self._shape_cache = None
        self._tables = None  # coded.CodedTables, for model_size(file=True)
        self._frozen = False
        super().__init__(model, min_size, float16, exclude, detect_bound, group_size)
        self._noise = self._make_noise()

    def _config(self) -> dict:
        keys = ("min_bits", "max_bits", "init_bits", "extra_bits", "param", "noise",
                "noise_source", "grid")
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
        if self.grid == "learned":
            # log(alpha) per output channel, in the bits' optimizer group (like LSQ's step):
            # initialised at the MSE-optimal clip for the starting width.
            alpha = grids.mse_alpha(qp.param.reshape(-1), qp.param.shape, round(self.init_bits))
            qp.scale_param = nn.Parameter(alpha.log())
            module.register_parameter(attr + "_alpha" + self.suffix, qp.scale_param)

    def _make_noise(self):
        unique = self._qparams
        device = unique[0].param.device if unique else torch.device("cpu")
        if self.noise_source == "fresh" or not unique:
            return FreshNoise(self.noise, device)
        sizes = [qp.numel for qp in unique]
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

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, lr: float = 1e-3,
                        scale_lr: float | None = None, **kwargs):
        """As ``BaseQuantizer.setup_optimizer``; with ``param="linear"`` each step of
        ``optimizer`` is followed by a projection of the widths into [min_bits, max_bits] (a
        width at a bound then moves back at once when the loss asks, instead of after Adam's
        momentum has carried it far outside)."""
        super().setup_optimizer(optimizer, lr, scale_lr, **kwargs)
        if self.param == "linear":
            self._hooks.append(optimizer.register_step_post_hook(self._project))

    setup_opt = setup_optimizer

    def _project(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for qp in self._qparams:
                qp.bit_param.clamp_(self.min_bits, self.max_bits)

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
        if self.grid != "minmax":
            return [functools.partial(self._grid_noisy, qp, b, u, noise, sign * half)
                    for qp, b, u, (noise, sign) in zip(
                        unique, bits.split([qp.n_groups for qp in unique]), units, windows,
                        strict=True)]
        # Lazy: each noisy weight is computed when its layer is about to run (see install.py).
        return [
            functools.partial(
                noisy_weight_and_again, qp.param, u, noise, qp.group_size, sign * half
            )
            for qp, u, (noise, sign) in zip(unique, units, windows, strict=True)
        ]

    def _grid_noisy(self, qp: QParam, bits, unit, noise, mult: float):
        """(noisy training weight on a per-channel grid, its recompute function or None)."""
        if self.grid == "learned":
            return learned_noisy_and_again(qp.param, qp.scale_param.exp(), bits, noise,
                                           qp.group_size, mult)
        return channel_noisy_and_again(qp.param, unit, noise, qp.group_size, mult)

    def _frozen_weight(self, qp: QParam):
        """(``qp``'s weight truly quantized at its rounded widths, straight-through; no recipe)."""
        if self.grid == "learned":  # the scales keep learning, LSQ-style
            half = torch.exp2(grids.per_group(self._true_bits(qp), qp.numel, qp.group_size) - 1.0)
            alpha = grids.per_row(qp.scale_param.exp(), qp.param.shape)
            return grids.learned_fake(qp.param, alpha, half), None
        if self.grid == "channel":
            with torch.no_grad():
                q = self._dequantized(qp)
            return qp.param + (q - qp.param).detach(), None
        return straight_through(qp.param, self._true_bits(qp), qp.group_size), None

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
        if self.grid != "minmax":
            return grids.encode(self.grid, qp, bits, alpha=qp.scale_param)
        levels, low, high, _ = minmax_levels(qp.param.reshape(-1), bits, qp.group_size)
        return {"scheme": "minmax", "levels": levels, "bits": bits, "low": low, "high": high}

    # ------------------------------------------------------------ size
    def refresh_file_tables(self) -> CodedTables:
        """Measures again each tensor's coded bits per weight at each width (the weights
        moved): what ``model_size(file=True)`` interpolates. Returns the tables."""
        self._tables = CodedTables(self).refresh()
        return self._tables

    def model_size(self, exact: bool = False, file: bool = False) -> torch.Tensor:
        """Differentiable size in MB: learned bits of every weight, headers, kept floats.

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
        _, lengths, groups = self._shape_cache
        if file:
            if self._tables is None:
                self.refresh_file_tables()
            return self._tables.size_bits(bits + self.extra_bits, groups, lengths) / MIB_BITS
        payload = torch.dot(bits, lengths)
        # Per tensor: min/max (64 bits) + header (8) + each group's width in bits_bits bits,
        # bits_bits = bits needed for round(max bits) - min_bits. One fused multi-tensor max
        # (segment_reduce is 20x slower on CPU), on device: no host sync.
        top = torch.stack(torch._foreach_max(list(bits.detach().split(self._group_counts))))
        bits_bits = torch.ceil(torch.log2(1 + (torch.round(top) - self.min_bits).clamp_min(0)))
        side = 0 if self.grid == "minmax" else sum(self._side_bits(qp) for qp in unique)
        headers = HEADER_BITS * len(unique) + side + torch.dot(bits_bits, groups.float())
        return (payload + headers + self._float_bits()) / MIB_BITS
