"""Time left of a run, smoothed: :class:`EtaEstimate` (pure Python, no Qt, so that it is tested headless)."""

from __future__ import annotations

import math

__all__ = ["EtaEstimate", "format_seconds"]


class EtaEstimate:
    """Time left from ``(elapsed, fraction done)`` reports, smoothed so that it does not jump.

    The pace (seconds per unit of the fraction done) is the ratio of two exponentially decaying sums, of the
    seconds and of the fraction done between consecutive reports: each report ``dt`` seconds after the previous
    one first multiplies both sums by ``exp(-dt / tau)``. The pace is thus the mean pace of about the last ``tau``
    seconds, whether progress comes every network step (many reports a second) or every radius of the ladder (one
    every few seconds), and long steps do not count twice. The sums start from the whole run so far. The time left
    is ``pace * (1 - fraction)``: it follows a change of pace within a few ``tau``, does not jump with the scatter
    of single steps, and reaches 0 when the run is done. Nothing is estimated before 2 % and 1 s.

    Parameters
    ----------
    tau : float
        Time constant of the average, seconds (default 20).
    """

    def __init__(self, tau: float = 20.0):
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive number of seconds, got {tau!r}")
        self.tau = float(tau)
        self._seconds = 0.0  # decaying sum of the seconds between reports
        self._done = 0.0  # decaying sum of the fraction done between reports
        self._last: tuple[float, float] | None = None

    @property
    def pace(self) -> float | None:
        """Smoothed seconds per unit of the fraction done.

        Returns
        -------
        float or None
            None before the first estimate.
        """
        return self._seconds / self._done if self._done > 0 else None

    def update(self, elapsed: float, fraction: float) -> float | None:
        """Add one progress report; the seconds left.

        Parameters
        ----------
        elapsed : float
            Seconds since the run started.
        fraction : float
            Fraction of the run done (0-1).

        Returns
        -------
        float or None
            Seconds left, or None while too early to tell (before 2 % and 1 s).
        """
        elapsed, fraction = float(elapsed), min(float(fraction), 1.0)
        if fraction <= 0.02 or elapsed < 1.0:
            return None
        if self._last is None:
            self._seconds, self._done = elapsed, fraction
        else:
            dt, df = elapsed - self._last[0], fraction - self._last[1]
            if dt >= 0 and df >= 0:
                decay = math.exp(-dt / self.tau)
                self._seconds = self._seconds * decay + dt
                self._done = self._done * decay + df
        self._last = (elapsed, fraction)
        pace = self.pace
        return None if pace is None else max(0.0, pace * (1.0 - fraction))


def format_seconds(seconds: float) -> str:
    """``"42 s"`` or ``"3 min 05 s"``.

    Parameters
    ----------
    seconds : float
        A duration (negative: 0).

    Returns
    -------
    str
        The duration in words.
    """
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"

