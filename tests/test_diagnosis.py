"""Diagnosis helpers on planted predictions whose failure mode is known."""

from __future__ import annotations

import numpy as np
import pytest

from zsvss_nb.errors import LabelError
from zsvss_nb.evaluation.diagnosis import (
    class_splits,
    frame_windows,
    protocol_gaps,
    refinement_stats,
    window_accuracy,
    window_swaps,
)


def gt_video(n: int = 6) -> list[np.ndarray]:
    """Class 0 on the left half, class 1 on the right, class 2 in the bottom row."""
    g = np.zeros((4, 8), dtype=np.int64)
    g[:, 4:] = 1
    g[3] = 2
    return [g.copy() for _ in range(n)]


def test_frame_windows_follow_the_shifted_last_window() -> None:
    assert frame_windows(5, 2).tolist() == [0, 0, 1, 1, 2]
    assert frame_windows(30, 14).tolist() == [0] * 14 + [1] * 14 + [2] * 2


def test_a_split_class_costs_hungarian_but_not_majority() -> None:
    gts = gt_video()
    preds = [g.copy() for g in gts]
    for p in preds:
        p[:, :2][p[:, :2] == 0] = 7  # class 0 split over ids 0 and 7
    gaps = protocol_gaps(preds, gts, 3, 255)
    assert gaps.acc["majority"] == pytest.approx(1.0)
    assert gaps.drift == pytest.approx(0.0)
    assert gaps.splits == pytest.approx(6 / 32)  # the 6 cells of id 7 per frame
    assert class_splits(preds, gts, 3, 255).tolist() == [2, 1, 1]


def test_ids_swapping_at_a_window_boundary_show_as_drift_and_swaps() -> None:
    gts = gt_video(6)
    wins = frame_windows(6, 3)
    preds = [g.copy() for g in gts]
    for p in preds[3:]:  # from window 1 on, ids 0 and 1 are exchanged
        p[(p == 0) | (p == 1)] = 1 - p[(p == 0) | (p == 1)]
    gaps = protocol_gaps(preds, gts, 3, 255)
    assert gaps.acc["majority"] == pytest.approx(1.0)
    assert gaps.drift == pytest.approx(0.5 * 24 / 32)  # half the frames lose classes 0 and 1
    np.testing.assert_allclose(window_accuracy(preds, gts, wins, 3, 255), [1.0, 8 / 32])
    np.testing.assert_allclose(window_swaps(preds, gts, wins, 3, 255), [24 / 32])
    consistent = window_swaps(gts, gts, wins, 3, 255)
    np.testing.assert_allclose(consistent, [0.0])


def test_void_pixels_are_not_counted_and_bad_input_is_refused() -> None:
    gts = gt_video(2)
    gts[0][0, 0] = 255
    preds = [g.copy() for g in gts]
    preds[0][0, 0] = 5  # a wrong id on a void pixel changes nothing
    assert protocol_gaps(preds, gts, 3, 255).acc["hungarian"] == pytest.approx(1.0)
    with pytest.raises(LabelError):
        protocol_gaps(preds, gts[:1], 3, 255)


def test_refinement_stats_counts_survivors_and_changed_cells() -> None:
    coarse = np.zeros((2, 2, 2), dtype=np.int64)
    refined = coarse.copy()
    refined[1, 0, 0] = 3
    stats = refinement_stats(coarse, refined, np.array([True, False, False, False]))
    assert stats == {"survival": 0.25, "changed": 1 / 8}
