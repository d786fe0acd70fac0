"""Quantization methods by name: ``register`` a quantizer class once, ``build`` it from settings.

A method is one quantizer class and one ``@register("name")``: ``build`` passes it the settings
its constructor accepts (by signature, so a recipe's flat ``quant`` section serves every method)
plus the registration's fixed arguments, and the constructor validates them.

Example:
    >>> quantizer = build("diffq", model, {"group_size": 8, "min_size": 0.01})
"""

import inspect
from collections.abc import Mapping

_METHODS: dict[str, tuple[type, dict]] = {}


def register(name: str, **fixed):
    """Class decorator: makes the quantizer class buildable as ``name``; ``fixed`` arguments
    always go to its constructor (e.g. ``qat=True`` for the "uniform" training method)."""

    def add(cls):
        _METHODS[name] = (cls, dict(fixed))
        return cls

    return add


def methods() -> list[str]:
    """Registered method names."""
    return sorted(_METHODS)


def settings_for(name: str, settings: Mapping) -> dict:
    """The subset of ``settings`` that method ``name``'s constructor takes, plus its fixed ones."""
    cls, fixed = _lookup(name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in ("self", "model")}
    return {**kwargs, **fixed}


def build(name: str, model, settings: Mapping):
    """The quantizer of method ``name`` attached to ``model``, configured from ``settings``."""
    cls, _ = _lookup(name)
    kwargs = settings_for(name, settings)
    if "exclude" in kwargs and kwargs["exclude"] is not None:
        kwargs["exclude"] = list(kwargs["exclude"])
    return cls(model, **kwargs)


def _lookup(name: str):
    if name not in _METHODS:
        raise ValueError(f"unknown quantization method {name!r}; choose one of: "
                         f"{', '.join(methods())}")
    return _METHODS[name]
