"""Manual switching between float and quantized weights (the reference API's ``quantize()``,
``unquantize()`` and ``enter_quantize()``): a mixin of ``BaseQuantizer``, which supplies
``_qparams``, ``_others``, ``_dequantized`` and the ``_quantized_backup`` slot."""

from contextlib import contextmanager

import torch


def through_half(p: torch.Tensor) -> torch.Tensor:
    """``p`` rounded through float16 and back to its dtype (how ``float16=True`` stores it)."""
    with torch.no_grad():
        return p.detach().to(torch.float16).to(p.dtype)


class Switching:
    """``quantize`` / ``unquantize`` / ``enter_quantize`` of an attached quantizer."""

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
