"""Baseline rows: the collapse flag and the best-at-its-size marks, whatever the method."""

import pytest

from diffq_cli.baselines import collapsed, mark_best


@pytest.mark.parametrize(("accuracy", "classes", "flag"), [
    (10.0, 10, True), (14.9, 10, True), (15.0, 10, False), (89.6, 10, False),
    (1.4, 100, True), (1.6, 100, False), (None, 10, False)])
def test_collapsed_is_below_one_and_a_half_times_chance(accuracy, classes, flag):
    assert collapsed(accuracy, classes) is flag


def test_a_collapsed_lsq_row_is_never_best_and_a_small_accurate_one_is():
    rows = [{"method": "lsq", "label": "2 bits", "true_mb": 0.41, "accuracy": 10.0},
            {"method": "qat", "label": "2 bits", "true_mb": 0.41, "accuracy": 88.9},
            {"method": "qat", "label": "3 bits", "true_mb": 0.61, "accuracy": 90.0},
            {"method": "diffq", "label": "mu=10", "true_mb": 0.62, "accuracy": 89.9},
            {"method": "diffq", "label": "mu=1", "true_mb": 0.80, "accuracy": 90.2}]
    mark_best(rows)
    assert [r["best"] for r in rows] == [False, True, True, False, True]
    assert [collapsed(r["accuracy"], 10) for r in rows] == [True, False, False, False, False]
