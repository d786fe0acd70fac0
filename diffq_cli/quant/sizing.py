"""What every quantizer reports and saves: sizes (true, differentiable, packed, compressed) and
the quantized state. A mixin of ``BaseQuantizer``, which supplies ``_qparams``, ``_others``,
``_true_bits``, ``_side_bits``, ``_encode`` and ``_config``."""

import torch

from diffq_cli.quant import state as state_io
from diffq_cli.units import MIB_BITS, mib


class SizesAndState:
    """Sizes in MiB and the saved state of an attached quantizer."""

    # ------------------------------------------------------------ sizes
    def _float_bits(self) -> int:
        return (16 if self.float16 else 32) * sum(p.numel() for _, p in self._others)

    def true_model_size(self) -> float:
        """Size in MB with integer bit widths and naive bit packing (no compression)."""
        total = float(self._float_bits())
        with torch.no_grad():
            for qp in self._qparams:
                total += state_io.tensor_bits(self._true_bits(qp), qp.numel, qp.group_size,
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
