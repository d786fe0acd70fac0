"""How much each weight tensor's quantization noise would cost the loss: the start of a size
target with ``train.start_widths: fisher``.

For noise of variance s^2 on every weight of a tensor, the loss rises by about
``0.5 * s^2 * sum(E[g_i^2])`` (the diagonal Fisher approximation of the Hessian, measured from
gradients). On a grid of range R at b bits the noise variance is R^2 4^-b / 12 (times a
constant), so the tensor's sensitivity ``sum(E[g_i^2]) * R^2`` is what
``quant.budget.start_at_size`` weighs against the bits a wider tensor costs (HAWQ-style
allocation, with the Fisher instead of the Hessian's trace).
"""

import torch

from diffq_cli.models.factory import logits
from diffq_cli.run.steps import to_device


def tensor_sensitivity(model, names, loader, batches: int, ctx, channels_last: bool) -> dict:
    """{parameter name: summed squared gradient over ``batches`` batches times the squared
    range of the weight} for ``names``, measured on the float model before any quantizer is
    attached (eval mode: BatchNorm statistics are neither used from the batch nor updated)."""
    params = dict(model.named_parameters())
    squares = {n: torch.zeros_like(params[n]) for n in names if n in params}
    was = model.training
    model.eval()
    criterion = torch.nn.CrossEntropyLoss()
    try:
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            x, y = to_device(x, y, ctx, channels_last)
            model.zero_grad(set_to_none=True)
            criterion(logits(model(x)), y).backward()
            for n, sq in squares.items():
                if params[n].grad is not None:
                    sq.add_(params[n].grad.detach().float().square())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    # Summed over ranks: every rank must start from the same widths.
    sums = ctx.dist.all_reduce_sum(torch.stack([sq.sum() for sq in squares.values()]))
    out = {}
    for (n, _), total in zip(squares.items(), sums.tolist(), strict=True):
        w = params[n].detach().float()
        out[n] = total * float(w.max() - w.min()) ** 2
    return out
