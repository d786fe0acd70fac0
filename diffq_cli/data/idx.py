"""idx files (the MNIST format, plain or gzipped): read one, find the four of a dataset."""

import gzip
from pathlib import Path

import numpy as np

from diffq_cli.errors import InputError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an idx file (the MNIST format), plain or ``.gz``, into a native-endian array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise InputError(f"could not read idx file {path}: {err}") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an idx file (bad header); expected MNIST-style data")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4)) if ndim else ()
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count, start = int(np.prod(dims)), 4 + 4 * ndim
    if len(raw) != start + count * dtype.itemsize:
        raise InputError(f"idx file {path} is truncated or corrupted (size does not match header)")
    data = np.frombuffer(raw, dtype, count, offset=start).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def find_idx_files(directory) -> dict | None:
    """Return ``{"train-images": path, ...}`` for the four idx files in ``directory``, or None."""
    found = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        for kind in ("images", "labels"):
            hits = sorted(Path(directory).glob(f"{prefix}-{kind}[-.]idx[13]-ubyte*"))
            hits = [h for h in hits if h.name.endswith(("ubyte", "ubyte.gz"))]
            if not hits:
                return None
            found[f"{split}-{kind}"] = hits[0]  # sorted: plain (faster) before .gz
    return found
