"""One result is one unit (issue 17): signals at every write stage, two writers at once, leftovers of killed runs.

The signal tests run the real ``mollifier`` CLI in a subprocess on a tiny image. A test-only environment variable
(``MOLLIFIER_TEST_PAUSE_AT=stage``, read by :func:`napari_mollifier.io.publish.pause`) makes the writer stop at
one write stage and say so on stderr; the test then sends SIGINT, SIGTERM or SIGKILL and checks that the output
folder holds either the complete old result (radius 4) or the complete new one (radius 6) -- maps, ROI table and
provenance from one run -- and that no staging leftover remains after the next writer into the folder.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from napari_mollifier import cli  # noqa: E402
from napari_mollifier.errors import MollifierOutputError  # noqa: E402
from napari_mollifier.io import load_result, write_ome_tiff  # noqa: E402
from napari_mollifier.io.publish import folder_lock, is_leftover, publish, recover_folder  # noqa: E402
from napari_mollifier.simulate import synthetic_nucleus  # noqa: E402

FAST = ["--n-bootstrap", "0", "--quiet", "--param", "l2=0.0234", "--roi", "whole"]  # l2 given: not estimated
STAGES_BEFORE = ["staging", "staged-maps", "staged"]  # the old result must survive
STAGES_AFTER = ["publishing", "moving", "published"]  # the moves are one step: the new result is complete


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    s = synthetic_nucleus(shape=(40, 40), pixel_size=0.02, seed=0, noise=0.01)
    path = folder / "cell.ome.tif"
    write_ome_tiff(path, {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, 0.02)
    return path


def _cmd(image, out, radius):
    return [sys.executable, "-m", "napari_mollifier.cli", "infer", str(image), "--radius", str(radius),
            "--out", str(out), *FAST]


def _run(image, out, radius, **env):
    proc = subprocess.run(_cmd(image, out, radius), capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    return proc


def _state(out: Path, name: str = "cell"):
    """``(radius, created)`` of the result in ``out`` after checking that its three files are from one run."""
    record = json.loads((out / f"{name}.provenance.json").read_text())
    prov = record["provenance"]
    saved = load_result(out / f"{name}.ome.tif")
    with open(out / f"{name}_rois.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert saved.provenance["created"] == prov["created"], "maps and provenance from different runs"
    assert saved.provenance["radius"] == prov["radius"]
    assert {float(r["radius"]) for r in rows} == {float(prov["radius"])}, "ROI table from another run"
    assert np.isfinite(saved.rate).any()
    return float(prov["radius"]), prov["created"]


def _leftovers(out: Path) -> list:
    return [p.name for p in out.iterdir() if is_leftover(p.name) or ".tmp" in p.name]


def _signal_at(image, out, stage, sig):
    env = {**os.environ, "MOLLIFIER_TEST_PAUSE_AT": stage, "MOLLIFIER_TEST_PAUSE_S": "60"}
    proc = subprocess.Popen(_cmd(image, out, 6), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    lines = []
    try:
        for line in proc.stderr:  # wait until the writer is at the stage
            lines.append(line)
            if f"paused at {stage}" in line:
                break
        else:
            raise AssertionError(f"the writer never reached {stage}: {''.join(lines)}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + err


@pytest.fixture(scope="module")
def old_result(image, tmp_path_factory):
    """A complete result at radius 4 (copied into each test's folder)."""
    out = tmp_path_factory.mktemp("old") / "out"
    proc = _run(image, out, 4)
    assert proc.returncode == 0, proc.stderr
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("stage", STAGES_BEFORE + STAGES_AFTER)
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="INT", marks=pytest.mark.slow),  # TERM: the fast one
                                 pytest.param(signal.SIGTERM, id="TERM"),
                                 pytest.param(signal.SIGKILL, id="KILL", marks=pytest.mark.slow)])
def test_signal_at_each_write_stage_leaves_old_or_new_result(image, old_result, tmp_path, stage, sig):
    out = _copy(old_result, tmp_path / "out")
    old_radius, old_created = _state(out)
    rc, err = _signal_at(image, out, stage, sig)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        notes = recover_folder(out)  # what the next writer (or `mollifier rerun`) does first, under the lock
        if stage != "published":
            assert notes, "the killed run's staging folder was neither finished nor reported"
    else:
        assert rc == (130 if sig == signal.SIGINT else 143), err
        assert "Traceback" not in err
        assert ("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted") in err
        assert not _leftovers(out), "a clean stop removes its staging files itself"
    radius, created = _state(out)
    if stage in STAGES_BEFORE:
        assert (radius, created) == (old_radius, old_created), "the old result was damaged"
    else:
        assert radius == 6.0 and created != old_created, "the publish step was split"
    assert not _leftovers(out)


@pytest.mark.slow
def test_next_run_finishes_a_publish_killed_between_moves(image, old_result, tmp_path):
    """SIGKILL between the moves of the three files: the next CLI run into the folder completes the killed
    publish (reported as a warning) before its own, and ends with one complete result and no leftovers."""
    out = _copy(old_result, tmp_path / "out")
    rc, _ = _signal_at(image, out, "moving", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert [p for p in out.iterdir() if ".staging-" in p.name], "expected the killed run's staging folder"
    proc = _run(image, out, 4)
    assert proc.returncode == 0, proc.stderr
    assert "mollifier: warning: cell: finished publishing" in proc.stderr
    assert _state(out)[0] == 4.0
    assert not _leftovers(out)


def test_next_run_removes_leftovers_of_a_killed_run_and_says_so(image, old_result, tmp_path, capsys):
    out = _copy(old_result, tmp_path / "out")
    stale = out / ".cell.staging-0123456789"
    stale.mkdir()
    (stale / "cell.ome.tif").write_bytes(b"half a file")
    (out / ".cell_rois.csv.tmp-abcdef0123").write_bytes(b"partial")
    assert cli.main(["infer", str(image), "--radius", "4", "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "removed .cell.staging-0123456789" in err and "leftover of an interrupted run" in err
    assert not _leftovers(out)
    _state(out)


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="INT", marks=pytest.mark.slow),
                                 pytest.param(signal.SIGTERM, id="TERM")])
def test_stop_before_writing_leaves_no_output_folder(image, tmp_path, sig):
    out = tmp_path / "new" / "out"
    rc, err = _signal_at(image, out, "staging", sig)
    assert rc == (130 if sig == signal.SIGINT else 143), err
    assert not out.exists() and not out.parent.exists(), "the run left the folder it created"
    rc, err = _signal_at(image, out, "reading", sig)
    assert rc == (130 if sig == signal.SIGINT else 143), err
    assert not out.parent.exists()


@pytest.mark.slow
def test_two_cli_runs_at_once_into_one_folder(image, tmp_path):
    """Both runs pause after staging, so their publishes overlap in time: the lock serialises them, both exit 0,
    and the folder ends with one complete result (the later one) and no leftovers."""
    out = tmp_path / "out"
    env = {**os.environ, "MOLLIFIER_TEST_PAUSE_AT": "staged", "MOLLIFIER_TEST_PAUSE_S": "2"}
    procs = [subprocess.Popen(_cmd(image, out, r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for r in (4, 6)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    radius, _ = _state(out)
    assert radius in (4.0, 6.0)
    assert not _leftovers(out)


def test_lock_held_by_another_process_fails_with_a_clear_message(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from napari_mollifier.io.publish import folder_lock\n"
         f"with folder_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(20)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(MollifierOutputError, match="another mollifier process is writing to .*out") as info:  # noqa: SIM117 - clearer nested
            with folder_lock(folder, timeout=0.5):
                pass
        assert time.perf_counter() - started < 5
        assert "write elsewhere (--out)" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(folder, timeout=5):  # released with the process
        pass


def test_lock_serialises_threads_of_one_process(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    inside, overlap = [], []

    def writer(k):
        def write(staging):
            inside.append(k)
            if len(inside) > 1:
                overlap.append(k)
            time.sleep(0.2)
            (staging / f"f{k}.txt").write_text(str(k))
            inside.remove(k)
            return [f"f{k}.txt"]

        publish(folder, f"f{k}", write)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap
    assert sorted(p.name for p in folder.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_failed_write_keeps_the_old_files_and_removes_staging(tmp_path):
    folder = tmp_path / "out"
    publish(folder, "r", lambda s: [(s / "a.txt").write_text("old") and "a.txt", (s / "b.txt").write_text("old")
                                    and "b.txt"])

    def broken(staging):
        (staging / "a.txt").write_text("new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        publish(folder, "r", broken)
    assert (folder / "a.txt").read_text() == "old" and (folder / "b.txt").read_text() == "old"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
