"""Format stability: a fixed tiny model gives a state and an artifact payload with pinned
digests, and the checked-in version-1 artifact keeps loading and rebuilding.

If a digest here changes, the file layout changed: bump the format version, keep a reader for
the old one and add a golden file of the new version (never edit a pin to make a test pass).
The digests are of a canonical walk of the objects (tests/golden.py), not of torch.save's bytes,
so a torch release that pickles differently does not break them. The quantizer's ``config``
is left out of the state digest: options get added over time and readers only look up the
keys they know (checked below).
"""

from pathlib import Path

import torch
from golden import digest, golden_diffq, golden_input, golden_model, golden_uniform
from typer.testing import CliRunner

from diffq_cli import restore_quantized_state
from diffq_cli.artifact import read_file
from diffq_cli.cli import app
from diffq_cli.fileio import torch_bytes

GOLDEN_V1 = Path(__file__).parent / "data" / "golden_v1.th"

DIFFQ_STATE = "c01a3848e020f6c80f52a51d3bdc2dd90604344b984a28c906aa005fb5ec3a1a"
UNIFORM_STATE = "934776622bbc65cb6f457299901711c8bba453c0e39a324d3fc2dbdbd19ecd87"
GOLDEN_V1_PAYLOAD = "c4abe30671a5bf2ca01e0a73a909a9c50b485b4f820fa175199e7f30c894f254"


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
