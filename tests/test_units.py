"""units.human: the one formatter behind every table and log line."""

import pytest

from diffq_cli.units import MIB, human


@pytest.mark.parametrize("value, kind, text", [
    (94.98607242339833, "pct", "94.99 %"),
    (-1.375, "pp", "-1.38 pp"),
    (10.685338020324707, "mib", "10.685 MiB"),
    (3.814697265625e-05, "mib_small", "<0.0001 MiB"),
    (2.25, "mib_small", "2.2500 MiB"),
    (0.0, "mib_small", "0.0000 MiB"),
    (9_638_749, "bytes", "9,638,749 bytes (9.192 MiB)"),
    (1797, "count", "1,797"),
    (7.62939453125e-06, "diff", "7.6e-06"),
    (1e-4, "diff", "1e-04"),
    (0.0, "diff", "0"),
    (4.6388, "ratio", "4.64×"),
    (0.00030779148512155856, "mu", "0.000308"),
    (True, "pct", "yes"),
    (None, "mib", "—"),
    (float("nan"), "pct", "—"),
    (1e-3, "text", "0.001"),
    ("mu=0.001", "text", "mu=0.001"),
])
def test_human(value, kind, text):
    assert human(value, kind) == text


def test_unit_can_be_left_to_the_column_header():
    assert human(10.685338020324707, "mib", unit=False) == "10.685"
    assert human(2_200_000, "bytes", unit=False) == "2,200,000"
    assert MIB == 2**20
