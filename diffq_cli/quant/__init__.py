"""The quantization algorithms; imports torch only (usable without the CLI)."""

from diffq_cli.quant.base import BaseQuantizer, attached_quantizer, restore_quantized_state
from diffq_cli.quant.diffq import DiffQuantizer
from diffq_cli.quant.lsq import LSQ
from diffq_cli.quant.pack import pack, unpack
from diffq_cli.quant.uniform import UniformQuantizer

__all__ = [
    "BaseQuantizer",
    "DiffQuantizer",
    "LSQ",
    "UniformQuantizer",
    "attached_quantizer",
    "pack",
    "restore_quantized_state",
    "unpack",
]
