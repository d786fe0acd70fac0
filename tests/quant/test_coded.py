"""The entropy-coded file's size, estimated from the weights (quant/coded.py), against the coder
and the artifact it writes."""

import numpy as np
import pytest
import torch
from torch import nn

from diffq_cli import DiffQuantizer, UniformQuantizer
from diffq_cli.config.load import load_recipe, recipe_to_dict
from diffq_cli.files.artifact import artifact_bytes
from diffq_cli.files.coding import TABLE_BYTES, _Writer
from diffq_cli.quant import coded
from diffq_cli.quant.budget import (
    integer_widths,
    logits_for_bits,
    set_uniform_bits,
    start_at_size,
)


class WideNet(nn.Module):
    """Three quantized tensors of trained-like (Laplace) weights, ~670k values: big enough that
    the file is mostly coded levels, as in a real model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 64, 3)
        self.bn = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(512, 1024)
        self.fc2 = nn.Linear(1024, 128)

    def forward(self, x):
        return self.fc2(self.fc1(x))


def _net(seed=0):
    torch.manual_seed(seed)
    net = WideNet()
    laplace = torch.distributions.Laplace(0.0, 0.02)
    with torch.no_grad():
        for p in (net.conv.weight, net.fc1.weight, net.fc2.weight):
            p.copy_(laplace.sample(p.shape))
        net.bn.running_mean.uniform_(-0.5, 0.5)
    return net


def _file_mb(quantizer) -> float:
    """The artifact's size with the metadata a finetune run writes (the default recipe)."""
    recipe = recipe_to_dict(load_recipe("default"))
    metrics = dict.fromkeys(("accuracy", "true_mb", "mean_bits", "mu", "float_mb"), 0.3)
    blob = artifact_bytes(quantizer.get_quantized_state(),
                          {"name": "resnet18", "source": "timm", "num_classes": 10},
                          {"dataset": "digits", "mean": [0.5], "std": [0.5]}, recipe, metrics)
    return len(blob) / 2**20


def _coder_bytes(values: np.ndarray, width: int) -> int:
    writer = _Writer()
    stream = writer.add("levels", width, values, width, 0)
    (t0, t1), (d0, d1) = stream["table"], stream["data"]
    return (d1 - d0) + TABLE_BYTES * (t1 - t0)


@pytest.mark.parametrize("kind", ["peaked", "flat", "constant", "two"])
def test_stream_bits_is_what_the_coder_writes(kind):
    rng = np.random.default_rng(0)
    values = {"peaked": np.clip(np.round(rng.laplace(8, 1.5, 20000)), 0, 15),
              "flat": rng.integers(0, 16, 20000),
              "constant": np.full(500, 3),
              "two": rng.integers(0, 2, 999)}[kind].astype(np.uint8)
    width = 4 if kind != "two" else 1
    estimate = coded.stream_bits(torch.from_numpy(values), width) / 8
    assert abs(estimate - _coder_bytes(values, width)) <= 8  # ANS ends within a word or two


@pytest.mark.parametrize("grid", ["minmax", "learned"])
@pytest.mark.parametrize("bits", [2, 3, 4, "mixed"])
def test_file_model_size_tracks_the_artifact_within_3_percent(grid, bits):
    q = DiffQuantizer(_net(), group_size=8, grid=grid)
    if bits == "mixed":
        torch.manual_seed(1)
        for qp in q.quantized:
            widths = torch.randint(2, 6, (qp.n_groups,)).double()
            with torch.no_grad():
                qp.bit_param.copy_(logits_for_bits(q, widths))
    else:
        set_uniform_bits(q, bits)
    real = _file_mb(q)
    assert q.file_model_size() == pytest.approx(real, rel=0.03)
    assert float(q.model_size(exact=True, file=True)) == pytest.approx(real, rel=0.03)
    assert real < q.true_model_size()  # peaked levels: the coder saves on the packed size


def test_the_differentiable_file_size_matches_at_whole_widths_and_has_gradients():
    q = DiffQuantizer(_net(), group_size=8)
    set_uniform_bits(q, 3)
    size = q.model_size(file=True)
    assert float(size.detach()) == pytest.approx(q.file_model_size(), rel=0.01)
    size.backward()
    for qp in q.quantized:  # one more bit costs file bytes: every width has a gradient
        assert qp.bit_param.grad is not None and bool((qp.bit_param.grad > 0).all())


def test_a_wider_grid_costs_more_per_weight_and_high_widths_add_a_bit_each():
    q = DiffQuantizer(_net(), group_size=8)
    table = q.refresh_file_tables().table
    for row in table:
        assert bool((row[3:] >= row[2:-1] - 1e-6).all())  # never cheaper to be wider
        assert float(row[2]) < 2.0  # peaked levels code under their packed width
        assert float(row[12] - row[11]) == pytest.approx(1.0)


def test_fixed_width_quantizers_estimate_their_file_too():
    q = UniformQuantizer(_net(), bits=4)
    assert q.file_model_size() == pytest.approx(_file_mb(q), rel=0.03)
    assert float(q.model_size(file=True)) == pytest.approx(q.file_model_size())


def test_start_at_size_can_aim_at_the_file():
    q = DiffQuantizer(_net(), group_size=8)
    target = 0.5 * (_file_mb(_at(q, 2)) + _file_mb(_at(q, 3)))
    tables = q.refresh_file_tables()
    start_at_size(q, target, {qp.name: 1.0 for qp in q.quantized}, sizer=tables.widths_mb)
    assert 0.99 * target <= tables.widths_mb(q.quantized, integer_widths(q)) <= target
    # The start widths come in runs (the first groups of a tensor one bit wider), which the
    # coder packs a little under their order-0 bound: the file is at most the target.
    assert 0.9 * target <= _file_mb(q) <= 1.005 * target
    assert q.true_model_size() > target  # the true size alone would have started far lower


def _at(q, bits):
    set_uniform_bits(q, bits)
    return q
