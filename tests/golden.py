"""The fixed tiny model of the format-stability tests, and a canonical digest of saved objects.

The digest walks an object (sorted dict keys, tensors as dtype + shape + raw bytes) so it pins
our layout and values, not the bytes of torch's pickler, which may change between releases.
"""

import hashlib
import struct

import torch

from diffq_cli import DiffQuantizer, UniformQuantizer


def golden_model() -> torch.nn.Module:
    """Two Linear layers with weights set from a formula (no RNG involved)."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            values = torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.37 + k)
            p.copy_((values * 0.5).view(p.shape).float())
    return model


def golden_diffq(model: torch.nn.Module, grid: str = "minmax") -> DiffQuantizer:
    """DiffQ, group 4, bias of the last layer kept in float, logits spread over 3..8 bits."""
    quantizer = DiffQuantizer(model, min_size=0, group_size=4, exclude=["2.bias"], grid=grid)
    quantizer.no_optimizer()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_diffq"):
                p.copy_(torch.linspace(-3.9, -0.1, p.numel(), dtype=torch.float64).float())
    return quantizer


def golden_uniform(model: torch.nn.Module) -> UniformQuantizer:
    return UniformQuantizer(model, bits=3, min_size=0)


def golden_peaked_model(hidden: int = 64) -> torch.nn.Module:
    """The golden model's shape, wider, with peaked (Gaussian-like) weights from a formula and
    two outliers per tensor: its 4-bit levels are skewed enough for the v2 artifact to
    entropy-code them (the tiny model's streams are too short: they all stay bit-packed)."""
    model = torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 3))
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            steps = torch.arange(1, p.numel() + 1, dtype=torch.float64)
            values = torch.special.ndtri(torch.frac(steps * 0.6180339887 + 0.1 * k)) * 0.1
            values[:2] = torch.tensor([0.6, -0.6], dtype=torch.float64)[: values.numel()]
            p.copy_(values.view(p.shape).float())
    return model


def golden_input() -> torch.Tensor:
    return torch.cos(torch.arange(5 * 6, dtype=torch.float64) * 0.61).view(5, 6).float()


def digest(obj) -> str:
    """SHA-256 of a canonical encoding of ``obj`` (dict, list, primitives, tensors)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, dict):
        h.update(b"d%d:" % len(obj))
        for key in sorted(obj, key=str):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"l%d:" % len(obj))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, bool) or obj is None:
        h.update(repr(obj).encode())
    elif isinstance(obj, int):
        h.update(b"i%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(b"s%d:" % len(data) + data)
    elif torch.is_tensor(obj):
        t = obj.detach().contiguous()
        h.update(f"t{t.dtype}{list(t.shape)}:".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        raise TypeError(f"digest: unsupported {type(obj).__name__}")


def write_golden_v2(data_dir) -> None:
    """Writes tests/files/golden/golden_v2*.th with the current code (run once, when the v2
    layout was pinned: ``python -c "import golden; golden.write_golden_v2('files/golden')"``
    from tests/)."""
    from pathlib import Path

    from diffq_cli.files.artifact import save_artifact

    data_dir = Path(data_dir)
    for path, model, make in ((data_dir / "golden_v2.th", golden_model(), golden_diffq),
                              (data_dir / "golden_v2_ans.th", golden_peaked_model(),
                               lambda m: UniformQuantizer(m, bits=4, min_size=0))):
        quantizer = make(model)
        with torch.no_grad():
            logits = model.eval()(golden_input())
        spec = {"name": "golden_mlp", "source": "torch", "num_classes": 3, "in_chans": 1,
                "input_size": 6}
        save_artifact(path, quantizer.get_quantized_state(), spec, {"dataset": None},
                      {"quant": {"method": type(quantizer).__name__}},
                      {"expected_logits": logits.tolist()})


def _write_restored(path, state) -> None:
    """Saves ``state`` as an artifact whose metrics hold the logits of a model restored from it."""
    from diffq_cli import restore_quantized_state
    from diffq_cli.files.artifact import save_artifact

    model = golden_model()
    restore_quantized_state(model, state)
    with torch.no_grad():
        logits = model.eval()(golden_input())
    spec = {"name": "golden_mlp", "source": "torch", "num_classes": 3, "in_chans": 1,
            "input_size": 6}
    save_artifact(path, state, spec, {"dataset": None}, {"quant": {"method": "DiffQuantizer"}},
                  {"expected_logits": logits.tolist()})


def write_golden_learned0(path) -> None:
    """Wrote tests/files/golden/golden_v2_learned0.th with the code of the learned grid's
    zero-level levels (commit 3e8c05b, run once): the tiny DiffQ model on ``grid="learned"``,
    and in its metrics the logits of a model restored from that state."""
    _write_restored(path, golden_diffq(golden_model(), grid="learned").get_quantized_state())


def write_golden_channel(path) -> None:
    """Wrote tests/files/golden/golden_v2_channel.th with the code of the per-channel min/max
    grid (``grid="channel"``, commit 746d7e8, run once, before that grid was removed from
    training): the tiny DiffQ model, and in its metrics the logits of a model restored from it.
    Files on that grid keep loading and evaluating the same."""
    _write_restored(path, golden_diffq(golden_model(), grid="channel").get_quantized_state())
