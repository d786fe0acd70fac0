"""How much each weight's quantization noise would cost the loss, measured once on the float
model of a size-target run: the start gives whole tensors
their widths by it, and the fit at the freeze lowers / raises groups by it
(``quant/allocate.py`` has the model).

For noise of variance v on a weight, the loss rises by about ``0.5 * v * E[g^2]`` (the
diagonal Fisher approximation of the Hessian, from gradients); on a grid of range R at b bits v
is proportional to R^2 4^-b, so ``sum(E[g_i^2]) * R^2`` over a tensor or group is what the
widths are priced by.
"""

import torch

from diffq_cli.models.factory import logits
from diffq_cli.run.steps import to_device

BATCHES = 8  # batches of squared gradients for a size target's start


def grad_squares(model, loader, ctx, channels_last: bool, batches: int = BATCHES) -> dict:
    """{parameter name: squared gradient summed over ``batches`` batches} on this rank, for
    every parameter, measured on the float model before any quantizer is attached (eval mode:
    BatchNorm statistics are neither used from the batch nor updated)."""
    params = dict(model.named_parameters())
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
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
    return squares


def tensor_sensitivity(model, squares: dict, ctx) -> dict:
    """{parameter name: summed squared gradient (all ranks) times the squared range of the
    weight}: what the start allocates by."""
    params = dict(model.named_parameters())
    # Summed over ranks: every rank must start from the same widths.
    sums = ctx.dist.all_reduce_sum(torch.stack([sq.sum() for sq in squares.values()]))
    out = {}
    for n, total in zip(squares, sums.tolist(), strict=True):
        w = params[n].detach().float()
        out[n] = total * float(w.max() - w.min()) ** 2
    return out


def group_grad_sums(quantizer, squares: dict, ctx) -> list:
    """Per quantized parameter, its squared gradients summed per group (all ranks; float64,
    CPU): what the fit at the freeze prices groups by, times their grid's range then."""
    from diffq_cli.quant.allocate import group_sums

    sums = group_sums(quantizer, squares)
    if any(s is None for s in sums) or not sums:
        return sums
    flat = ctx.dist.all_reduce_sum(torch.cat(sums).to(next(iter(squares.values())).device))
    return list(flat.double().cpu().split([s.numel() for s in sums]))
