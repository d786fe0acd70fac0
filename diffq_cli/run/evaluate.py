"""Accuracy of a model on a loader, and of an artifact on its dataset (``diffq eval``)."""

import contextlib
from pathlib import Path

from diffq_cli.errors import InputError
from diffq_cli.models.factory import logits


def count_correct(model, loader, device="cpu", max_batches=None) -> tuple[int, int]:
    """(correct top-1 predictions, samples) over ``loader``, in eval mode without gradients.

    The model's train/eval mode is restored afterwards, so the training loop can call it.
    """
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                correct += int((logits(model(x)).argmax(1) == y).sum())
                total += y.numel()
    finally:
        model.train(was_training)
    return correct, total


def accuracy(model, loader, device="cpu", max_batches=None) -> float:
    """Top-1 accuracy in percent (0-100) over ``loader``, in eval mode without gradients.

    Args:
        model: a classifier returning logits (a tuple's first element is used).
        loader: yields ``(images, labels)`` batches.
        device: where to run the batches.
        max_batches: stop after this many batches (None: the whole loader).

    Returns:
        The accuracy; 0.0 for an empty loader.

    Example:
        >>> accuracy(model, val_loader)
        97.5
    """
    correct, total = count_correct(model, loader, device, max_batches)
    return 100.0 * correct / max(total, 1)


def evaluate_artifact(path, dataset=None, data_dir=None, batch_size=256, device="cpu",
                      val_subset=None, activity=None) -> dict:
    """Rebuild the model from an artifact alone and measure its quantized accuracy.

    Args:
        path: the artifact (``model.th``) written by ``diffq finetune``.
        dataset: dataset to evaluate on (default: the one the artifact records).
        data_dir: its directory (default: the recorded one, when the dataset is the recorded one).
        batch_size: evaluation batch size.
        device: where to run the model.
        val_subset: evaluate on the first N validation images only (None: all).
        activity: ``activity(description)`` gives a context manager shown while the model
            runs (``Reporter.activity``), entered only once every input has been checked.

    Returns:
        ``{"path", "model", "dataset", "accuracy", "samples", "recorded_accuracy"}``; the last is
        the quantized accuracy measured at the end of training (None if not recorded).

    Raises:
        InputError: unreadable file, not an artifact, missing data, or a dataset whose classes
            or channels do not fit the model.

    Example:
        >>> evaluate_artifact("runs/resnet18-digits-mu0.001/model.th")["accuracy"]
        96.9
    """
    from diffq_cli.config.schema import DataConfig
    from diffq_cli.data.loaders import build_loaders
    from diffq_cli.files.artifact import load_artifact, rebuild_model

    artifact = load_artifact(path)
    data, spec = artifact.get("data") or {}, artifact["model"]
    recorded = data.get("dataset")
    if dataset is None and recorded is None:
        raise InputError(f"{path} records no dataset; pass --dataset NAME")
    if dataset is None or _same_dataset(dataset, recorded):
        dataset = recorded
        recipe_data = (artifact.get("recipe") or {}).get("data") or {}
        data_dir = data_dir or recipe_data.get("data_dir")
    size = int(data.get("input_size") or spec.get("input_size") or 32)
    loader_spec = DataConfig(dataset=dataset, data_dir=data_dir, input_size=size,
                           batch_size=batch_size, eval_batch_size=batch_size, train_subset=1,
                           val_subset=val_subset)
    _, val_loader, info = build_loaders(loader_spec)
    _check_fits(info, spec)
    model = rebuild_model(artifact).to(device)
    with (activity or _quiet)(f"evaluating {path} on {info['dataset']}"):
        correct, total = count_correct(model, val_loader, device)
    if total == 0:
        raise InputError(f"the {info['dataset']} validation split is empty; check --data-dir")
    return {
        "path": str(Path(path)),
        "model": spec.get("name"),
        "dataset": info["dataset"],
        "accuracy": 100.0 * correct / total,
        "samples": total,
        "recorded_accuracy": (artifact.get("metrics") or {}).get("accuracy"),
    }


def _quiet(description: str):
    return contextlib.nullcontext()


def _same_dataset(a, b) -> bool:
    def norm(name):
        return str(name).strip().lower().replace("_", "-")

    return b is not None and norm(a) == norm(b)


def _check_fits(info: dict, spec: dict) -> None:
    """The dataset must give the model's channels and labels within its classes."""
    if info["in_chans"] != spec["in_chans"] or info["num_classes"] > spec["num_classes"]:
        raise InputError(
            f"dataset {info['dataset']} has {info['num_classes']} classes and {info['in_chans']} "
            f"channel(s) but the model was built for {spec['num_classes']} classes and "
            f"{spec['in_chans']} channel(s); evaluate on a matching dataset"
        )


