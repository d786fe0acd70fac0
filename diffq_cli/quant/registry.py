"""Quantization methods by name: ``register`` a quantizer class once, ``build`` it from settings.

A method is one quantizer class and one ``@register("name")``: ``build`` passes it the given
settings plus the registration's fixed arguments, and the constructor validates them. A setting
the method does not take is an error (a TypeError naming it), never silently dropped.

Example:
    >>> quantizer = build("diffq", model, {"group_size": 8, "min_size": 0.01})
"""

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


def build(name: str, model, settings: Mapping):
    """The quantizer of method ``name`` attached to ``model``, configured from ``settings``."""
    cls, fixed = _lookup(name)
    kwargs = {**settings, **fixed}
    if kwargs.get("exclude") is not None:
        kwargs["exclude"] = list(kwargs["exclude"])
    return cls(model, **kwargs)


def _lookup(name: str):
    if name not in _METHODS:
        raise ValueError(f"unknown quantization method {name!r}; choose one of: "
                         f"{', '.join(methods())}")
    return _METHODS[name]
