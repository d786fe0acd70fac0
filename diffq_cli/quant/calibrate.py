"""Post-quantization calibration: BatchNorm statistics re-estimated on the quantized weights.

Training under noise (or on float weights) leaves BatchNorm running statistics that describe
activations the quantized model never produces. ``recalibrate_batchnorm`` runs a few batches
through the model in evaluation mode (so an attached quantizer installs the truly quantized
weights) with only the BatchNorm layers collecting statistics, as a cumulative average.
"""

from collections.abc import Iterable

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def recalibrate_batchnorm(model: nn.Module, batches: Iterable, num_batches: int | None = None
                          ) -> int:
    """Replaces every BatchNorm's running mean and variance by their average over ``batches``.

    The model runs in evaluation mode (an attached quantizer shows it the quantized weights;
    dropout is off) without gradients; only the BatchNorm layers are switched to training mode
    with ``momentum=None`` (a cumulative moving average). Each module's momentum and training
    mode are restored afterwards, also when a forward fails.

    Args:
        model: the model (with its quantizer attached, if any).
        batches: inputs, or ``(inputs, targets, ...)`` tuples; moved to the model's device.
        num_batches: use at most this many batches (None: all of them).

    Returns:
        The number of batches used (0 leaves the statistics untouched).

    Example:
        >>> recalibrate_batchnorm(model, (x for x, _ in train_loader), num_batches=20)
    """
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms or num_batches == 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = next(model.parameters()).device
    used = 0
    try:
        model.eval()
        for m in norms:
            m.train()
        with torch.no_grad():
            for batch in batches:
                if num_batches is not None and used >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if used == 0:  # the first batch proves the data: only then reset
                    for m in norms:
                        m.reset_running_stats()
                        m.momentum = None
                model(x.to(device))
                used += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, mode in modes.items():
            m.training = mode
    return used
