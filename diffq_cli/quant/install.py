"""Placing computed weights in modules for one forward, with as little memory as possible.

A quantizer never swaps registered Parameters. It puts the tensor a forward should see (noisy
in training, quantized in eval) in the owning module's instance ``__dict__``, which Python
consults before ``nn.Module.__getattr__`` finds the Parameter, and removes it afterwards.

Training weights are placed *lazily*: each one is computed when the module that uses it is
about to run and removed when that module is done, so the model never holds every noisy weight
at once. "The module that uses it" is the owning module's parent, since a parent may read its
child's weight directly (``nn.MultiheadAttention`` reads ``out_proj.weight``); weights of the
model's own direct children, and of modules shared by several parents, are placed for the whole
forward. A module whose parent's forward never runs (an ``nn.ModuleList``) places its own
weights around its own forward instead. During the forward, a saved-tensor hook lets layers
keep a recipe instead of a recomputable weight for their backward (every conv and linear saves
its weight): the backward recomputes it, so no noisy weight stays alive between the forward and
the backward either.
"""

import torch
from torch import nn


class _Recompute:
    """What a layer's autograd node keeps instead of a recomputable weight."""

    __slots__ = ("again",)

    def __init__(self, again):
        self.again = again


class Installer:
    """Installs weights for one forward of ``model``.

    Args:
        model: the quantized model (its own forward hooks call ``stage``/``place``/``clear``).
        bindings: per quantized parameter, its (module, attribute) bindings.
    """

    def __init__(self, model: nn.Module, bindings: list[list[tuple[nn.Module, str]]]):
        parents: dict[int, list[nn.Module]] = {}
        for parent in model.modules():
            for child in parent.children():
                parents.setdefault(id(child), []).append(parent)
        self._eager: list[tuple[int, nn.Module, str]] = []  # placed for the whole forward
        self._lazy: dict[int, tuple[nn.Module, list]] = {}  # id(parent) -> (parent, bindings)
        for i, pairs in enumerate(bindings):
            for module, attr in pairs:
                owners = parents.get(id(module), [])
                if len(owners) == 1 and owners[0] is not model:
                    self._lazy.setdefault(id(owners[0]), (owners[0], []))[1].append(
                        (i, module, attr)
                    )
                else:
                    self._eager.append((i, module, attr))
        self._hooks = []
        for parent, items in self._lazy.values():
            self._hooks.append(parent.register_forward_pre_hook(self._make_pre(items)))
            self._hooks.append(
                parent.register_forward_hook(self._make_post(items), always_call=True)
            )
        # The owning module runs its own forward under a parent whose forward never runs (an
        # nn.ModuleList, or a parent skipped by the model's code): it then places its weights
        # itself, so no layer ever trains on plain floats by accident.
        owners: dict[int, tuple[nn.Module, list]] = {}
        for items in (items for _, items in self._lazy.values()):
            for item in items:
                owners.setdefault(id(item[1]), (item[1], []))[1].append(item)
        for owner, items in owners.values():
            placed: set = set()
            self._hooks.append(owner.register_forward_pre_hook(self._make_own_pre(items, placed)))
            self._hooks.append(owner.register_forward_hook(self._make_own_post(items, placed),
                                                           always_call=True))
        self._installed: list[tuple[nn.Module, str]] = []
        self._seen: set[int] = set()  # parameters placed during this forward
        self._factories: list | None = None
        self._values: dict[int, torch.Tensor] = {}
        self._recompute: dict[int, tuple[torch.Tensor, object]] = {}
        self._saved_hooks = None

    # ---------------------------------------------------------------- eager placement
    def place(self, triples) -> None:
        """Installs (module, attr, tensor) triples until ``clear``."""
        rnns = []
        for module, attr, value in triples:
            module.__dict__[attr] = value
            self._installed.append((module, attr))
            if isinstance(module, nn.RNNBase):
                rnns.append(module)
        _refresh(rnns)

    def clear(self) -> None:
        """Removes everything placed for this forward and closes the saved-tensor hook."""
        if self._factories is not None:
            self._place_unseen_eagerly()
        if self._saved_hooks is not None:
            self._saved_hooks.__exit__(None, None, None)
            self._saved_hooks = None
        self._factories = None
        self._values.clear()
        self._recompute.clear()
        _remove(self._installed)
        self._installed = []

    # ---------------------------------------------------------------- lazy placement
    def stage(self, factories: list) -> None:
        """Training weights for this forward, one factory per quantized parameter (None: keep
        the float). A factory returns ``(tensor, again)``; ``again()`` recomputes the tensor
        exactly (or is None when it cannot)."""
        self._factories = factories
        if torch.is_grad_enabled():
            self._open_light()
        self.place(
            (module, attr, value)
            for i, module, attr in self._eager
            if (value := self._value(i)) is not None
        )

    def _place_unseen_eagerly(self) -> None:
        """Weights that no hook placed in this training forward (their module and its parent
        never ran: the model read them directly) are placed for the whole forward from now
        on; this forward used the floats for them, which the warning says."""
        unseen = False
        for _, items in self._lazy.values():
            missing = [it for it in items
                       if it[0] not in self._seen and self._factories[it[0]] is not None]
            if missing:
                unseen = True
                self._eager.extend(missing)
                items[:] = [it for it in items if it not in missing]
        if unseen:
            import warnings

            warnings.warn(
                "diffq: some quantized weights were used without their module or its parent "
                "running (read directly by the model); they get noise from the next step on",
                stacklevel=2,
            )
        self._seen = set()

    def _value(self, i: int):
        self._seen.add(i)
        if i not in self._values:
            factory = self._factories[i] if self._factories is not None else None
            if factory is None:
                self._values[i] = None
            else:
                value, again = factory()
                if again is not None:
                    self._recompute[id(value)] = (value, again)
                self._values[i] = value
        return self._values[i]

    def _place_items(self, items) -> None:
        self.place(
            (owner, attr, value)
            for i, owner, attr in items
            if (value := self._value(i)) is not None
        )

    def _drop_items(self, items) -> None:
        _remove([(owner, attr) for _, owner, attr in items])
        # Forget the values so they can be freed now (the layers kept recipes, not them);
        # a second call of this module computes them again, identically.
        for i, _, _ in items:
            value = self._values.pop(i, None)
            if value is not None:
                self._recompute.pop(id(value), None)

    def _make_pre(self, items):
        def pre(module, args):
            if self._factories is not None:
                self._place_items(items)

        return pre

    def _make_post(self, items):
        def post(module, args, output):
            if self._factories is not None:
                self._drop_items(items)

        return post

    def _make_own_pre(self, items, placed: set):
        def pre(module, args):
            if self._factories is None:
                return
            missing = [(i, owner, attr) for i, owner, attr in items if attr not in owner.__dict__]
            self._place_items(missing)
            placed.update((i, attr) for i, _, attr in missing)

        return pre

    def _make_own_post(self, items, placed: set):
        def post(module, args, output):
            if self._factories is None or not placed:
                return
            self._drop_items([it for it in items if (it[0], it[2]) in placed])
            placed.clear()

        return post

    def _open_light(self) -> None:
        table = self._recompute

        def pack(t):
            hit = table.get(id(t))
            return _Recompute(hit[1]) if hit is not None and hit[0] is t else t

        def unpack(packed):
            return packed.again() if isinstance(packed, _Recompute) else packed

        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
        self._saved_hooks.__enter__()

    def remove_hooks(self) -> None:
        self.clear()
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def _remove(pairs) -> None:
    rnns = []
    for module, attr in pairs:
        if module.__dict__.pop(attr, None) is not None and isinstance(module, nn.RNNBase):
            rnns.append(module)
    _refresh(rnns)


def _refresh(rnns) -> None:
    for rnn in rnns:  # RNNs read a cached list of their weights
        rnn._init_flat_weights()
