"""Process-group helpers: one object the loop calls whether or not it runs under torchrun."""

import os

import torch


class Single:
    """No process group: every call is a pass-through."""

    is_main = True
    world_size = 1
    rank = 0
    distributed = False

    def wrap(self, model):
        return model

    def set_epoch(self, loader, epoch: int, seed: int) -> None:
        # Reseed the shuffle per epoch, so a resumed run sees the same order as an
        # uninterrupted one, whatever happened before.
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(seed * 1000 + epoch)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present (the local rank's GPU under torchrun), else CPU."""
    from diffq_cli.errors import InputError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' asked for but CUDA is not available; use --device cpu")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


def setup(device: torch.device):
    """The helper object for this process (DDP when launched by torchrun with WORLD_SIZE > 1)."""
    return Single()
