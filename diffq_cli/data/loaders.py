"""Data loading: ``build_loaders(spec)`` -> ``(train_loader, val_loader, info)``.

Datasets: the embedded 8x8 ``digits`` set (default, works offline), ``mnist`` / ``fashion-mnist``
(raw idx files, read here, or fetched by torchvision), ``cifar10`` / ``cifar100`` (torchvision),
``imagefolder`` (``train/`` and ``val/`` class folders) and ``idx`` (any idx files in a folder).

Tensor datasets keep their native size and dtype (uint8 for the downloaded sets) and are scaled,
resized, augmented and normalised one batch at a time in the collate function: 60k 28x28 images
stay 47 MB instead of 245 MB as float at 32x32, and resizing a batch at once is cheap.
torch/torchvision are imported inside the functions so that importing this module is fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffq_cli.config.schema import DataConfig
from diffq_cli.data.idx import find_idx_files, read_idx
from diffq_cli.errors import InputError, first_line

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "idx")

_DIGITS_FILE = Path(__file__).parent / "assets" / "digits.npz"
_DIGITS_SPLIT_SEED = 1998  # fixed: the val split never depends on the run's seed
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR = {  # torchvision class name, classes, per-channel mean/std of the training set
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_MNIST_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_DOWNLOAD_ERRORS = (OSError, RuntimeError)  # URLError is an OSError; torchvision wraps in Runtime


def build_loaders(spec: DataConfig, distributed: bool = False, seed: int = 0):
    """Build the train and validation loaders for ``spec``.

    Args:
        spec: the recipe's ``data`` section (``config.DataConfig``: validated when built).
        distributed: when True and ``torch.distributed`` is initialised, shard both splits with
            ``DistributedSampler`` (``distributed.Ddp.set_epoch`` reshuffles it each epoch).
        seed: the training shuffle's seed (the validation split never depends on it).

    Returns:
        ``(train_loader, val_loader, info)``. Batches are ``(images, labels)``: float NCHW
        normalised images and int64 labels. ``info`` has ``dataset, num_classes, in_chans,
        input_size, mean, std, train_size, val_size``.

    Example:
        >>> train, val, info = build_loaders(DataConfig(dataset="digits", input_size=32))
    """
    name = _canonical_name(spec.dataset)
    if name == "imagefolder":
        train_ds, val_ds, info, collate = _imagefolder(spec)
    else:
        if name == "digits":
            (xtr, ytr), (xva, yva), scale, num_classes = _digits()
        elif name in _CIFAR:
            (xtr, ytr), (xva, yva), scale, num_classes = _cifar(name, spec)
        else:
            (xtr, ytr), (xva, yva), scale, num_classes = _idx_dataset(name, spec)
        if name in _CIFAR:
            mean, std = _CIFAR[name][2:]
        else:  # grayscale: exact statistics of the training pixels, from a histogram
            mean, std = _gray_stats(xtr, scale)
        present = len(np.unique(ytr))  # labels seen in training, before any subset
        xtr, ytr = xtr[: spec.train_subset], ytr[: spec.train_subset]
        xva, yva = xva[: spec.val_subset], yva[: spec.val_subset]
        train_ds, val_ds = _tensors(xtr, ytr), _tensors(xva, yva)
        rgb_augment = bool(spec.augment) and xtr.shape[1] == 3  # flips would corrupt digits
        collate = [_BatchPrep(scale, spec.input_size, mean, std, aug)
                   for aug in (rgb_augment, False)]
        info = {"num_classes": num_classes, "in_chans": int(xtr.shape[1]), "mean": list(mean),
                "std": list(std), "classes_present": present}
    info.update(dataset=name, input_size=spec.input_size, train_size=len(train_ds),
                val_size=len(val_ds))
    present = info.pop("classes_present", info["num_classes"])
    if present < 2:  # one class trains to a meaningless "100 %"
        raise InputError(
            f"dataset {name} has {present} class(es) in its training split; classification "
            "needs at least 2: check --data-dir (one sub-folder per class) or the label files"
        )
    train = _loader(train_ds, spec.batch_size, True, spec, collate[0], distributed, seed)
    val = _loader(val_ds, spec.eval_batch_size, False, spec, collate[1], distributed, seed)
    return train, val, info


class _BatchPrep:
    """Collate raw (uint8 or small-int) images into a normalised float batch at ``size``."""

    def __init__(self, scale, size, mean, std, augment):
        self.scale, self.size, self.augment = scale, size, augment
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, items):
        import torch
        import torch.nn.functional as F

        x = torch.stack([item[0] for item in items]).float().mul_(self.scale)
        y = torch.stack([item[1] for item in items]).long()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        if self.augment:
            x = _crop_flip(x, pad=max(1, self.size // 8))
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std, y


def _crop_flip(x, pad):
    """Random crop after zero padding, and random horizontal flip, per sample."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2)).tolist()
    x = torch.stack([padded[i, :, r:r + h, c:c + w] for i, (r, c) in enumerate(offsets)])
    flip = torch.rand(n) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _canonical_name(dataset) -> str:
    name = str(dataset).strip().lower().replace("_", "-")
    name = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
            "image-folder": "imagefolder"}.get(name, name)
    if name not in DATASETS:
        raise InputError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    return name


def _need_dir(spec, name, hint) -> Path:
    if not spec.data_dir:
        raise InputError(f"dataset {name} needs --data-dir DIR ({hint})")
    return Path(spec.data_dir).expanduser()


def _tensors(images: np.ndarray, labels: np.ndarray):
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.from_numpy(np.ascontiguousarray(images)),
                         torch.from_numpy(labels.astype(np.int64)))


def _gray_stats(images: np.ndarray, scale: float):
    """Mean/std of the scaled pixels; for uint8 via a histogram (exact, no float copy)."""
    if images.dtype != np.uint8:
        values = images.astype(np.float64) * scale
        return (round(float(values.mean()), 6),), (round(float(values.std()), 6),)
    counts = np.bincount(images.reshape(-1).astype(np.int64), minlength=1).astype(np.float64)
    values = np.arange(len(counts)) * scale
    mean = float((counts * values).sum() / counts.sum())
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum()))
    return (round(mean, 6),), (round(std, 6),)


def _digits():
    with np.load(_DIGITS_FILE) as f:
        images, labels = f["images"][:, None], f["labels"]
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    n_val = len(labels) // 5  # 80/20 split
    tr, va = order[n_val:], order[:n_val]
    return (images[tr], labels[tr]), (images[va], labels[va]), 1.0 / 16, 10


def _idx_dataset(name, spec):
    hint = "a folder holding train-/t10k- images/labels idx files, e.g. " \
        "/usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist"
    root = _need_dir(spec, name, hint)
    dirs = [root] + ([root / _MNIST_CLASS[name] / "raw"] if name in _MNIST_CLASS else [])
    files = next((f for f in map(find_idx_files, dirs) if f), None)
    if files is None and name in _MNIST_CLASS and spec.download:
        files = _download_mnist(name, root)
    if files is None:
        fetch = "pass --download to fetch it, or " if name in _MNIST_CLASS else ""
        raise InputError(f"{name} not found under {root}; {fetch}--data-dir pointing at {hint}")
    splits = []
    for split in ("train", "val"):
        images, labels = read_idx(files[f"{split}-images"]), read_idx(files[f"{split}-labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(f"idx files in {root} do not hold N images and N labels ({split})")
        splits.append((images[:, None], labels))
    num_classes = int(max(splits[0][1].max(), splits[1][1].max())) + 1
    scale = 1.0 / 255 if splits[0][0].dtype == np.uint8 else 1.0
    return splits[0], splits[1], scale, num_classes


def _download_mnist(name, root):
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, _MNIST_CLASS[name])(root=str(root), train=train, download=True)
    except _DOWNLOAD_ERRORS as err:
        raise _download_error(name, root, err) from None
    return find_idx_files(root / _MNIST_CLASS[name] / "raw")


def _download_error(name, root, err) -> InputError:
    first = first_line(err, limit=10_000)
    return InputError(f"could not download {name} into {root} (offline?): {first}")


def _cifar(name, spec):
    import torchvision.datasets as tvd

    cls_name, num_classes = _CIFAR[name][:2]
    root = _need_dir(spec, name, "the folder that holds or will hold the torchvision download")
    splits = []
    try:
        for train in (True, False):
            ds = getattr(tvd, cls_name)(root=str(root), train=train, download=spec.download)
            splits.append((ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)))
    except _DOWNLOAD_ERRORS as err:
        if not spec.download:
            raise InputError(f"{name} not found under {root}; pass --download to fetch it, or "
                             f"--data-dir pointing at the folder holding {cls_name}") from None
        raise _download_error(name, root, err) from None
    return splits[0], splits[1], 1.0 / 255, num_classes


def _imagefolder(spec):
    import torchvision.transforms as T
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    root = _need_dir(spec, "imagefolder", "with train/ and val/ class subfolders")
    size, (mean, std) = spec.input_size, _IMAGENET_STATS
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    val_tf = T.Compose([T.Resize(size), T.CenterCrop(size), *tail])
    train_tf = val_tf
    if spec.augment:
        train_tf = T.Compose([T.Resize(size), T.RandomCrop(size, padding=max(1, size // 8)),
                              T.RandomHorizontalFlip(), *tail])
    sets = []
    for split, tf in (("train", train_tf), ("val", val_tf)):
        if not (root / split).is_dir():
            raise InputError(f"imagefolder needs {root / split}/ with one subfolder per class")
        try:
            sets.append(ImageFolder(str(root / split), transform=tf))  # loads as RGB
        except (FileNotFoundError, OSError) as err:
            raise InputError(f"could not read images under {root / split}: {err}") from None
    if sets[0].classes != sets[1].classes:
        raise InputError(f"train/ and val/ under {root} must have the same class subfolders")
    train_ds, val_ds = sets
    if spec.train_subset:
        train_ds = Subset(train_ds, range(min(spec.train_subset, len(train_ds))))
    if spec.val_subset:
        val_ds = Subset(val_ds, range(min(spec.val_subset, len(val_ds))))
    info = {"num_classes": len(sets[0].classes), "in_chans": 3, "mean": list(mean),
            "std": list(std)}
    return train_ds, val_ds, info, [None, None]


def _loader(dataset, batch_size, train, spec, collate, distributed, seed):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = generator = None
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    elif train:  # a private generator: the shuffle order depends on the seed alone
        generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=train and sampler is None,
                      sampler=sampler, generator=generator, num_workers=int(spec.num_workers),
                      collate_fn=collate, persistent_workers=int(spec.num_workers) > 0)
