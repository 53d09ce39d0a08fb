"""The benchmark's target table: a value and its verdict must not contradict each other."""

from __future__ import annotations

import pytest

from bench.report import check_row


def test_check_row_met():
    assert check_row("pull throughput", 1.2, 1.0, True, "x") == (
        "| pull throughput | 1.20x (target >= 1x) | met |"
    )


@pytest.mark.parametrize(
    ("value", "higher_is_better", "shown"),
    [(2.003, False, "2.0030x"), (1.9961, True, "1.9961x")],
)
def test_check_row_just_past_target(value, higher_is_better, shown):
    """A value that rounds to the target at two decimals is shown with four."""
    row = check_row("cpu", value, 2.0, higher_is_better, "x")
    assert f"| {shown} (target" in row
    assert row.endswith("| NOT met |")


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_check_row_tick_ratio_on_target(higher_is_better):
    """A ratio of 28 to 14 clock ticks meets a 2x target despite float error."""
    # The medians of get-v2 c=1 in the run 20261204T020412Z, in ms per request.
    value = 0.13999999999999968 / 0.06999999999999941
    assert value != 2.0
    row = check_row("cpu", value, 2.0, higher_is_better, "x")
    assert "| 2.00x (target" in row
    assert row.endswith("| met |")


def test_check_row_not_measured():
    assert check_row("pull", None, 1.0, True, "x") == "| pull | - | not measured |"
