"""The quantizer base class: which parameters are quantized, forward hooks, sizes, saving.

A quantizer never changes a parameter in place during a forward pass. A forward pre-hook on the
model computes the weights that this forward should see (noisy in training, truly quantized in
eval) and places them in each owning module's instance ``__dict__``, which Python consults before
``nn.Module.__getattr__`` finds the registered Parameter; a forward hook removes them again. The
Parameters themselves stay registered, so optimizers, ``state_dict`` and DDP see the float
weights, and gradients reach them through the computed tensors.
"""

import weakref
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from diffq_cli.quant import grids
from diffq_cli.quant import state as state_io
from diffq_cli.quant.install import Installer
from diffq_cli.quant.params import QParam, discover
from diffq_cli.quant.sizes import tensor_bits
from diffq_cli.units import MIB_BITS, mib

# model -> attached quantizer; weak so that a dropped model frees its quantizer.
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, BaseQuantizer]" = weakref.WeakKeyDictionary()


def attached_quantizer(model: nn.Module):
    """The quantizer attached to ``model``, or None."""
    return _ATTACHED.get(model)


def through_half(p: torch.Tensor) -> torch.Tensor:
    """``p`` rounded through float16 and back to its dtype (how ``float16=True`` stores it)."""
    with torch.no_grad():
        return p.detach().to(torch.float16).to(p.dtype)


def restore_quantized_state(model: nn.Module, state: dict) -> None:
    """Restores a quantized state into a model, without the original quantizer (through the
    attached one, if any, so that its own parameters are left alone).

    Example:
        >>> restore_quantized_state(model, torch.load("model.th"))
    """
    quantizer = attached_quantizer(model)
    if quantizer is not None:
        quantizer.restore_quantized_state(state)
    else:
        state_io.restore(model, state)


class BaseQuantizer:
    """Shared machinery; subclasses fill the ``_prepare``/``_train_weights``/``_encode`` hooks.

    Args:
        model: the model to quantize (attach before wrapping it in DDP).
        min_size: tensors smaller than this many MB (as float32) are kept as floats.
        float16: store the kept float tensors in float16 (and count 16 bits per value).
        exclude: fnmatch patterns on full (``layer1.0.conv1.weight``) or short (``weight``) names.
        detect_bound: quantize a Parameter shared by several modules once.
        group_size: values per group (0: one group per tensor).
    """

    suffix = "_q"
    grid = "minmax"  # the grid's name; subclasses taking ``grid=`` call ``_set_grid`` first
    _grid = grids.GRIDS["minmax"]

    def __init__(
        self,
        model: nn.Module,
        min_size: float = 0.01,
        float16: bool = False,
        exclude: Iterable[str] | None = None,
        detect_bound: bool = True,
        group_size: int = 0,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if model in _ATTACHED:
            raise RuntimeError(
                "a quantizer is already attached to this model; call quantizer.detach() first"
            )
        if isinstance(exclude, str):
            exclude = [exclude]
        if group_size < 0:
            raise ValueError(
                f"group_size must be >= 0 (0 = one group per tensor), got {group_size}"
            )
        self.model = model
        self.min_size = float(min_size)
        self.float16 = bool(float16)
        self.exclude = list(exclude or [])
        self.detect_bound = bool(detect_bound)
        self.group_size = int(group_size)
        self._qparams, self._others, self._float_bindings = discover(
            model, self.min_size, self.exclude, self.detect_bound, self.group_size
        )
        for qp in self._qparams:
            self._prepare(qp)
        self._optimizer_ready = not self._bit_parameters()
        self._optimizer = None
        self._quantized_backup: list | None = None
        self._installer = Installer(model, [qp.bindings for qp in self._qparams])
        self._eval_cache: dict = {}
        self._half_cache: dict = {}
        self._hooks = [
            model.register_forward_pre_hook(self._pre_forward),
            model.register_forward_hook(self._post_forward, always_call=True),
        ]
        _ATTACHED[model] = self

    def _set_grid(self, name: str) -> None:
        self._grid = grids.get(name)
        self.grid = name

    # ------------------------------------------------------------ subclass hooks
    def _prepare(self, qp: QParam) -> None:
        """Creates and registers the learned tensors of ``qp`` (if any)."""

    @property
    def quantized(self) -> tuple[QParam, ...]:
        """The quantized parameters (each shared Parameter once), in model order: name,
        Parameter, groups, and the learned width / scale parameters of each."""
        return tuple(self._qparams)

    def _bit_parameters(self) -> list[nn.Parameter]:
        """Learned quantization parameters (bits or steps, then per-channel scales)."""
        return [p for qp in self._qparams for p in (qp.bit_param, qp.scale_param)
                if p is not None]

    def _side_bits(self, qp: QParam) -> int:
        """Bits of per-channel scales that ``qp``'s saved entry carries."""
        return self._grid.side_bits(qp.param.shape)

    def _train_weights(self) -> list | None:
        """Weights seen by a training forward, one per QParam (None: use the floats)."""
        return None

    def _encode(self, qp: QParam) -> dict:
        """Integer levels and what is needed to decode them (see ``state.py``)."""
        raise NotImplementedError

    def _true_bits(self, qp: QParam) -> torch.Tensor:
        """Integer bit width of each group of ``qp`` as used when saving."""
        raise NotImplementedError

    def _config(self) -> dict:
        return {
            "min_size": self.min_size,
            "float16": self.float16,
            "exclude": list(self.exclude),
            "detect_bound": self.detect_bound,
            "group_size": self.group_size,
        }

    # ------------------------------------------------------------ forward hooks
    def _pre_forward(self, module, args):
        if self._quantized_backup is not None:
            if not self.model.training:
                return  # quantize(): the parameters already hold quantized values
            # As in the reference: training goes on from the float weights, so optimizer steps
            # taken now are not thrown away by a later unquantize().
            self.unquantize()
        if self.model.training:
            if not self._optimizer_ready and torch.is_grad_enabled():
                raise RuntimeError(
                    "call quantizer.setup_optimizer(optimizer) (or quantizer.no_optimizer()) "
                    "before training the model"
                )
            self._installer.stage(self._train_factories())
        else:
            # Kept floats as the saved state stores them: the accuracy measured live is the
            # accuracy of the restored state, bit for bit.
            weights = self._eval_weights()
            self._installer.place(
                [
                    *((m, a, w) for qp, w in zip(self._qparams, weights, strict=True)
                      for m, a in qp.bindings),
                    *self._half_floats(),
                ]
            )

    def _post_forward(self, module, args, output):
        self._installer.clear()

    def _train_factories(self) -> list:
        """One factory per QParam returning (training weight, recompute fn or None), or None to
        keep the float; by default wraps the eagerly computed ``_train_weights``."""
        weights = self._train_weights()
        if weights is None:
            return [None] * len(self._qparams)
        return [None if w is None else (lambda w=w: (w, None)) for w in weights]

    def _eval_weights(self) -> list:
        """True quantized weights, cached until a parameter or its bits change."""
        out = []
        for qp in self._qparams:
            key = (qp.param._version, qp.param.data_ptr(), qp.param.device, qp.param.dtype)
            for p in (qp.bit_param, qp.scale_param):
                if p is not None:
                    key += (p._version, p.data_ptr())
            hit = self._eval_cache.get(qp.name)
            if hit is None or hit[0] != key:
                with torch.no_grad():
                    hit = (key, self._dequantized(qp))
                self._eval_cache[qp.name] = hit
            out.append(hit[1])
        return out

    def _half_floats(self) -> list:
        """(module, attr, value) of every kept float Parameter rounded through float16, as
        ``get_quantized_state`` stores it; empty without ``float16``. Cached per version."""
        if not self.float16:
            return []
        out = []
        for module, attr, p in self._float_bindings:
            key = (p._version, p.data_ptr(), p.device, p.dtype)
            hit = self._half_cache.get(id(p))
            if hit is None or hit[0] != key:
                hit = (key, through_half(p))
                self._half_cache[id(p)] = hit
            out.append((module, attr, hit[1]))
        return out

    def _dequantized(self, qp: QParam) -> torch.Tensor:
        enc = self._encode(qp)
        flat = state_io.decode(enc, qp.numel, qp.group_size)
        return flat.view(qp.param.shape).to(qp.param.dtype)

    # ------------------------------------------------------------ sizes
    def _float_bits(self) -> int:
        return (16 if self.float16 else 32) * sum(p.numel() for _, p in self._others)

    def true_model_size(self) -> float:
        """Size in MB with integer bit widths and naive bit packing (no compression)."""
        total = float(self._float_bits())
        with torch.no_grad():
            for qp in self._qparams:
                total += tensor_bits(self._true_bits(qp), qp.numel, qp.group_size,
                                     self._side_bits(qp))[1]
        return total / MIB_BITS

    def model_size(self, exact: bool = False, file: bool = False) -> torch.Tensor:
        """Size in MiB as a 0-d tensor, usable in a loss. Here (fixed widths) it is the true
        size and carries no gradient; DiffQ overrides it with a differentiable estimate.

        Args:
            exact: use the rounded widths of true quantization (the same here).
            file: the entropy-coded file's estimated size (``file_model_size()``) instead.
        """
        return torch.tensor(self.file_model_size() if file else self.true_model_size())

    def file_model_size(self) -> float:
        """Estimated MiB of the entropy-coded artifact of the state now (what ``diffq size``
        reports as the file), counted from the levels without coding them (``coded.py``)."""
        from diffq_cli.quant.coded import file_bits

        return file_bits(self) / MIB_BITS

    def packed_model_size(self) -> float:
        """MB of the tensors in ``get_quantized_state()`` (what ``torch.save`` stores)."""
        return mib(state_io.state_nbytes(self.get_quantized_state()))

    def compressed_model_size(self, level: int = 6) -> float:
        """MB of the saved state after gzip-like (zlib) compression, without writing a file."""
        return mib(len(state_io.compressed_bytes(self.get_quantized_state(), level)))

    # ------------------------------------------------------------ state
    def get_quantized_state(self) -> dict:
        """The packed quantized state: plain tensors and primitives, keyed by parameter name.

        ``torch.save`` it and ``torch.load`` it with the default ``weights_only=True``.
        """
        with torch.no_grad():
            encoded = {qp.name: self._encode(qp) for qp in self._qparams}
        return state_io.build_state(
            type(self).__name__,
            self._config(),
            encoded,
            {qp.name: qp for qp in self._qparams},
            self._others,
            dict(self.model.named_buffers()),
            self.float16,
        )

    def restore_quantized_state(self, state: dict) -> None:
        """Loads a state from ``get_quantized_state`` into the model (dequantized floats)."""
        if self._quantized_backup is not None:
            self.unquantize()
        state_io.restore(self.model, state, skip={id(p) for p in self._bit_parameters()})
        self._eval_cache.clear()

    # ------------------------------------------------------------ manual switching
    def quantize(self) -> None:
        """Replaces the float weights by their quantized values (undo with ``unquantize``)."""
        if self._quantized_backup is not None:
            return
        with torch.no_grad():
            backup = []
            for qp in self._qparams:
                backup.append((qp.param, qp.param.detach().clone()))
                qp.param.copy_(self._dequantized(qp))
            if self.float16:
                for _, p in self._others:
                    if p.is_floating_point():
                        backup.append((p, p.detach().clone()))
                        p.copy_(through_half(p))
        self._quantized_backup = backup

    def unquantize(self) -> None:
        """Restores the float weights saved by ``quantize``."""
        if self._quantized_backup is None:
            return
        with torch.no_grad():
            # Reversed: with detect_bound=False a Parameter may be backed up twice, and the
            # first backup holds its float value.
            for param, saved in reversed(self._quantized_backup):
                param.copy_(saved)
        self._quantized_backup = None

    @contextmanager
    def enter_quantize(self):
        """Context manager: quantized weights inside, floats back on exit."""
        self.quantize()
        try:
            yield
        finally:
            self.unquantize()

    # ------------------------------------------------------------ optimizer
    def setup_optimizer(self, optimizer: torch.optim.Optimizer, lr: float = 1e-3, **kwargs):
        """Adds the learned quantization parameters to ``optimizer`` as a new group.

        The group has no weight decay. ``kwargs`` go into the group (e.g. ``betas`` for Adam).
        Create the main optimizer before the quantizer, so that it does not already hold them.
        """
        params = self._bit_parameters()
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) in held for p in params):
            raise RuntimeError(
                "the optimizer already holds the quantizer's parameters: create the optimizer "
                "before the quantizer, or pass a separate optimizer for them"
            )
        if params:
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0,
                                       **kwargs})
        self._optimizer = optimizer
        self._optimizer_ready = True

    setup_opt = setup_optimizer  # older name, kept for source compatibility

    def no_optimizer(self) -> None:
        """Declares that the learned parameters stay fixed (training is then allowed)."""
        self._optimizer_ready = True

    def noise_state_dict(self) -> dict:
        """State of the training noise source, if any (for exact resumption)."""
        return {}

    def load_noise_state_dict(self, state: dict) -> None:
        """Restores what ``noise_state_dict`` returned."""

    # ------------------------------------------------------------ housekeeping
    def check_unused(self) -> list[str]:
        """Zeroes the bit gradients of parameters the task did not use; returns their names.

        Call after ``backward()``: a weight with no gradient would otherwise have its bits
        driven down by the size penalty alone.
        """
        unused = []
        for qp in self._qparams:
            grad = qp.param.grad
            if grad is None or not bool(grad.any()):
                unused.append(qp.name)
                for p in (qp.bit_param, qp.scale_param):
                    if p is not None and p.grad is not None:
                        p.grad.zero_()
        return unused

    def detach(self) -> None:
        """Removes hooks and learned parameters; the model is a plain float model again."""
        self.unquantize()
        self._installer.remove_hooks()
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for qp in self._qparams:
            module, attr = qp.bindings[0]
            for p in (qp.bit_param, qp.scale_param):
                if p is not None:
                    for key in [k for k, v in module._parameters.items() if v is p]:
                        module._parameters.pop(key)
        _ATTACHED.pop(self.model, None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self._qparams)} quantized tensors, "
            f"{len(self._others)} kept as float)"
        )
