"""Process-group helpers: one object the loop calls whether or not it runs under torchrun.

``setup(device)`` returns ``Single`` (one process: every call is a pass-through) or ``Ddp``
(launched by torchrun with ``WORLD_SIZE > 1``: a process group, nccl on CUDA and gloo on CPU).
Both have the same interface, so the loop has no ``if distributed`` branches:

    dist = setup(device)
    net = dist.wrap(model)              # after the quantizer: DDP must see the bit parameters
    dist.set_epoch(loader, epoch, seed)
    acc = dist.accuracy(model, val_loader, device)   # exact over the whole validation set
    if dist.is_main: ...                # only rank 0 prints and writes
    dist.close()

Several nodes need nothing here: torchrun's rendezvous sets the environment that
``init_process_group`` reads.
"""

import os

import torch

# Test hook: when set, every rank saves its final quantized state and parameters to
# ``<dir>/rank<r>.th`` (the last mu of a sweep), so a test can check that ranks agree.


class Single:
    """No process group: every call is a pass-through."""

    is_main = True
    world_size = 1
    rank = 0
    distributed = False

    def wrap(self, model):
        """The module to call in the training loop (``model`` itself here)."""
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

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (in place); the tensor itself here."""
        return tensor

    def agree(self, flag: bool, what: str = "") -> bool:
        """``flag``, checked to be the same on every rank (e.g. "a checkpoint exists")."""
        return bool(flag)

    def sync_buffers(self, model) -> None:
        """Makes every rank's buffers (BatchNorm statistics) rank 0's; nothing to do here."""

    def accuracy(self, model, loader, device) -> float:
        """Top-1 accuracy in percent over the whole of ``loader``'s dataset."""
        from diffq_cli.run.evaluate import accuracy

        return accuracy(model, loader, device)


class Ddp(Single):
    """Launched by torchrun: DistributedDataParallel over an initialised process group.

    Args:
        device: this rank's device (``cuda:LOCAL_RANK`` on GPUs, see ``resolve_device``).
    """

    distributed = True

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.device = device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self._nccl = dist.get_backend() == "nccl"
        # nccl only reduces CUDA tensors; gloo reduces CPU ones.
        self._comm_device = device if self._nccl else torch.device("cpu")

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        # The bit parameters are ordinary module parameters by now, so DDP all-reduces their
        # gradients like any weight's, and its constructor broadcasts rank 0's values.
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def set_epoch(self, loader, epoch: int, seed: int) -> None:
        # DistributedSampler shuffles with its own seed (data.seed) + epoch: same on all ranks.
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def barrier(self) -> None:
        import torch.distributed as dist

        if self._nccl:
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            # Rank 0 may still be writing the artifact: nobody leaves before it is done.
            self.barrier()
            dist.destroy_process_group()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        moved = tensor.to(self._comm_device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def agree(self, flag: bool, what: str = "") -> bool:
        from diffq_cli.errors import InputError

        count = int(self.all_reduce_sum(torch.tensor([int(bool(flag))])))
        if count not in (0, self.world_size):
            raise InputError(f"{what or 'a file'} exists on {count} of {self.world_size} ranks "
                             "only; put the run directory on a filesystem every node shares")
        return bool(count)

    def sync_buffers(self, model) -> None:
        """Copies rank 0's buffers (BatchNorm statistics) to every rank.

        DDP broadcasts them at the start of each training forward, so after the last step each
        rank holds the statistics of its own last batch; the model that is evaluated, and that
        rank 0 saves, must be the same everywhere.
        """
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def accuracy(self, model, loader, device) -> float:
        # Call the unwrapped model: an eval forward through DDP would sync buffers, and the
        # ranks may see different numbers of batches here.
        from diffq_cli.run.evaluate import count_correct

        self.sync_buffers(model)
        real = _real_samples(loader)
        if real is None:  # not sharded: every rank sees the whole set
            correct, total = count_correct(model, loader, device)
            return 100.0 * correct / max(total, 1)
        correct, total = count_correct(model, _first_samples(loader, real), device)
        counts = self.all_reduce_sum(torch.tensor([correct, total], dtype=torch.int64))
        return 100.0 * int(counts[0]) / max(int(counts[1]), 1)


def _real_samples(loader) -> int | None:
    """How many of this rank's samples are real (not padding), or None when not sharded.

    DistributedSampler pads the index list to a multiple of the world size and gives rank r
    positions r, r + W, r + 2W, ...; positions past the dataset's end are the padding, so
    they are the last of each rank's share.
    """
    from torch.utils.data import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return None
    if sampler.drop_last:
        return len(sampler)
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))


def _first_samples(loader, limit: int):
    """The batches of ``loader`` cut after ``limit`` samples (this rank's padding dropped)."""
    seen = 0
    for x, y in loader:
        if seen >= limit:
            break
        x, y = x[: limit - seen], y[: limit - seen]
        seen += len(y)
        yield x, y


def _launched_ranks() -> tuple[int, int]:
    """(world size, local world size) set by torchrun; (1, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def resolve_device(name: str) -> torch.device:
    """The device for ``--device``: ``auto`` picks CUDA when present, else CPU.

    Under torchrun, ``cuda`` (and ``auto``) means ``cuda:LOCAL_RANK``: one GPU per process.

    Raises:
        InputError: CUDA (or MPS) asked for but absent, or one GPU pinned for several ranks.
    """
    from diffq_cli.errors import InputError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' asked for but CUDA is not available; "
                             "use --device cpu")
        _, local_world = _launched_ranks()
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
        elif name != "cuda" and local_world > 1:
            raise InputError(f"--device {name} would put all {local_world} local ranks on one "
                             "GPU; use --device cuda: each rank takes the GPU of its LOCAL_RANK")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) "
                             "visible; lower --nproc_per_node or pick another index")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def check_precision(amp: str, device: torch.device) -> None:
    """Fails early on a ``--amp`` setting the device cannot run.

    fp16 needs CUDA (its loss scaling is CUDA-only, and CPU fp16 kernels are slow or missing):
    an error, rather than a silent fall-back, so that a recipe means the same thing everywhere.
    """
    from diffq_cli.errors import InputError

    if amp == "fp16" and device.type != "cuda":
        raise InputError(f"--amp fp16 needs a CUDA device (running on {device.type}); "
                         "use --amp bf16 or --amp none")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU has no bfloat16 support; use --amp fp16")


def setup(device: torch.device):
    """The helper object for this process (DDP when launched by torchrun with WORLD_SIZE > 1).

    Args:
        device: from ``resolve_device``; selects the backend (nccl on CUDA, gloo otherwise).
    """
    world, _ = _launched_ranks()
    if world <= 1:
        return Single()
    import torch.distributed as dist

    from diffq_cli.errors import InputError

    if not dist.is_available():
        raise InputError("this PyTorch build has no torch.distributed; run without torchrun")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"distributed training runs on cpu or cuda, not {device.type}")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ddp(device)
