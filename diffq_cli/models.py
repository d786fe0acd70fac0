"""Model factory: the only module that imports timm and torchvision models.

``create_model`` builds a classifier by name from torchvision or timm (``auto`` prefers
torchvision's name when both have it; ``tv:NAME`` / ``timm:NAME`` force one), sized for
``num_classes`` and ``in_chans``. The model gets a ``diffq_spec`` attribute, a plain dict with
``name, source, num_classes, in_chans, input_size``, so ``create_model(**model.diffq_spec)``
rebuilds the same architecture (the artifact stores it). Heavy imports stay inside functions.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path

from diffq_cli.errors import InputError

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
    from a cache keyed by the timm and torchvision versions (see ``diffq_cli.cache``).
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

    from diffq_cli.cache import cached

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


def load_weights(model, path) -> list[str]:
    """Load a local float checkpoint into ``model``; returns notes on layers that were adapted.

    Accepts a state dict (or a dict holding one under ``state_dict``/``model``) in ``.pt``/``.pth``
    (read with ``weights_only=True``) or ``.safetensors``; ``module.`` prefixes are stripped.
    A classifier head of another size is re-initialised; a first conv made for 3 channels is
    summed/tiled to the model's input channels. Anything else that does not fit is an InputError.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    heads, firsts = set(_head_names(model)), set(_first_conv_names(model))
    notes, reset = [], set()
    for key in [k for k in state if k in own and state[k].shape != own[k].shape]:
        module_name, kind = key.rpartition(".")[::2]
        old, new = tuple(state[key].shape), tuple(own[key].shape)
        if module_name in reset:
            continue
        if module_name in firsts and kind == "weight" and old[0] == new[0] and old[2:] == new[2:]:
            state[key] = _adapt_conv_weight(state[key], new[1])
            notes.append(f"first conv {module_name} adapted: checkpoint has {old[1]} input "
                         f"channels, model {new[1]}")
        elif module_name in heads | firsts:
            reset.add(module_name)
            module = model.get_submodule(module_name)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if module_name in heads:
                notes.append(f"classifier {module_name} re-initialised: checkpoint has {old[0]} "
                             f"classes, model {new[0]}")
            else:
                notes.append(f"first conv {module_name} re-initialised: checkpoint shape {old}, "
                             f"model {new}")
        else:
            raise InputError(f"weights {path} do not fit the model: {key} is {old} in the "
                             f"checkpoint but {new} in the model")
    state = {k: v for k, v in state.items() if k.rpartition(".")[0] not in reset}
    missing = [k for k in own if k not in state and k.rpartition(".")[0] not in reset
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise InputError(f"weights {path} do not match the model ({'; '.join(parts)}); "
                         "is it a checkpoint of this architecture?")
    model.load_state_dict(state, strict=False)
    return notes


def _read_state_dict(path) -> dict:
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file {path} not found; pass --weights PATH to a .pt/.pth/"
                         ".safetensors checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any parse failure means the same thing to the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(f"could not read weights {path}: {first}; expected a float state dict "
                         "(.pt/.pth) or a .safetensors file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"weights {path} hold no state dict of tensors; save model.state_dict()")
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def _torchvision_model(name, num_classes, in_chans, pretrained, input_size):
    import torchvision.models as tvm

    if pretrained:
        try:
            model = tvm.get_model(name, weights="DEFAULT")
        except _network_errors() as err:
            raise _offline_error(name) from err
        _replace_head(model, num_classes)
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
        _replace_first_conv(model, in_chans, keep_weights=pretrained)
    return model


def _timm_model(name, num_classes, in_chans, pretrained, input_size):
    import timm

    kwargs = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans}
    if pretrained and not timm.models.is_model_pretrained(name):
        raise InputError(f"timm has no pretrained weights for {name}; drop --pretrained")
    if pretrained and not _hub_reachable():
        _hub_offline()
    try:
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


def _hub_offline() -> None:
    """Switch the hub client to offline mode: cached weights still load, missing ones fail at
    once instead of after ~45 s of retries."""
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


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


def _head_names(model) -> list[str]:
    """Classifier module names: timm's pretrained_cfg, else the last Linear (or last Conv2d)."""
    import torch.nn as nn

    modules = dict(model.named_modules())
    names = _cfg_modules(model, "classifier", modules)
    for kind in (nn.Linear, nn.Conv2d):
        names = names or [n for n, m in modules.items() if isinstance(m, kind)][-1:]
    return names


def _first_conv_names(model) -> list[str]:
    """The stem conv: timm's pretrained_cfg, else the first Conv2d."""
    import torch.nn as nn

    modules = dict(model.named_modules())
    names = _cfg_modules(model, "first_conv", modules)
    return names or [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][:1]


def _cfg_modules(model, key, modules) -> list[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get(key) or ()
    return [n for n in ([names] if isinstance(names, str) else names) if n in modules]


def _replace_head(model, num_classes) -> None:
    import torch.nn as nn

    for name in _head_names(model):
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear) and old.out_features != num_classes:
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        elif isinstance(old, nn.Conv2d) and old.out_channels != num_classes:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride,
                            old.padding, bias=old.bias is not None)
        else:
            continue
        _set_module(model, name, new)


def _replace_first_conv(model, in_chans, keep_weights) -> None:
    import torch
    import torch.nn as nn

    name = _first_conv_names(model)[0]
    old = model.get_submodule(name)
    if old.groups != 1:
        raise InputError(f"cannot change the input channels of {name} (grouped conv)")
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, 1, old.bias is not None, old.padding_mode)
    if keep_weights:
        with torch.no_grad():
            new.weight.copy_(_adapt_conv_weight(old.weight, in_chans))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    _set_module(model, name, new)


def _adapt_conv_weight(weight, in_chans):
    """Map an RGB kernel to ``in_chans`` inputs, keeping the response to a gray image.

    For one channel the RGB kernels are summed (not averaged): a grayscale image is the RGB
    image with equal channels, so the sum gives the same activations and BatchNorm statistics
    still fit. For more channels the kernels are tiled and rescaled by ``3 / in_chans``.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def _set_module(model, name, module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
