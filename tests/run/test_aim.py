"""The mu controller of --target-mb: direction, bounds, anti-windup, resumable state."""

import math

import pytest

from diffq_cli.run.targets import AIM, MU_MAX, MU_MIN, FixedMu, MuController


def test_mu_grows_above_the_aim_and_shrinks_below():
    ctl = MuController(4.0, mu=1.0)
    assert ctl.aim_mb == pytest.approx(4.0 * AIM)
    ups = [ctl.update(6.0) for _ in range(5)]
    assert ups == sorted(ups) and ups[0] > 1.0
    downs = [ctl.update(2.0) for _ in range(40)]
    assert downs[-1] < downs[0] and downs[-1] < 1.0


def test_mu_holds_at_the_aim():
    ctl = MuController(4.0, mu=0.3)
    assert ctl.update(ctl.aim_mb) == pytest.approx(0.3)


def test_mu_is_bounded_and_comes_back_at_once_after_a_long_saturation():
    ctl = MuController(1.0, mu=1.0)
    for _ in range(1000):  # far above the aim for a long time
        mu = ctl.update(100.0)
    assert mu == pytest.approx(MU_MAX)
    # No wind-up: a few steps below the aim bring mu off the bound.
    for _ in range(3):
        mu = ctl.update(0.5)
    assert mu < MU_MAX / 10
    for _ in range(1000):
        mu = ctl.update(1e-3)
    assert mu == pytest.approx(MU_MIN)


def test_state_round_trip_continues_identically():
    a = MuController(3.0)
    for size in (5.0, 4.0, 3.5):
        a.update(size)
    b = MuController(3.0)
    b.load_state_dict(a.state_dict())
    assert [a.update(s) for s in (3.0, 2.5)] == [b.update(s) for s in (3.0, 2.5)]
    assert math.isfinite(b.mu)


def test_fixed_mu_ignores_the_size():
    fixed = FixedMu(0.1)
    assert fixed.update(1e9) == 0.1 and fixed.target_mb is None


def test_calibration_steers_the_true_size_not_the_raw_penalty():
    plain, calibrated = MuController(4.0, mu=1.0), MuController(4.0, mu=1.0)
    # The penalty reads 4.2 MB while the rounded model is 3.9 MB, just above the aim (3.88):
    # the raw penalty would call for a much larger mu.
    calibrated.calibrate(4.2, 3.9)
    assert calibrated.update(4.2) < plain.update(4.2)
    assert calibrated.state_dict()["offset"] == pytest.approx(0.3)
