"""Warnings raised deep inside the package name the user's line (``w.filename`` is the caller's file), not a
line of the package, however many calls lie between ``infer_rates`` and the check that warns.
"""

from __future__ import annotations

import inspect
import warnings

import pytest

from napari_mollifier import MollifierWarning, infer_rates, validation
from napari_mollifier.errors import find_stack_level
from napari_mollifier.simulate import synthetic_nucleus


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(96, 96), pixel_size=0.02, seed=0, noise=0.01)


def _ours(record, text):
    hits = [w for w in record if issubclass(w.category, MollifierWarning) and text in str(w.message)]
    assert hits, [str(w.message) for w in record]
    return hits


def test_coefficient_warnings_point_at_the_infer_rates_line(sample):
    fields = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    kw = dict(
        pixel_size=0.02, unit="um", roi=sample["nucleus"], radius=6, n_bootstrap=0, uncertainty="none", device="cpu"
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        infer_rates(fields, **kw)  # l2 estimated, with a warning
        infer_rates(fields, params="default", **kw)  # box-unit default on a um image
    for hit in _ours(w, "l2 was not given") + _ours(w, "box-unit default"):
        assert hit.filename == __file__, (hit.filename, str(hit.message)[:60])
    assert _ours(w, "l2 was not given")[0].lineno == line


def test_validation_warnings_point_at_the_callers_line(sample):
    phi_e = sample["phi_e"].copy()
    phi_e[40, 40] = 1e6  # a hot pixel
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        infer_rates(
            {"phi_h": sample["phi_h"], "phi_e": phi_e},
            params={"l2": 0.0234},
            pixel_size=0.02,
            unit="um",
            radius=6,
            n_bootstrap=0,
            uncertainty="none",
            device="cpu",
        )
        validation.warn_run_time((4096, 4096), radius="auto", n_bootstrap=1000, threshold=1.0)
    for hit in _ours(w, "isolated extreme pixel") + _ours(w, "estimated to take"):
        assert hit.filename == __file__, (hit.filename, str(hit.message)[:60])


def test_find_stack_level_counts_the_package_frames():
    assert find_stack_level() == 1  # called from here: this frame is already outside the package
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        validation.warn_run_time((4096, 4096), radius="auto", n_bootstrap=1000, threshold=1.0)
    assert w and w[0].filename == __file__ and w[0].lineno == line


def test_a_file_job_passes_other_warnings_on_once(monkeypatch, tmp_path):
    """A warning that is not a MollifierWarning, raised during a file job, is passed on once after the job (it
    used to be re-recorded while the job's warnings were being read: an endless loop).
    """
    from napari_mollifier.app import jobs
    from napari_mollifier.errors import MollifierInputError

    def fake_infer_files(progress=None, **_):
        warnings.warn("not ours", RuntimeWarning, stacklevel=1)
        warnings.warn("ours", MollifierWarning, stacklevel=1)
        progress(1, 2)  # the job reads the warnings so far
        raise MollifierInputError("stop here")

    monkeypatch.setattr(jobs, "infer_files", fake_infer_files)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        row = jobs.run_job({"image": "x.tif"}, tmp_path / "out")
    assert row["status"] == "error" and row["error"] == "stop here" and row["warnings"] == ["ours"]
    assert [str(x.message) for x in w] == ["not ours"]
