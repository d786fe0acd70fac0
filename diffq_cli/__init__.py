"""diffq_cli: DiffQ quantization-aware fine-tuning, as a library and the ``diffq`` CLI.

Library use::

    from diffq_cli import DiffQuantizer
    quantizer = DiffQuantizer(model, group_size=8)
    quantizer.setup_optimizer(optimizer)
    loss = task_loss + 1e-3 * quantizer.model_size()

The quantizers are imported lazily so that ``diffq --help`` does not pay for importing torch.
"""

__version__ = "0.1.0"

__all__ = ["DiffQuantizer", "UniformQuantizer", "LSQ", "restore_quantized_state", "__version__"]


def __getattr__(name):
    if name in __all__:
        from diffq_cli import quant

        return getattr(quant, name)
    raise AttributeError(f"module 'diffq_cli' has no attribute {name!r}")
