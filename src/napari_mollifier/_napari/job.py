"""The job of a "Rate maps" run, without Qt: what it is, the ``infer_rates`` keywords, and the worker's generator.

:class:`_Job` holds everything a run needs, captured on the main thread (private array copies);
:func:`solver_kwargs` turns the widget's settings into the keyword arguments of
:func:`napari_mollifier.infer_rates`; :func:`_run_job` is the generator napari's ``thread_worker`` runs (it yields
``(fraction, info)`` and returns an :class:`_Outcome`); :func:`run_to_end` runs it in the calling thread (scripts,
tests). Module-level imports: the standard library and numpy only, so that this module is importable and tested
without a display (tests/test_widget_job.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["solver_kwargs", "run_to_end", "start_warm_up", "whole_image_roi", "detected_nucleus_note",
           "DETECTED_NUCLEUS"]

log = logging.getLogger(__name__)

#: Name of the Labels layer holding the detected nucleus (the "Detect nucleus" button and whole-image runs).
DETECTED_NUCLEUS = "nucleus (detected)"


def _background_fraction(fields: dict) -> float:
    """Share of the pixels where every field is below 5 % of its 99th percentile (no chromatin: background)."""
    low = None
    for arr in fields.values():
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            continue
        top = float(np.percentile(finite, 99))
        if not top > 0:
            continue
        here = ~(arr > 0.05 * top)
        low = here if low is None else (low & here)
    return float(low.mean()) if low is not None else 0.0



def whole_image_roi(fields: dict) -> tuple[np.ndarray | None, dict | None, str | None]:
    """Find the ROI of a "(whole image)" run: the detected nucleus where the image has background (issue 15).

    The detection is the CLI's when no ``--roi`` is given (:func:`napari_mollifier.nucleus.detect_nucleus` on the
    fields), so that the widget and the CLI solve the same pixels. An image without background (the nucleus
    would cover > 98 % of it), a constant one, fields without a chromatin total, or bright pixels in many pieces
    (a crop inside a nucleus, several nuclei: :data:`napari_mollifier.nucleus.MIN_LARGEST_SHARE`): the whole image
    is solved.

    Parameters
    ----------
    fields : dict of str to numpy.ndarray
        The 2-D input fields of one slice (``{"phi_h": ..., "phi_e": ...}``, or ``{"density": ...}``).

    Returns
    -------
    roi : numpy.ndarray of int32 or None
        Label image (1 inside the nucleus, 0 outside), or None to solve the whole image.
    info : dict or None
        How the nucleus was found (``detect_nucleus``'s info), or None.
    note : str or None
        Why the whole image is solved (no nucleus found), or None.
    """
    from napari_mollifier.errors import MollifierInputError
    from napari_mollifier.nucleus import detect_nucleus

    try:
        mask, info = detect_nucleus(dict(fields))
    except MollifierInputError as exc:
        return None, None, f"whole-image run: no nucleus detected ({exc}); the whole image is solved"
    return mask.astype(np.int32), info, None


def detected_nucleus_note(n_pixels: int) -> str:
    """Tell the user that a whole-image run solved inside the detected nucleus.

    Parameters
    ----------
    n_pixels : int
        Pixels inside the detected nucleus (all slices).

    Returns
    -------
    str
        One sentence for the status line and the notification.
    """
    return (f"solved inside the detected nucleus ({n_pixels} px); draw a Shapes ROI or pick a Labels layer to "
            "choose another region (or '(whole image, including background)' for every pixel)")


@dataclass
class _Job:
    """Everything a run needs, captured on the main thread (arrays are private copies)."""

    source_name: str
    input_names: dict
    slices: list  # [(leading index tuple, {field: 2-D array}, roi or None)]
    out_lead_shape: tuple  # leading shape of the output stack (() for 2-D images)
    geometry: dict
    kwargs: dict  # for infer_rates (no fields / roi / progress / cancel)
    unit: str
    roi_name: str | None
    notes: list = field(default_factory=list)
    run_warnings: list = field(default_factory=list)  # [(category, message)] issued during the run (run_warnings)
    threads: int | None = None  # torch intra-op threads for this run (None: torch's own)
    detections: list | None = None  # "(whole image)" run solved in the detected nucleus: its info, one per slice
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class _Outcome:
    status: str  # "ok", "cancelled", "error"
    results: list = field(default_factory=list)
    message: str = ""
    details: str = ""
    outputs: list | None = None  # the maps for the layers (outputs.prepare_outputs), made in the worker thread


_DONE = object()


def _explain(exc: BaseException) -> tuple[str, str]:
    """``(status, message)`` for an exception raised by a run: what happened and how to fix it."""
    from napari_mollifier.errors import MollifierInputError, RunCancelled

    if isinstance(exc, RunCancelled):
        return "cancelled", "Rate maps: run cancelled. No layer was added and the inputs are unchanged."
    if isinstance(exc, MollifierInputError):
        return "error", f"Rate maps: {exc}"
    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "error", (
            f"Rate maps ran out of memory ({type(exc).__name__}: {text[:200]}). Fix: draw an ROI around the "
            "nucleus, run the current slice instead of all slices, use a smaller kernel radius or fewer "
            "uncertainty samples, or choose the 'cpu' device."
        )
    return "error", f"Rate maps failed: {type(exc).__name__}: {text}"


_WARM_LOCK = threading.Lock()
_WARM_DONE = threading.Event()  # the network method's imports are done (a network run waits for them)
_WARM_SOLVE_DONE = threading.Event()  # the warm-up solve is over (finished, stopped or failed)
_RUN_STARTED = threading.Event()  # a run has started: the warm-up solve stops within one solver step
_warm_thread: threading.Thread | None = None
#: Side of the synthetic image of the warm-up solve (pixels): big enough to go through every step of a default
#: direct run (the radius ladder, the noise estimate, the propagated uncertainty), small enough to take well under
#: a second in the background.
_WARM_SOLVE_SIZE = 96


def _warm_solve() -> None:
    """Run one small direct solve with the widget's defaults (background thread).

    The user's first run then does not pay the solver's one-time costs (lazy imports, first torch/FFT calls, kernel
    tables; issue 12: first click). Stops as soon as a run starts (:data:`_RUN_STARTED`); any failure only means
    that the first run pays them.
    """
    from napari_mollifier import infer_rates
    from napari_mollifier.errors import RunCancelled
    from napari_mollifier.simulate import synthetic_nucleus

    if _RUN_STARTED.is_set():
        return
    s = synthetic_nucleus((_WARM_SOLVE_SIZE, _WARM_SOLVE_SIZE), seed=1)
    if _RUN_STARTED.is_set():
        return
    px = float(s["pixel_size"])
    with contextlib.suppress(RunCancelled):
        infer_rates({"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, roi=s["nucleus"].astype(np.int32),
                    model=s["model"], params=dict(s["params"]), pixel_size=(px, px), method="direct",
                    device="cpu", cancel=_RUN_STARTED.is_set)


def start_warm_up() -> None:
    """Warm the solver up in a background thread, once per process (issue 12: the first click is not slower).

    Two parts, in this order: the network method's lazy dependencies (the first ``torch.optim`` optimizer imports
    ``torch._dynamo``, ~1.3 s, with ~0.1 s pauses holding the interpreter lock: done when the widget opens, a
    network run does not stall the viewer with it; ``benchmarks/bench_widget_stall.py``), then one small direct
    solve (:func:`_warm_solve`), which a run stops as soon as it starts. Set ``NAPARI_MOLLIFIER_WARM_SOLVE=0`` to
    skip the solve.
    """
    global _warm_thread
    with _WARM_LOCK:
        if _warm_thread is not None:
            return

        def target():
            import os

            _background_priority()
            try:
                from napari_mollifier.methods.network import warm_up

                warm_up()
            except Exception:  # noqa: BLE001 - a failed warm-up only means the first run pays the import
                log.debug("napari-mollifier: warm-up failed", exc_info=True)
            finally:
                _WARM_DONE.set()
            try:
                if os.environ.get("NAPARI_MOLLIFIER_WARM_SOLVE", "1").strip() != "0":
                    _warm_solve()
            except Exception:  # noqa: BLE001 - a failed warm-up only means the first run pays the one-time costs
                log.debug("napari-mollifier: warm-up solve failed", exc_info=True)
            finally:
                _WARM_SOLVE_DONE.set()

        _warm_thread = threading.Thread(target=target, name="napari-mollifier-warm-up", daemon=True)
        _warm_thread.start()
        import atexit

        atexit.register(_stop_warm_up_at_exit)


def _stop_warm_up_at_exit(timeout: float = 30.0) -> None:
    """Stop the warm-up solve and wait for the thread before the interpreter shuts down.

    A daemon thread still inside torch when the process exits (napari closed within seconds of opening the dock)
    aborted the process ("terminate called without an active exception", exit status 134).
    """
    _RUN_STARTED.set()  # the solve's cancel check: it stops within one solver step
    if _warm_thread is not None and _warm_thread.is_alive():
        _warm_thread.join(timeout)


def _stop_warm_solve(cancel: threading.Event) -> None:
    """Stop the warm-up solve and wait until it has stopped (worker thread, before a run's solve).

    The warm-up shares the solver's caches and the CPU; one that has not started its solve yet does not start it.
    """
    from napari_mollifier.errors import RunCancelled

    _RUN_STARTED.set()
    if _warm_thread is None or not _WARM_DONE.is_set():
        return  # no warm-up, or still importing: it sees _RUN_STARTED before its solve
    while not _WARM_SOLVE_DONE.wait(0.02):
        if cancel.is_set():
            raise RunCancelled("cancelled while the warm-up stopped")


def _wait_for_warm_up(cancel: threading.Event) -> None:
    """Worker thread: wait for :func:`start_warm_up` (never the viewer's thread); cancel still works."""
    from napari_mollifier.errors import RunCancelled

    start_warm_up()
    while not _WARM_DONE.wait(0.05):
        if cancel.is_set():
            raise RunCancelled("cancelled while the network method was loading")


def _solve(job: _Job, report) -> list:
    """Run ``infer_rates`` on every slice of ``job`` (worker thread). ``report(fraction, info)``."""
    from napari_mollifier import infer_rates

    if job.kwargs.get("method", "direct") != "direct":
        report(0.0, {"stage": "loading the network method"})
        _wait_for_warm_up(job.cancel)
    results = []
    n = len(job.slices)
    for i, (lead, fields, roi) in enumerate(job.slices):

        def progress(step, total, info, _i=i):
            frac = (_i + (step / total if total else 0.0)) / n
            report(frac, dict(info or {}, slice=_i + 1, n_slices=n))

        res = infer_rates(fields, roi=roi, progress=progress, cancel=job.cancel.is_set, **job.kwargs)
        finite = np.isfinite(res.rate)
        if not finite.any():
            from napari_mollifier.errors import MollifierInputError

            raise MollifierInputError(
                "the rate is undefined at every pixel of the ROI"
                + (f" in slice {lead}" if lead else "")
                + ": the model divides by the euchromatin signal, which is zero or constant there. Check that "
                "the heterochromatin and euchromatin layers hold the chromatin images (volume fractions)."
            )
        results.append(res)
    return results


def _run_job(job: _Job):
    """Run ``job`` as napari's ``thread_worker`` generator: yield ``(fraction, info)``, return an :class:`_Outcome`.

    ``infer_rates`` reports progress through a callback, which cannot ``yield``; it runs in a helper thread and
    this generator relays its reports (at most every 50 ms, latest wins), so the worker yields regularly.
    """
    reports: queue.SimpleQueue = queue.SimpleQueue()
    box: dict[str, Any] = {}

    def target():
        from .run_warnings import capture
        from .solver_threads import solver_threads

        _background_priority()
        try:
            # before the warnings capture: the warm-up solve must be over when the capture starts
            _stop_warm_solve(job.cancel)
            with solver_threads(job.threads), capture(job.run_warnings):
                box["results"] = _solve(job, lambda frac, info: reports.put((frac, info)))
        except BaseException as exc:  # noqa: BLE001 - every failure is reported to the user
            box["error"] = exc
            box["details"] = traceback.format_exc()
        else:
            try:  # the layers' maps and contrast limits, here rather than in the viewer's thread (issue 15)
                from .outputs import prepare_outputs

                box["outputs"] = prepare_outputs(job, box["results"])
            except Exception:  # noqa: BLE001 - the widget prepares them itself (and reports a failure there)
                log.debug("napari-mollifier: preparing the output maps failed", exc_info=True)
        finally:
            reports.put(_DONE)

    job.thread = threading.Thread(target=target, name="napari-mollifier-solve", daemon=True)
    job.thread.start()
    try:
        done = False
        while not done:
            try:
                item = reports.get(timeout=0.05)
            except queue.Empty:
                continue
            latest = None
            while True:
                if item is _DONE:
                    done = True
                    break
                latest = item
                try:
                    item = reports.get_nowait()
                except queue.Empty:
                    break
            if latest is not None:
                yield latest
    finally:  # closed early (napari task cancel): stop the solver too. Not after _DONE: the solver thread
        # may still be returning from its target then (is_alive() is True for a moment under load), and its
        # results are complete
        if not done and job.thread.is_alive():
            job.cancel.set()
    job.thread.join()
    if "error" in box:
        status, message = _explain(box["error"])
        return _Outcome(status, message=message, details=box.get("details", ""))
    if job.cancel.is_set():
        return _Outcome("cancelled", message=_explain_cancel())
    return _Outcome("ok", results=box["results"], outputs=box.get("outputs"))


def _background_priority() -> None:
    """Lower the calling (solver) thread's CPU priority a little, so that the viewer's thread wins the CPU.

    The thread's nice value is set to the viewer's (the main thread's) plus ``NAPARI_MOLLIFIER_NICE`` (default 5),
    not raised by that step: napari runs workers on a thread pool that reuses its threads, and a relative step
    took a reused thread to nice 19 after four runs (the solver then got a small share of a core whenever the
    viewer drew, issue 15). Linux applies ``setpriority`` to one thread (and to the threads it starts: torch's
    pool, when it is created here); elsewhere this does nothing. Set ``NAPARI_MOLLIFIER_NICE=0`` to keep the
    normal priority.
    """
    import os

    try:
        step = int(os.environ.get("NAPARI_MOLLIFIER_NICE", "5"))
    except ValueError:
        step = 5
    if step <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        viewer = os.getpriority(os.PRIO_PROCESS, os.getpid())  # Linux: the process id is the main thread's id
        target = min(19, viewer + step)
        if os.getpriority(os.PRIO_PROCESS, tid) != target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except (AttributeError, OSError):  # pragma: no cover - not permitted: keep the priority
        pass


def _explain_cancel() -> str:
    return "Rate maps: run cancelled. No layer was added and the inputs are unchanged."


def _solver_default(name: str, fallback):
    """Default of ``infer_rates``'s keyword ``name`` (the widget starts with the solver's defaults)."""
    import inspect

    from napari_mollifier import infer_rates

    try:
        default = inspect.signature(infer_rates).parameters[name].default
    except (KeyError, TypeError, ValueError):
        return fallback
    return fallback if default is inspect.Parameter.empty else default


def _accepts(name: str) -> bool:
    """Tell whether ``infer_rates`` takes the keyword ``name`` (options beyond the documented contract)."""
    import inspect

    from napari_mollifier import infer_rates

    try:
        return name in inspect.signature(infer_rates).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False



def solver_kwargs(
    *,
    model: str,
    params: dict,
    pixel_size: tuple[float, float],
    radius: Any,
    method: str,
    device: str,
    seed: int,
    kernel: str,
    boundary: str,
    unit: str = "px",
    iterations: int | None = None,
    n_bootstrap: int | None = None,
    uncertainty: str | None = None,
) -> dict:
    """Keyword arguments of :func:`napari_mollifier.infer_rates` for the widget's settings.

    Parameters
    ----------
    model, params, pixel_size, radius, method, device, seed, kernel, boundary
        Passed through (``radius`` in pixels, or ``"auto"``).
    unit : str
        The layers' unit; passed as ``unit`` (the units policy of ``infer_rates``) unless it is ``"px"``.
    iterations : int, optional
        Network method only.
    n_bootstrap, uncertainty : optional
        Direct method only.

    Returns
    -------
    dict
        The keywords (no fields, ROI, progress or cancel: :func:`_solve` adds those per slice).
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "params": params,
        "pixel_size": pixel_size,
        "radius": radius,
        "method": method,
        "device": device,
        "seed": seed,
        "kernel": kernel,
        "boundary": boundary,
    }
    if unit != "px" and _accepts("unit"):
        kwargs["unit"] = unit  # the units policy of infer_rates (issue 13)
    if method != "direct":
        kwargs["iterations"] = int(iterations)
    elif _accepts("n_bootstrap"):
        kwargs["n_bootstrap"] = int(n_bootstrap)
        if _accepts("uncertainty"):
            kwargs["uncertainty"] = uncertainty
    return kwargs


def run_to_end(job: _Job) -> _Outcome:
    """Run ``job`` in the calling thread through :func:`_run_job` (progress reports dropped); its outcome.

    Parameters
    ----------
    job : _Job
        The job, e.g. ``_Job(..., slices=[((), fields, None)], kwargs=solver_kwargs(...))``.

    Returns
    -------
    _Outcome
        ``status`` ``"ok"`` with one result per slice, or ``"cancelled"`` / ``"error"`` with a message.
    """
    gen = _run_job(job)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
