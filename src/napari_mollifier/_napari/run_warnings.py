"""Warnings raised during a widget run reach the user (issue 13): napari notifications and the status line.

``infer_rates`` runs in the widget's solver thread and issues :class:`~napari_mollifier.errors.MollifierWarning`
(plausibility of the input, coefficients estimated under the units policy, negative rates, ...). Left alone they
would go to ``warnings.showwarning`` of a background thread: at best a console line, at worst nothing (the default
filter shows each one once per code location, so a second run with the same problem is silent).

* :func:`capture` (solver thread) records every ``MollifierWarning`` of the run into ``job.run_warnings`` as
  ``(category name, message)``; any other warning is passed on to ``warnings.showwarning`` unchanged.
* :func:`announce` (main thread, once the layers are in) shows each captured warning not already shown as a
  napari warning notification, and appends the plausibility warnings of the run (with those found before it
  started) to the widget's status line; the full texts are in the status line's tooltip.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .job import _Job
    from .widget import MollifierWidget

__all__ = ["announce", "capture", "short"]


@contextlib.contextmanager
def capture(sink: list) -> Iterator[list]:
    """Record the run's ``MollifierWarning`` messages into ``sink`` (solver thread).

    Any other warning is passed on to ``warnings.showwarning`` unchanged when the block ends.

    Parameters
    ----------
    sink : list
        Receives ``(category name, message)`` tuples, without repeats.

    Yields
    ------
    list
        ``sink``.
    """
    from napari_mollifier.errors import MollifierWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MollifierWarning)  # every run says it again, not once per location
        try:
            yield sink
        finally:
            others = []
            for w in caught:
                if issubclass(w.category, MollifierWarning):
                    item = (w.category.__name__, str(w.message))
                    if item not in sink:
                        sink.append(item)
                else:
                    others.append(w)
    for w in others:  # not ours: as they would have been shown without the capture
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def short(message: str) -> str:
    """Return the first clause of the warning ``message`` (before its explanation, <= 160 chars) for the status line."""
    head = message.split(": ", 1)[0] if ": " in message[:160] else message
    return head if len(head) <= 160 else head[:157] + "..."


def announce(widget: MollifierWidget, job: _Job, results: list) -> list[str]:
    """Show the run's warnings (main thread, after a run).

    Notifications, and the plausibility warnings in the status line (full texts in its tooltip).

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget.
    job : _Job
        The run (its notes and captured warnings).
    results : list of RateResult
        Its results.

    Returns
    -------
    list of str
        The plausibility warnings of the run.
    """
    from napari.utils.notifications import show_warning

    shown = set(job.notes)  # notified when the run started (widget.run)
    for res in results:  # notified by fractions_panel.report_run
        message = (res.provenance.get("negative_rate") or {}).get("message")
        if message:
            shown.add(message)
    for _category, message in job.run_warnings:
        if message not in shown:
            show_warning(f"Rate maps: {message}")
            shown.add(message)
    plausibility: list[str] = []
    for res in results:
        for message in res.provenance.get("plausibility") or []:
            if message not in plausibility:
                plausibility.append(message)
    for category, message in job.run_warnings:
        if category == "PlausibilityWarning" and message not in plausibility:
            plausibility.append(message)
    if plausibility:
        label = widget.status_label
        label.setText(f"{label.text()} Check the input ({len(plausibility)} warning"
                      f"{'s' if len(plausibility) > 1 else ''}): " + "; ".join(short(m) for m in plausibility) + ".")
        label.setToolTip("\n\n".join(plausibility))
    else:
        widget.status_label.setToolTip("")
    return plausibility
