"""Which parameters of a model a quantizer quantizes, and where each one is bound.

A Parameter is quantized when it is floating point, at least ``min_size`` MiB as float32 and
not excluded by name; the others are kept as floats. A Parameter shared by several modules
(tied weights) is one ``QParam`` with several bindings (``detect_bound=True``), or one
``QParam`` per binding with its own bits, noise, size and saved entry (``detect_bound=False``).
"""

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from diffq_cli.units import mib


@dataclass(eq=False)
class QParam:
    """One quantized parameter. A shared Parameter is one QParam with several bindings
    (detect_bound=True), or one QParam per binding with its own bits, noise, size and saved
    entry (detect_bound=False)."""

    name: str
    param: nn.Parameter
    bindings: list = field(default_factory=list)  # (module, attribute name) pairs
    group_size: int = 1  # values per group; the last group may be shorter
    bit_param: nn.Parameter | None = None  # the learned part (DiffQ logits, LSQ step)
    scale_param: nn.Parameter | None = None  # log of the per-channel scales (grid "learned")

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def n_groups(self) -> int:
        return -(-self.numel // self.group_size)


def excluded(patterns, full: str, short: str) -> bool:
    """Whether a full (``layer1.0.conv1.weight``) or short (``weight``) name matches."""
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (full, short))


def discover(model: nn.Module, min_size: float, exclude, detect_bound: bool, group_size: int):
    """(quantized ``QParam``s, kept (name, Parameter) pairs, (module, attr, Parameter) of every
    binding of a kept floating Parameter: ``float16`` rounds those at evaluation)."""
    qparams, others, float_bindings, seen = [], [], [], {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for attr, p in list(module._parameters.items()):
            if p is None:
                continue
            full = f"{mname}.{attr}" if mname else attr
            entry = seen.get(id(p))
            if entry is not None and (detect_bound or not isinstance(entry, QParam)):
                if isinstance(entry, QParam) and not any(
                    m is module and a == attr for m, a in entry.bindings
                ):
                    entry.bindings.append((module, attr))
                elif not isinstance(entry, QParam) and p.is_floating_point():
                    float_bindings.append((module, attr, p))
                continue
            quantizable = (
                p.is_floating_point()
                and mib(p.numel() * 4) >= min_size
                and not excluded(exclude, full, attr)
            )
            if quantizable:
                gs = group_size if 0 < group_size < p.numel() else p.numel()
                qp = QParam(full, p, [(module, attr)], max(gs, 1))
                qparams.append(qp)
                seen[id(p)] = qp
            else:
                others.append((full, p))
                seen[id(p)] = full
                if p.is_floating_point():
                    float_bindings.append((module, attr, p))
    return qparams, others, float_bindings
