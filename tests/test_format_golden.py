"""Format stability: a fixed tiny model gives a state and an artifact payload with pinned
digests, and the checked-in version-1 artifact keeps loading and rebuilding.

If a digest here changes, the file layout changed: bump the format version, keep a reader for
the old one and add a golden file of the new version (never edit a pin to make a test pass).
The digests are of a canonical walk of the objects (tests/golden.py), not of torch.save's bytes,
so a torch release that pickles differently does not break them. The quantizer's ``config``
is left out of the state digest: options get added over time and readers only look up the
keys they know (checked below).
"""

import gzip
import io
from pathlib import Path

import pytest
import torch
from golden import (
    digest,
    golden_diffq,
    golden_input,
    golden_model,
    golden_peaked_model,
    golden_uniform,
)
from typer.testing import CliRunner

from diffq_cli import UniformQuantizer, restore_quantized_state
from diffq_cli.artifact import read_file
from diffq_cli.cli import app
from diffq_cli.coding import encode_state
from diffq_cli.fileio import torch_bytes

GOLDEN_V1 = Path(__file__).parent / "data" / "golden_v1.th"

DIFFQ_STATE = "c01a3848e020f6c80f52a51d3bdc2dd90604344b984a28c906aa005fb5ec3a1a"
UNIFORM_STATE = "934776622bbc65cb6f457299901711c8bba453c0e39a324d3fc2dbdbd19ecd87"
GOLDEN_V1_PAYLOAD = "c4abe30671a5bf2ca01e0a73a909a9c50b485b4f820fa175199e7f30c894f254"
# Version 2 (entropy-coded): the tiny DiffQ model (bit-packed and constant streams) and a wider
# peaked model at 4 bits (an ANS stream), written by tests/golden.py:write_golden_v2. Their coded
# states pin the coder's output: a constriction release that codes differently changes them.
GOLDEN_V2 = {
    "golden_v2.th": (golden_model, golden_diffq,
                     "d6b766e800b46c9a1cf692270dbf43831d29e9184fed3a14148b1abf8040e8a6", "const"),
    "golden_v2_ans.th": (golden_peaked_model, lambda m: UniformQuantizer(m, bits=4, min_size=0),
                         "df2f24077ca89c6f8c275b590002c87dc38915a6936e624bd5a9e3672cc527ee", "ans"),
}


def without_config(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "config"}


def payload(artifact: dict) -> dict:
    """What an artifact stores for the model, minus the library versions that wrote it."""
    out = {k: v for k, v in artifact.items() if k != "versions"}
    out["state"] = without_config(out["state"])
    return out


def test_diffq_state_digest_is_pinned():
    quantizer = golden_diffq(golden_model())
    state = quantizer.get_quantized_state()
    assert digest(without_config(state)) == DIFFQ_STATE
    assert state["config"]["group_size"] == 4 and state["config"]["float16"] is False
    # The same state saves to the same bytes (no time stamps or random ids in the file).
    assert torch_bytes(state, compress=True) == torch_bytes(quantizer.get_quantized_state(),
                                                            compress=True)


def test_uniform_state_digest_is_pinned():
    assert digest(without_config(golden_uniform(golden_model()).get_quantized_state())) == \
        UNIFORM_STATE


def test_golden_v1_artifact_loads_and_rebuilds():
    kind, artifact = read_file(GOLDEN_V1)
    assert kind == "artifact" and artifact["version"] == 1
    assert digest(payload(artifact)) == GOLDEN_V1_PAYLOAD
    model = golden_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    restore_quantized_state(model, artifact["state"])
    with torch.no_grad():
        out = model.eval()(golden_input())
    # Outputs recorded when the file was written, and today's quantizer on the same model.
    expected = torch.tensor(artifact["metrics"]["expected_logits"])
    assert torch.equal(out, expected)
    live = golden_model()
    golden_diffq(live)
    with torch.no_grad():
        assert torch.equal(live.eval()(golden_input()), out)


def test_golden_v1_artifact_through_size():
    result = CliRunner().invoke(app, ["size", str(GOLDEN_V1), "--json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "artifact"' in result.stdout


def _raw(path: Path) -> dict:
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)


@pytest.mark.parametrize("name", sorted(GOLDEN_V2))
def test_golden_v2_artifact_loads_and_codes_the_same(name):
    make_model, make_quantizer, pinned, mode = GOLDEN_V2[name]
    path = GOLDEN_V1.parent / name
    raw = _raw(path)
    assert raw["version"] == 2
    assert digest(payload(raw)) == pinned
    modes = {s["mode"] for e in raw["state"]["quantized"].values() for s in e["streams"]}
    assert mode in modes, modes  # the coder itself is pinned, not only the packing
    # Today's encoder gives the very same coded streams for the same model...
    live = make_model()
    quantizer = make_quantizer(live)
    coded = encode_state(quantizer.get_quantized_state())
    for key in ("payload", "symbols", "counts"):
        assert torch.equal(coded[key], raw["state"][key]), key
    assert coded["quantized"] == raw["state"]["quantized"]
    # ...and today's decoder gives back weights with the outputs recorded when it was written.
    kind, artifact = read_file(path)
    assert kind == "artifact"
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    live_state = quantizer.get_quantized_state()
    for key, entry in artifact["state"]["quantized"].items():  # decoded exactly
        assert torch.equal(entry["data"], live_state["quantized"][key]["data"]), key
    restore_quantized_state(model, artifact["state"])
    with torch.no_grad():
        out = model.eval()(golden_input())
        # A 64-wide matmul may sum in another order with other thread settings: 1e-6 slack.
        expected = torch.tensor(artifact["metrics"]["expected_logits"])
        assert torch.allclose(out, expected, rtol=0, atol=1e-6)
        assert torch.allclose(live.eval()(golden_input()), out, rtol=0, atol=1e-6)
