"""diffq_cli.data.loaders: the embedded digits, idx files, torchvision sets, image folders."""

import gzip
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from diffq_cli.config.schema import DataConfig
from diffq_cli.data.idx import find_idx_files, read_idx
from diffq_cli.data.loaders import DATASETS, build_loaders
from diffq_cli.errors import InputError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _all(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


def _make_idx_dir(root, gz, n_train=40, n_val=12, size=28, prefix=""):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        _write_idx(root / f"{split}-images-idx3-ubyte{ext}", images, gz)
        _write_idx(root / f"{split}-labels-idx1-ubyte{ext}", labels, gz)
        arrays[split] = (images, labels)
    return arrays


def test_digits_default_shapes_labels_and_split():
    train, val, info = build_loaders(DataConfig())
    assert info == {"num_classes": 10, "in_chans": 1, "input_size": 32, "dataset": "digits",
                    "train_size": 1438, "val_size": 359, "mean": info["mean"], "std": info["std"]}
    x, y = next(iter(train))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = _all(val)
    assert xs.shape == (359, 1, 32, 32)
    assert set(ys.tolist()) == set(range(10))
    assert len(train.dataset) + len(val.dataset) == 1797


def test_digits_normalised_with_train_statistics():
    train, val, info = build_loaders(DataConfig(input_size=8))  # native size: no resampling
    xs, _ = _all(train)
    assert xs.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert xs.std().item() == pytest.approx(1.0, abs=1e-3)
    assert 0.25 < info["mean"][0] < 0.35 and 0.3 < info["std"][0] < 0.45


def test_digits_shuffle_depends_on_seed_only_and_val_split_is_fixed():
    def first_labels(seed):
        train, val, _ = build_loaders(seed=seed, spec=DataConfig(batch_size=32))
        return next(iter(train))[1].tolist(), _all(val)[1].tolist()

    a, b, c = first_labels(0), first_labels(0), first_labels(1)
    assert a == b
    assert a[0] != c[0]  # another shuffle order
    assert a[1] == c[1]  # same validation split and order whatever the seed


def test_subsets_take_the_first_samples():
    full_train, full_val, _ = build_loaders(DataConfig(batch_size=500, eval_batch_size=500))
    train, val, info = build_loaders(DataConfig(train_subset=100, val_subset=50))
    assert (info["train_size"], info["val_size"]) == (100, 50)
    assert torch.equal(_all(val)[0], next(iter(full_val))[0][:50])
    assert sorted(_all(train)[1].tolist()) == sorted(full_train.dataset.tensors[1][:100].tolist())


def test_unknown_dataset_and_bad_values_raise_input_error():
    with pytest.raises(InputError, match="unknown dataset 'mnits'.*fashion-mnist"):
        build_loaders(DataConfig(dataset="mnits"))
    with pytest.raises(InputError, match="batch_size"):
        build_loaders(DataConfig(batch_size=0))
    assert "digits" in DATASETS and "idx" in DATASETS


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "imagefolder", "idx"])
def test_missing_data_dir_asks_for_it(name):
    with pytest.raises(InputError, match="--data-dir"):
        build_loaders(DataConfig(dataset=name))


def test_absent_files_say_how_to_fetch(tmp_path):
    with pytest.raises(InputError, match="fashion-mnist not found under .*--download") as err:
        build_loaders(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="cifar10 not found under .*--download"):
        build_loaders(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(InputError, match="could not download mnist .*offline") as err:
        build_loaders(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=True))
    assert "\n" not in str(err.value)


def test_cifar10_from_torchvision_files(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        entry = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [i, 9 - i]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    # the files are fakes: skip torchvision's md5 checks of the real download
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    spec = DataConfig(dataset="CIFAR-10", data_dir=str(tmp_path), eval_batch_size=8, augment=True)
    train, val, info = build_loaders(spec)
    assert (info["num_classes"], info["in_chans"], info["train_size"], info["val_size"]) == \
        (10, 3, 10, 2)
    assert info["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    x, y = next(iter(val))
    test = pickle.loads((folder / "test_batch").read_bytes())
    mean = torch.tensor(info["mean"]).view(3, 1, 1)
    std = torch.tensor(info["std"]).view(3, 1, 1)
    image = torch.from_numpy(test["data"][1].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(x[1], (image - mean) / std)
    assert y.tolist() == [5, 4]
    assert next(iter(train))[0].shape == (10, 3, 32, 32)


def test_worker_processes(tmp_path):
    train, _, _ = build_loaders(DataConfig(num_workers=2, train_subset=64, batch_size=32))
    assert sum(len(y) for _, y in train) == 64


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
                  np.array([-5, 7, 70000], dtype=np.int32),
                  np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)):
        path = tmp_path / ("a.idx.gz" if gz else "a.idx")
        _write_idx(path, array, gz)
        out = read_idx(path)
        assert out.dtype == array.dtype and out.flags.writeable
        np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"not an idx file")
    with pytest.raises(InputError, match="not an idx file"):
        read_idx(bad)
    _write_idx(tmp_path / "ok", np.zeros((3, 2, 2), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(InputError, match="truncated"):
        read_idx(tmp_path / "cut")
    with pytest.raises(InputError, match="could not read"):
        read_idx(tmp_path / "missing.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_as_mnist_like(tmp_path, gz):
    arrays = _make_idx_dir(tmp_path, gz)
    assert find_idx_files(tmp_path)["train-images"].name.endswith(".gz" if gz else "ubyte")
    train, val, info = build_loaders(DataConfig(dataset="idx", data_dir=str(tmp_path),
                                              input_size=28, eval_batch_size=100))
    assert info["train_size"] == 40 and info["val_size"] == 12
    assert info["num_classes"] == 10 and info["in_chans"] == 1
    x, y = next(iter(val))
    images, labels = arrays["t10k"]
    mean, std = info["mean"][0], info["std"][0]
    expected = (torch.from_numpy(images).float() / 255 - mean) / std
    torch.testing.assert_close(x[:, 0], expected)
    assert y.tolist() == labels.tolist()


def test_mnist_reads_torchvision_layout_and_resizes(tmp_path):
    _make_idx_dir(tmp_path / "MNIST" / "raw", gz=False)
    train, _, info = build_loaders(DataConfig(dataset="mnist", data_dir=str(tmp_path),
                                            input_size=16, batch_size=8))
    assert next(iter(train))[0].shape == (8, 1, 16, 16)
    assert info["dataset"] == "mnist"


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_files():
    train, val, info = build_loaders(DataConfig(dataset="fashion_mnist",
                                                data_dir=str(DEBIAN_FASHION),
                                                train_subset=256, val_subset=128))
    assert (info["train_size"], info["val_size"], info["num_classes"]) == (256, 128, 10)
    # statistics of all 60,000 training images, as published for Fashion-MNIST
    assert info["mean"][0] == pytest.approx(0.2860, abs=1e-3)
    assert info["std"][0] == pytest.approx(0.3530, abs=1e-3)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 32, 32) and 0 <= y.min() and y.max() <= 9


def _make_image_folder(root, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    _make_image_folder(tmp_path)
    train, val, info = build_loaders(DataConfig(dataset="imagefolder", data_dir=str(tmp_path),
                                              input_size=16, batch_size=4, augment=True))
    assert (info["num_classes"], info["in_chans"], info["train_size"], info["val_size"]) == \
        (2, 3, 6, 4)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16)
    assert sorted(_all(val)[1].tolist()) == [0, 0, 1, 1]


def test_imagefolder_without_train_dir(tmp_path):
    _make_image_folder(tmp_path)
    (tmp_path / "train").rename(tmp_path / "other")
    with pytest.raises(InputError, match="train/ with one subfolder per class"):
        build_loaders(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))


def test_rgb_augment_keeps_shape_and_values():
    from diffq_cli.data.loaders import _BatchPrep

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    items = list(zip(images, torch.arange(6), strict=True))
    plain = _BatchPrep(1 / 255, 32, (0.0,) * 3, (1.0,) * 3, augment=False)(items)[0]
    torch.manual_seed(0)
    augmented = _BatchPrep(1 / 255, 32, (0.0,) * 3, (1.0,) * 3, augment=True)(items)[0]
    assert augmented.shape == plain.shape
    assert not torch.equal(augmented, plain)
    assert augmented.min() >= 0 and augmented.max() <= 1  # crops and flips move, never rescale


def test_distributed_samplers(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        train, val, _ = build_loaders(DataConfig(), seed=3, distributed=True)
        assert type(train.sampler).__name__ == "DistributedSampler"
        assert train.sampler.shuffle and not val.sampler.shuffle and train.sampler.seed == 3
        train.sampler.set_epoch(0)
        first = list(train.sampler)
        train.sampler.set_epoch(1)
        assert list(train.sampler) != first
        assert list(val.sampler) == list(range(359))
    finally:
        dist.destroy_process_group()
