"""A small JSON cache under the user's cache directory, keyed by what the value depends on.

``diffq models`` uses it for the timm / torchvision name lists: building them means importing
torch and timm (seconds); reading them back is milliseconds. The key holds the library
versions, so upgrading either one rebuilds the list. The cache is an optimisation only: a
missing, corrupt or unwritable cache silently falls back to computing the value.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """``$DIFFQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffq``, else ``~/.cache/diffq``."""
    if os.environ.get("DIFFQ_CACHE_DIR"):
        return Path(os.environ["DIFFQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffq"


def cached(name: str, key: dict, compute: Callable[[], Any]) -> Any:
    """The value stored as ``name`` under ``key``, or ``compute()`` (then stored).

    Args:
        name: file stem in :func:`cache_dir`.
        key: JSON-able dict; a stored value with another key is recomputed.
        compute: builds the (JSON-able) value.
    """
    path = cache_dir() / f"{name}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and stored.get("key") == key and "value" in stored:
            return stored["value"]
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        from diffq_cli.fileio import atomic_write

        atomic_write(path, json.dumps({"key": key, "value": value}).encode("utf-8"))
    except OSError:
        pass  # read-only home, full disk: work without the cache
    return value
