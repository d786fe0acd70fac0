"""Accuracy of a model on a loader, and of an artifact on its dataset."""


def accuracy(model, loader, device="cpu", max_batches=None) -> float:
    """Top-1 accuracy in percent over ``loader`` (eval mode, no gradients)."""
    correct, total = count_correct(model, loader, device, max_batches)
    return 100.0 * correct / max(total, 1)


def count_correct(model, loader, device="cpu", max_batches=None, limit=None) -> tuple[int, int]:
    """(correct top-1 predictions, samples seen) over ``loader`` in eval mode.

    Args:
        limit: count only the first ``limit`` samples (a distributed rank's padding follows).
    """
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            if limit is not None:
                if total >= limit:
                    break
                x, y = x[: limit - total], y[: limit - total]
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    model.train(was_training)
    return correct, total
