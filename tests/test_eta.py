"""The widget's smoothed time-left estimate (``napari_mollifier._napari.eta``), headless: no Qt needed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mollifier._napari.eta import EtaEstimate


def _reports(durations):
    """``(elapsed, fraction)`` after every unit of work, from the seconds each unit took."""
    t = np.cumsum(durations)
    return list(zip(t, np.arange(1, len(t) + 1) / len(t), strict=True))


def test_steady_progress_gives_the_exact_time_left():
    eta = EtaEstimate()
    reports = _reports(np.full(200, 0.5))
    for t, f in reports:
        left = eta.update(t, f)
        if f <= 0.02 or t < 1.0:
            assert left is None
        else:
            assert left == pytest.approx(100.0 - t, abs=1e-6)
    assert left == 0.0


def test_nothing_before_two_percent_and_one_second():
    eta = EtaEstimate()
    assert eta.update(0.5, 0.5) is None  # < 1 s
    assert eta.update(5.0, 0.01) is None  # < 2 %
    assert eta.update(5.0, 0.5) == pytest.approx(5.0)


def test_scattered_step_times_do_not_make_it_jump():
    """Steps of 0.05 .. 0.75 s at random (a busy CPU): the time left from the last step's pace jumps by minutes
    from one step to the next; the smoothed one moves by seconds and stays near the truth."""
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.05, 0.75, 1000)
    reports = _reports(durations)
    eta = EtaEstimate()
    smooth = np.array([np.nan if (v := eta.update(t, f)) is None else v for t, f in reports])
    t = np.array([r[0] for r in reports])
    f = np.array([r[1] for r in reports])
    last_pace = np.r_[np.nan, np.diff(t) / np.diff(f)] * (1 - f)  # unsmoothed: the pace of the last step
    ok = np.isfinite(smooth)
    jump_last, jump_smooth = np.nanmax(np.abs(np.diff(last_pace[ok]))), np.max(np.abs(np.diff(smooth[ok])))
    assert jump_last > 300 and jump_smooth < jump_last / 30, (jump_smooth, jump_last)
    true_left = t[-1] - t
    mid = ok & (f > 0.1) & (f < 0.8)
    assert np.max(np.abs(smooth[mid] - true_left[mid]) / true_left[mid]) < 0.15
    assert smooth[-1] == 0.0


def test_a_slow_stage_then_a_fast_one_only_counts_down():
    """40 units of 3 s (like the radius ladder) then 2960 of 0.1 s (like network steps): once the fast stage runs,
    the time left never goes up (no "0:23 -> 1:26"), it reaches the true time left within a few tau, and ends
    at 0."""
    durations = np.r_[np.full(40, 3.0), np.full(2960, 0.1)]
    reports = _reports(durations)
    eta = EtaEstimate()
    smooth = np.array([np.nan if (v := eta.update(t, f)) is None else v for t, f in reports])
    t = np.array([r[0] for r in reports])
    fast = np.isfinite(smooth) & (t > t[39])
    assert np.all(np.diff(smooth[fast]) <= 1e-9)
    later = t > t[39] + 8 * eta.tau  # eight time constants into the fast stage
    assert np.allclose(smooth[later], (t[-1] - t)[later], rtol=0.05, atol=1.0)
    assert smooth[-1] == 0.0


def test_tau_must_be_positive():
    with pytest.raises(ValueError):
        EtaEstimate(tau=0.0)
