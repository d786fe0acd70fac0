"""Model factory: the only module that imports timm and torchvision models.

``create_model`` builds a classifier by name from torchvision or timm (``auto`` prefers
torchvision's name when both have it; ``tv:NAME`` / ``timm:NAME`` force one), sized for
``num_classes`` and ``in_chans``. The model gets a ``diffq_spec`` attribute, a plain dict with
``name, source, num_classes, in_chans, input_size``, so ``create_model(**model.diffq_spec)``
rebuilds the same architecture (the artifact stores it). Heavy imports stay inside functions.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from pathlib import Path

from diffq_cli.errors import InputError
from diffq_cli.models.surgery import load_weights, replace_first_conv, replace_head

SOURCES = ("auto", "timm", "torchvision")
_PREFIXES = {"tv": "torchvision", "torchvision": "torchvision", "timm": "timm"}


def create_model(name: str, source: str = "auto", num_classes: int = 10, in_chans: int = 3,
                 pretrained: bool = False, weights: str | Path | None = None,
                 input_size: int | None = None):
    """Create a classification model.

    Args:
        name: model name, e.g. ``resnet18``, ``deit_tiny_patch16_224``, ``timm:resnet18``.
        source: ``auto``, ``timm`` or ``torchvision``.
        num_classes: size of the classifier head.
        in_chans: input channels (1 for grayscale); the first conv is rebuilt to match.
        pretrained: start from the library's ImageNet weights (downloaded; needs a network).
        weights: a local float checkpoint (``.pt``/``.pth``/``.safetensors``); overrides
            ``pretrained``. Layers that do not fit are re-initialised (see ``load_weights``);
            the notes are kept in ``model.diffq_notes`` for the caller to show (once).
        input_size: image size, passed to the models that take one (ViTs); others adapt.

    Returns:
        The ``torch.nn.Module``, with ``model.diffq_spec`` set.

    Example:
        >>> model = create_model("resnet18", num_classes=10, in_chans=1)
    """
    name, source = resolve_model(name, source)
    if int(num_classes) < 1 or int(in_chans) < 1:
        raise InputError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
    build = _torchvision_model if source == "torchvision" else _timm_model
    model = build(name, int(num_classes), int(in_chans), bool(pretrained) and not weights,
                  input_size)
    model.diffq_spec = {"name": name, "source": source, "num_classes": int(num_classes),
                        "in_chans": int(in_chans), "input_size": input_size}
    model.diffq_notes = load_weights(model, weights) if weights else []
    return model


def resolve_model(name: str, source: str = "auto") -> tuple[str, str]:
    """Return ``(name, source)``: prefix removed, ``auto`` resolved; InputError if unknown."""
    if source not in SOURCES:
        raise InputError(f"unknown model source '{source}'; choose one of: {', '.join(SOURCES)}")
    prefix, sep, rest = str(name).partition(":")
    if sep and prefix.lower() in _PREFIXES:
        forced = _PREFIXES[prefix.lower()]
        if source not in ("auto", forced):
            raise InputError(f"model '{name}' conflicts with source '{source}'; use one of them")
        name, source = rest, forced
    known = _names()  # cached lists: checking a name does not import timm (seconds)
    if source in ("auto", "torchvision") and name in known["torchvision"]:
        return name, "torchvision"
    if source in ("auto", "timm") and (name.partition(".")[0] in known["timm"]
                                       or _timm_is_model(name)):  # e.g. a plugin-registered model
        return name, "timm"
    pool = [n for n, _ in list_models(source=source)]
    close = difflib.get_close_matches(name, pool, n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "run `diffq models` to list them"
    where = "" if source == "auto" else f" in {source}"
    raise InputError(f"unknown model '{name}'{where}; {hint}")


def list_models(pattern: str | None = None, source: str = "auto") -> list[tuple[str, str]]:
    """List ``(name, source)`` pairs, sorted, whose name matches ``pattern``.

    ``pattern`` matches case-insensitively as an fnmatch glob on the whole name (``resnet*``)
    or as a substring (``resnet`` finds ``resnet18`` and ``seresnet50``). The name lists come
    from a cache keyed by the timm and torchvision versions (see ``diffq_cli.models.names``).
    """
    if source not in SOURCES:
        raise InputError(f"unknown model source '{source}'; choose one of: {', '.join(SOURCES)}")
    known, found = _names(), {}
    if source in ("auto", "timm"):
        found.update((n, "timm") for n in known["timm"])
    if source in ("auto", "torchvision"):  # after timm: auto resolves shared names to torchvision
        found.update((n, "torchvision") for n in known["torchvision"])
    names = sorted(found)
    if pattern:
        pat = pattern.lower()
        names = [n for n in names if pat in n.lower() or fnmatch.fnmatch(n.lower(), pat)]
    return [(n, found[n]) for n in names]


def _names() -> dict[str, list[str]]:
    """``{"timm": [...], "torchvision": [...]}``: every model name, cached per library version."""
    from importlib.metadata import PackageNotFoundError, version

    from diffq_cli.models.names import cached

    key = {"format": 1}
    for package in ("timm", "torchvision"):
        try:
            key[package] = version(package)
        except PackageNotFoundError:  # not installed as a distribution: never trust a cache
            return _list_names()
    return cached("model-names", key, _list_names)


def _list_names() -> dict[str, list[str]]:
    import timm

    return {"timm": list(timm.list_models()), "torchvision": _torchvision_names()}


def _torchvision_model(name, num_classes, in_chans, pretrained, input_size):
    import torchvision.models as tvm

    if pretrained:
        try:
            model = tvm.get_model(name, weights="DEFAULT")
        except _network_errors() as err:
            raise _offline_error(name) from err
        replace_head(model, num_classes)
    else:
        model = None
        if input_size:  # ViTs need their image size; the others refuse the argument
            try:
                model = tvm.get_model(name, num_classes=num_classes, image_size=int(input_size))
            except TypeError:
                model = None
        if model is None:
            model = tvm.get_model(name, num_classes=num_classes)
    for aux in ("AuxLogits", "aux1", "aux2"):  # inception/googlenet: keep one output
        if getattr(model, aux, None) is not None:
            setattr(model, aux, None)
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
    if in_chans != 3:
        model.transform_input = False  # inception's RGB re-normalisation needs 3 channels
        replace_first_conv(model, in_chans, keep_weights=pretrained)
    return model


def _timm_model(name, num_classes, in_chans, pretrained, input_size):
    import timm

    kwargs = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans}
    if pretrained and not timm.models.is_model_pretrained(name):
        raise InputError(f"timm has no pretrained weights for {name}; drop --pretrained")
    offline = _hub_offline() if pretrained and not _hub_reachable() else contextlib.nullcontext()
    try:
        with offline:
            if input_size:  # ViT-like models take img_size; the others raise TypeError at once
                try:
                    return timm.create_model(name, img_size=int(input_size), **kwargs)
                except TypeError:
                    pass
            return timm.create_model(name, **kwargs)
    except _network_errors() as err:
        if not pretrained:
            raise
        raise _offline_error(name) from err


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a 3 s TCP probe)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline():
    """The hub client in offline mode for one call: cached weights still load, missing ones
    fail at once instead of after ~45 s of retries. The flag is restored afterwards (a library
    must not change the process's settings)."""
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        yield
        return
    old = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old


def _network_errors() -> tuple:
    errors = [OSError, RuntimeError, ConnectionError]  # URLError and hub errors are OSErrors
    try:
        from huggingface_hub import errors as hf_errors

        errors += [getattr(hf_errors, "HTTPError", OSError)]  # the hub client's base class
    except ImportError:
        pass
    return tuple(errors)


def _offline_error(name) -> InputError:
    return InputError(f"could not download pretrained weights for {name} (offline?); "
                      "pass --weights PATH to a local checkpoint")


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)  # classification models only


def _timm_is_model(name) -> bool:
    import timm

    return timm.is_model(name)


def logits(out):
    """The logits of a model output: a tuple's first item (auxiliary heads), a dict's "logits"."""
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out
