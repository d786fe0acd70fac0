"""plots: tradeoff.svg and bits.svg parse as SVG and hold the expected series (not pixels)."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from diffq_cli import DiffQuantizer
from diffq_cli.files.plots import bits_svg, layer_bits, tradeoff_svg
from tests.quant.conftest import make_net

SVG = "{http://www.w3.org/2000/svg}"


def groups(path) -> dict:
    """SVG ``<g id=...>`` elements by id (matplotlib writes an artist's gid there)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("id")}


def markers(group) -> int:
    return len(group.findall(f".//{SVG}use"))


def test_tradeoff_svg_has_one_marker_per_row_and_series(tmp_path):
    rows = [
        {"method": "float", "label": "float32", "true_mb": 42.6, "accuracy": 95.0},
        *({"method": "ptq", "label": f"{b} bits", "true_mb": 1.3 * b, "accuracy": 90 - 9 * (8 - b)}
          for b in (8, 6, 4, 3, 2)),
        {"method": "diffq", "label": "target=4MiB", "true_mb": 3.9, "accuracy": 93.0},
        {"method": "diffq", "label": "mu=1", "true_mb": 6.1, "accuracy": 94.0},
        {"method": "diffq", "label": "target=3MiB", "true_mb": 2.9, "accuracy": 9.0,
         "collapsed": True},
        {"method": "qat", "label": "3 bits", "true_mb": 4.0, "accuracy": 92.5},
        {"method": "ptq", "label": "no accuracy", "true_mb": 1.0, "accuracy": None},  # skipped
    ]
    path = tmp_path / "tradeoff.svg"
    tradeoff_svg(path, rows, "resnet18 on digits")
    found = groups(path)
    assert markers(found["float"]) == 1
    assert markers(found["ptq"]) == 5
    assert markers(found["diffq"]) == 3
    assert markers(found["qat"]) == 1
    assert "lsq" not in found  # no LSQ row, no LSQ series
    assert [k for k in found if k.startswith("collapsed-")] == ["collapsed-diffq-0"]
    text = path.read_text()
    for label in ("target=4MiB", "mu=1", "3 bits", "true size (MiB, log scale)", "accuracy (%)",
                  "resnet18 on digits", "uniform post-training", "DiffQ"):
        assert label in text, label


def test_bits_svg_one_bar_and_whisker_per_layer_and_a_width_histogram(tmp_path):
    q = DiffQuantizer(make_net(), group_size=4, min_size=1e-3)
    q.no_optimizer()
    first = q._qparams[0]
    with torch.no_grad():  # a spread of widths in the first layer: 2..9 bits
        first.bit_param.copy_(torch.linspace(-4, 1, first.n_groups))
    state = q.get_quantized_state()
    layers, hist = layer_bits(state)
    assert [r["name"] for r in layers] == list(state["quantized"])
    assert sum(hist.values()) == sum(r["numel"] for r in layers)
    assert layers[0]["min"] < layers[0]["max"] and layers[1]["min"] == layers[1]["max"] == 8
    path = tmp_path / "bits.svg"
    bits_svg(path, state, "SmallNet")
    found = groups(path)
    assert {f"layer-{i}" for i in range(len(layers))} <= set(found)
    assert {f"spread-{i}" for i in range(len(layers))} <= set(found)
    assert {f"width-{w}" for w in hist} <= set(found) and "width-1" not in found
    text = path.read_text()
    assert all(r["name"] in text for r in layers) and "group width (bits)" in text


def test_bits_svg_refuses_a_state_with_nothing_quantized(tmp_path):
    q = DiffQuantizer(make_net(), min_size=100)
    with pytest.raises(ValueError, match="no quantized tensor"):
        bits_svg(tmp_path / "x.svg", q.get_quantized_state())


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, diffq_cli.files.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bits_svg_shows_where_the_widths_started(tmp_path):
    q = DiffQuantizer(make_net(), group_size=4, min_size=1e-3)
    q.no_optimizer()
    state = q.get_quantized_state()  # every group ends at 8 bits
    start = [torch.full((qp.n_groups,), 3 + i, dtype=torch.int64)
             for i, qp in enumerate(q._qparams)]
    path = tmp_path / "bits.svg"
    bits_svg(path, state, "SmallNet", start)
    found = groups(path)
    assert {f"start-{i}" for i in range(len(start))} <= set(found)
    assert {f"start-width-{3 + i}" for i in range(len(start))} <= set(found)
    assert "width-8" in found and "mean width at the start" in path.read_text()
    with pytest.raises(ValueError, match="start widths for 1 layers"):
        bits_svg(tmp_path / "x.svg", state, "", start[:1])
