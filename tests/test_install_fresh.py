"""The release artifacts as a user gets them, installed where the repository cannot help.

``python -m build`` makes the sdist and then the wheel FROM that sdist; a second wheel is built straight from
the source tree. Both wheels must hold the same files, the real manifest (not a link) and the metadata the
napari hub reads. Then the wheel and, separately, the sdist are installed into one FRESH virtual environment
(plain ``venv``, no system site-packages: neither the repository's ``src/`` nor the development environment is
visible); there ``npe2 validate`` must pass and ``tests/installed_plugin_check.py``, run by the fresh
environment's python under the same display, must find the installed plugin through npe2 and use its sample,
writers, readers and widget (one direct inference) in a real napari viewer.

Slow: creating the environment installs the pinned torch of ``.ci/setup`` (the local CPU wheel), napari and Qt
(1.5-2 min on the shared 2-core development machine), and each installed check opens napari (0.5-1.5 min);
the whole module took 4-5 min there under a load average of about 5. Marked ``slow`` and ``gui``;
``pytest -q`` (CI) runs it; deselect locally with ``-m "not slow"``.
"""

from __future__ import annotations

import email
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_MANIFEST = REPO_ROOT / "napari.yaml"
CHECK_SCRIPT = Path(__file__).resolve().with_name("installed_plugin_check.py")
PLUGIN = "napari-mollifier"
SAMPLE_LAYERS = ("euchromatin (phi_e)", "heterochromatin (phi_h)", "ground truth rate")
NO_INDEX = ("No matching distribution found", "Could not find a version that satisfies")

pytestmark = pytest.mark.slow


def _display_skip_reason() -> str | None:
    if importlib.util.find_spec("npe2") is None:
        return "npe2 is not installed"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        return "no display: run the tests under xvfb-run (see README.md)"
    return None


_DISPLAY_SKIP = _display_skip_reason()


def _torch_pin() -> str:
    """The torch requirement ``.ci/setup`` installs (one source of truth; never install torch unpinned)."""
    text = (REPO_ROOT / ".ci" / "setup").read_text(encoding="utf-8")
    pins = set(re.findall(r"pip install -q (torch==[0-9][0-9A-Za-z.+]*)", text))
    assert len(pins) == 1, f".ci/setup should pin torch exactly once, found {pins}"
    return pins.pop()


def _run(cmd: list[str], *, timeout: float, env: dict | None = None, cwd: Path | None = None,
         what: str) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    print(f"[fresh install] {what}: {time.perf_counter() - t0:.1f} s (rc {proc.returncode})")
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(s in out for s in NO_INDEX):
        pytest.skip(f"{what}: a package cannot be installed here (no package index?): {out[-400:]}")
    assert proc.returncode == 0, f"{what} failed:\n{out[-6000:]}"
    return proc


# ------------------------------------------------------------------------------------------------ artifacts
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """``sdist``, ``wheel`` (built from the sdist) and ``tree_wheel`` (built from the source tree)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install -e '.[testing]')")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out / "release", REPO_ROOT], timeout=600,
         what="python -m build (sdist, then wheel from the sdist)")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", out / "tree", REPO_ROOT], timeout=600,
         what="python -m build --wheel (from the tree)")
    sdists = list((out / "release").glob("napari_mollifier-*.tar.gz"))
    wheels = list((out / "release").glob("napari_mollifier-*-py3-none-any.whl"))
    tree_wheels = list((out / "tree").glob("napari_mollifier-*-py3-none-any.whl"))
    assert len(sdists) == len(wheels) == len(tree_wheels) == 1, (sdists, wheels, tree_wheels)
    return {"sdist": sdists[0], "wheel": wheels[0], "tree_wheel": tree_wheels[0]}


def test_sdist_carries_the_real_manifest(artifacts):
    with tarfile.open(artifacts["sdist"]) as tf:
        root = tf.getnames()[0].split("/")[0]
        members = {m.name[len(root) + 1:]: m for m in tf.getmembers() if m.name.startswith(root + "/")}
        for name in ("napari.yaml", "pyproject.toml", "README.md", "LICENSE", "CITATION.cff", "PKG-INFO"):
            assert name in members and members[name].isfile(), name
        assert tf.extractfile(members["napari.yaml"]).read() == TOP_MANIFEST.read_bytes()
        # The package's manifest is the committed relative link, and it resolves inside the sdist.
        link = members["src/napari_mollifier/napari.yaml"]
        if link.issym():
            assert link.linkname == "../../napari.yaml"
        else:
            assert tf.extractfile(link).read() == TOP_MANIFEST.read_bytes()
        for name in ("src/napari_mollifier/__init__.py", "src/napari_mollifier/_napari/widget.py",
                     "src/napari_mollifier/_napari/io_hooks.py", "src/napari_mollifier/_napari/sample_data.py"):
            assert name in members, name


def _wheel_files(path: Path) -> dict[str, tuple[bytes, int]]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (zf.read(i), i.external_attr >> 16) for i in zf.infolist()}


def _record_hashes(wheel: Path) -> dict[str, str]:
    """``{path: sha256}`` of the package files, from the wheel's RECORD."""
    files = _wheel_files(wheel)
    record = next(n for n in files if n.endswith(".dist-info/RECORD"))
    rows = (line.split(",") for line in files[record][0].decode().splitlines() if line)
    return {path: digest.split("=", 1)[1] for path, digest, _ in rows
            if path.startswith("napari_mollifier/") and digest}


def test_wheel_from_sdist_equals_wheel_from_tree(artifacts):
    """The sdist loses nothing: its wheel has the same files, byte for byte, as the tree's, with the real
    manifest as a regular file (not a link to a path that does not exist once installed)."""
    from_sdist, from_tree = _wheel_files(artifacts["wheel"]), _wheel_files(artifacts["tree_wheel"])
    assert sorted(from_sdist) == sorted(from_tree)
    differ = [n for n in from_sdist if from_sdist[n][0] != from_tree[n][0]]
    assert not differ, differ
    data, mode = from_sdist["napari_mollifier/napari.yaml"]
    assert not stat.S_ISLNK(mode)
    assert data == TOP_MANIFEST.read_bytes()
    src_modules = sorted(str(p.relative_to(REPO_ROOT / "src")) for p in (REPO_ROOT / "src").rglob("*.py")
                         if "__pycache__" not in p.parts)
    assert src_modules == sorted(n for n in from_sdist if n.endswith(".py"))


def test_wheel_metadata_for_the_napari_hub(artifacts):
    """What the hub shows comes from the package metadata (summary, README as description, classifiers,
    licence) and the npe2 manifest (display name, categories, contributions)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

    files = _wheel_files(artifacts["wheel"])
    meta_name = next(n for n in files if n.endswith(".dist-info/METADATA"))
    head, _, body = files[meta_name][0].decode("utf-8").partition("\n\n")
    meta = email.message_from_string(head)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["Name"] == PLUGIN
    assert meta["Summary"] == project["description"]
    assert "Framework :: napari" in meta.get_all("Classifier")
    assert meta["License-Expression"] == "BSD-3-Clause"
    # PEP 639: a licence expression replaces the License :: classifiers (tools reject both together).
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]
    assert meta.get_all("License-File") == ["LICENSE"]
    assert f"{meta_name.rsplit('/', 1)[0]}/licenses/LICENSE" in files
    assert meta["Description-Content-Type"] == "text/markdown"
    assert body.strip() == (REPO_ROOT / "README.md").read_text(encoding="utf-8").strip()
    assert meta["Requires-Python"] == project["requires-python"]
    ep_name = next(n for n in files if n.endswith(".dist-info/entry_points.txt"))
    assert "napari-mollifier = napari_mollifier:napari.yaml" in files[ep_name][0].decode()

    from npe2 import PluginManifest

    mf = PluginManifest.from_file(TOP_MANIFEST)
    assert mf.name == PLUGIN and mf.display_name
    assert mf.categories, "napari.yaml should list hub categories"


# ------------------------------------------------------------------------------------------------ fresh venv
def _fresh_env(venv: Path, home: Path) -> dict[str, str]:
    """The environment of a user's shell with only the fresh venv active (nothing of this test run)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH", "VIRTUAL_ENV",
            "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "NAPARI_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}
    dev_bin = (Path(sys.prefix) / "bin").resolve()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != dev_bin]
    env.update({
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "VIRTUAL_ENV": str(venv),
        "PYTHONNOUSERSITE": "1",
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "NAPARI_CONFIG": str(home / "napari-settings.yaml"),  # napari's settings of this run only
    })
    return env


@pytest.fixture(scope="module")
def fresh_venv(artifacts):
    """A new venv with the pinned torch, then the sdist-built wheel with the ``[all]`` extra (napari, Qt...).

    Made in a temporary folder that is deleted afterwards (about 2 GB)."""
    root = Path(tempfile.mkdtemp(prefix="mollifier-fresh-venv-"))
    venv = root / "venv"
    try:
        _run([sys.executable, "-m", "venv", venv], timeout=300, what="python -m venv (fresh)")
        env = _fresh_env(venv, root)
        py = venv / "bin" / "python"
        _run([py, "-m", "pip", "install", "-q", "--no-compile", _torch_pin()], timeout=1200, env=env, cwd=root,
             what=f"pip install {_torch_pin()} (fresh venv)")
        _run([py, "-m", "pip", "install", "-q", "--no-compile",
              f"{artifacts['wheel']}[all]"], timeout=1200, env=env, cwd=root,
             what="pip install <wheel>[all] (fresh venv)")
        yield {"venv": venv, "python": py, "env": env, "root": root}
    finally:
        # Deleting ~45k files is slow disk work (about 1 min here): it runs beside the next tests in a
        # non-daemon thread, which the interpreter joins before it exits, so nothing is left behind.
        threading.Thread(target=shutil.rmtree, args=(root,), kwargs={"ignore_errors": True},
                         name="remove-fresh-venv").start()


@pytest.fixture(scope="module")
def expected_sample():
    """The sample's fields computed by this checkout (the source the artifacts were built from)."""
    import numpy as np

    from napari_mollifier._napari.sample_data import SAMPLE_KWARGS
    from napari_mollifier.simulate import synthetic_nucleus

    sim = synthetic_nucleus(**SAMPLE_KWARGS)
    sums = {"euchromatin (phi_e)": sim["phi_e"], "heterochromatin (phi_h)": sim["phi_h"],
            "ground truth rate": sim["rate"]}
    return {"pixel_size": float(sim["pixel_size"]), "shape": list(np.shape(sim["phi_h"])),
            "sums": {k: float(np.nansum(v, dtype=np.float64)) for k, v in sums.items()}}


def _check_installed(fresh: dict, artifact: Path, expected: dict, work: Path) -> dict:
    """Install ``artifact`` (no dependencies: they are there) over the fresh venv's plugin and check it."""
    py, env = fresh["python"], fresh["env"]
    venv = fresh["venv"].resolve()
    _run([py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", artifact], timeout=600, env=env,
         cwd=work, what=f"pip install --force-reinstall --no-deps {artifact.name}")
    _run([py, "-m", "pip", "check"], timeout=120, env=env, cwd=work, what="pip check")

    proc = _run([venv / "bin" / "npe2", "validate", PLUGIN, "--imports"], timeout=300, env=env, cwd=work,
                what="npe2 validate napari-mollifier --imports (fresh venv)")
    assert "valid" in proc.stdout, proc.stdout + proc.stderr

    report_file = work / "report.json"
    data_dir = work / "data"
    data_dir.mkdir()
    proc = subprocess.run([str(py), "-I", str(CHECK_SCRIPT), str(report_file), str(data_dir)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=env,
                          cwd=work)
    log = proc.stdout + proc.stderr
    assert report_file.is_file(), log[-6000:]
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert proc.returncode == 0 and "error" not in report, report.get("error") or log[-6000:]
    print(f"[fresh install] {artifact.name}: steps {report['steps']}")

    # It is the installed artifact that ran, not this checkout.
    assert Path(report["prefix"]).resolve() == venv
    assert Path(report["module_file"]).is_relative_to(venv), report["module_file"]
    assert Path(report["widget"]["module_file"]).is_relative_to(venv), report["widget"]["module_file"]
    assert Path(report["torch"]["file"]).is_relative_to(venv)
    leaks = [p for p in report["sys_path"]
             if p and (Path(p).resolve().is_relative_to(REPO_ROOT)
                       or (sys.prefix != sys.base_prefix and Path(p).resolve().is_relative_to(Path(sys.prefix).resolve())))]
    assert not leaks, f"the fresh venv sees the checkout or the dev environment: {leaks}"
    assert report["direct_url"]["url"].endswith("/" + artifact.name), report["direct_url"]
    assert report["torch"]["version"].split("+")[0] == _torch_pin().split("==")[1]
    assert report["manifest_is_symlink"] is False
    assert report["manifest_text"] == TOP_MANIFEST.read_text(encoding="utf-8")
    assert "napari-mollifier = napari_mollifier:napari.yaml" in report["entry_points"]
    # What got installed is, file for file, what the release wheel holds (also when pip built the sdist).
    assert report["dist_hashes"] == _record_hashes(fresh["wheel"])

    # npe2 discovers the installed manifest and lists its contributions.
    from npe2 import PluginManifest

    top = PluginManifest.from_file(TOP_MANIFEST)
    found = report["npe2"]
    assert PLUGIN in found["plugins"]
    assert found["display_name"] == top.display_name
    assert found["categories"] == [str(c) for c in top.categories or []]
    assert found["package_version"] == report["dist_version"] == report["module_version"]
    assert found["widgets"] == [w.display_name for w in top.contributions.widgets]
    assert found["samples"] == {PLUGIN: [s.key for s in top.contributions.sample_data]}
    assert found["writers_image+"] == sorted(w.display_name for w in top.contributions.writers)

    # The sample: the fields this checkout computes, in micrometres.
    px = expected["pixel_size"]
    layers = {ly["name"]: ly for ly in report["sample_layers"]}
    assert list(layers) == list(SAMPLE_LAYERS)
    for name, ly in layers.items():
        assert ly["shape"] == expected["shape"] and ly["scale"] == pytest.approx([px, px])
        assert ly["sum"] == pytest.approx(expected["sums"][name], rel=1e-9), name

    # Writers -> readers: every layer comes back bit-identical with its pixel size.
    for suffix, rt in report["roundtrip"].items():
        assert rt["exists"] and rt["written"], suffix
        assert PLUGIN in rt["readers"], (suffix, rt["readers"])
        assert all(rt["data_equal"].values()) and set(rt["data_equal"]) == set(SAMPLE_LAYERS), (suffix, rt)
        assert rt["scale_px"] == [pytest.approx([px, px])] * len(SAMPLE_LAYERS), suffix
    assert set(report["roundtrip"]) == {".ome.tif", ".ome.zarr"}
    smlm = report["smlm"]
    assert PLUGIN in smlm["readers"] and len(smlm["layers"]) == 1
    assert smlm["layers"][0]["sum"] == pytest.approx(smlm["n_locs"])  # histogram: one count per localisation

    # The widget opens in the viewer, picks up the sample and infers the known rate.
    assert report["widget"]["class"] == "napari_mollifier._napari.widget.MollifierWidget"
    assert report["widget"]["dock_visible"] is True
    assert report["widget"]["inputs"] == {"phi_h": "heterochromatin (phi_h)", "phi_e": "euchromatin (phi_e)"}
    run = report["run"]
    assert run["status"] == ["ok"], run
    assert run["finite_fraction_in_nucleus"] >= 0.95, run
    assert run["pearson_r_in_nucleus"] >= 0.9, run
    assert run["provenance_software"]["napari_mollifier"] == report["dist_version"]
    print(f"[fresh install] {artifact.name}: Pearson r {run['pearson_r_in_nucleus']:.4f} in the nucleus "
          f"({run['status_text']})")
    return report


@pytest.mark.gui
@pytest.mark.skipif(_DISPLAY_SKIP is not None, reason=_DISPLAY_SKIP or "")
@pytest.mark.parametrize("kind", ["wheel"])
def test_installed_plugin_in_fresh_venv(kind, artifacts, fresh_venv, expected_sample, tmp_path):
    """Install the wheel into the fresh venv; the installed plugin works. (The sdist is checked by building the
    wheel from it: ``test_wheel_from_sdist_equals_wheel_from_tree``; installing it too cost ~45 s of CI.)"""
    fresh = {**fresh_venv, "wheel": artifacts["wheel"]}
    _check_installed(fresh, artifacts[kind], expected_sample, tmp_path)
