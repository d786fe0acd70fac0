"""Bit packing: exact round trips for every width, the packed size, bad input."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diffq_cli.quant.pack import MAX_WIDTH, pack, packed_nbytes, unpack

widths = st.integers(1, MAX_WIDTH)
lengths = st.integers(0, 100_000)
seeds = st.integers(0, 2**31 - 1)


def _values(n: int, width: int, seed: int, dtype=torch.int64) -> torch.Tensor:
    # Values from a seeded torch RNG: hypothesis picks sizes, torch makes them fast.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**width, (n,), generator=generator, dtype=dtype)


@settings(max_examples=50, deadline=None)
@given(width=widths, n=lengths, seed=seeds)
@example(width=1, n=100_000, seed=0)
@example(width=7, n=99_999, seed=1)
@example(width=15, n=100_000, seed=2)
@example(width=11, n=0, seed=3)
def test_pack_unpack_is_exact(width, n, seed):
    values = _values(n, width, seed)
    data = pack(values, width)
    assert data.dtype == torch.uint8 and data.dim() == 1
    out = unpack(data, width, n)
    assert out.dtype == (torch.uint8 if width <= 8 else torch.int16)
    assert out.shape == (n,)
    assert torch.equal(out.long(), values)


@settings(max_examples=50, deadline=None)
@given(width=widths, n=lengths)
def test_packed_size_formula(width, n):
    size = packed_nbytes(n, width)
    assert pack(torch.zeros(n, dtype=torch.int64), width).numel() == size
    # Planes of 8, 4, 2 and 1 bits (popcount(width) of them) each round up to whole bytes.
    exact = -(-n * width // 8)
    assert exact <= size <= exact + bin(width).count("1") - 1
    if n % 8 == 0:
        assert size == n * width // 8


@pytest.mark.parametrize("width", range(1, MAX_WIDTH + 1))
def test_extreme_values_and_input_dtypes(width):
    top = 2**width - 1
    values = torch.tensor([0, top, 1, top - 1, top, 0, 0, top, 1], dtype=torch.int64) % (top + 1)
    dtypes = [torch.int64, torch.int32, torch.int16]
    if width <= 8:
        dtypes.append(torch.uint8)
    for dtype in dtypes:
        out = unpack(pack(values.to(dtype), width), width, values.numel())
        assert torch.equal(out.long(), values), dtype


def test_shape_is_flattened_and_extra_bytes_ignored():
    values = _values(6 * 7, 5, 0).view(6, 7)
    data = pack(values, 5)
    padded = torch.cat([data, torch.full((3,), 255, dtype=torch.uint8)])
    assert torch.equal(unpack(padded, 5, 42).long(), values.reshape(-1))


def test_pack_does_not_alias_its_input():
    values = _values(64, 8, 0, dtype=torch.uint8)
    data = pack(values, 8)
    data.zero_()
    assert values.any()


@pytest.mark.parametrize("width", [0, 16, 2.0, -1])
def test_bad_width(width):
    with pytest.raises(ValueError, match="bit width"):
        pack(torch.zeros(4, dtype=torch.int64), width)
    with pytest.raises(ValueError, match="bit width"):
        unpack(torch.zeros(4, dtype=torch.uint8), width, 4)


def test_short_or_wrong_data():
    data = pack(_values(100, 7, 0), 7)
    with pytest.raises(ValueError, match="too short"):
        unpack(data[:-1], 7, 100)
    with pytest.raises(ValueError, match="too short"):
        unpack(data.to(torch.int16), 7, 100)
