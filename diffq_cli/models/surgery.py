"""Fitting a network to a task: its head and first conv, and float checkpoints loaded into it.

``create_model`` (models.py) builds the network; this module resizes its classifier head and
first convolution for the dataset, and loads a local ``.pt``/``.pth``/``.safetensors`` state
dict, re-initialising what does not fit. Plain module surgery: no timm or torchvision import.
"""

from __future__ import annotations

from pathlib import Path

from diffq_cli.errors import InputError, first_line


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
        first = first_line(err)
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


def replace_head(model, num_classes) -> None:
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


def replace_first_conv(model, in_chans, keep_weights) -> None:
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
