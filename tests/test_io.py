"""Readers, writers and result files: round trips, physical scale, provenance, refusal of foreign files,
clear errors on bad files, atomic writes."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

import napari_mollifier as nm  # noqa: E402
from napari_mollifier import io  # noqa: E402
from napari_mollifier._napari import io_hooks  # noqa: E402
from napari_mollifier.errors import MollifierInputError  # noqa: E402
from napari_mollifier.io._common import from_json, to_json  # noqa: E402
from napari_mollifier.simulate import synthetic_nucleus  # noqa: E402


def _norm(obj):
    """JSON-normalised (tuples -> lists, numpy scalars -> Python) for comparing provenance."""
    return from_json(to_json(obj))


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(48, 48), pixel_size=0.02, noise=0.01)


@pytest.fixture(scope="module")
def result(sample):
    return nm.infer_rates({"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, params=sample["params"],
                          pixel_size=0.02, roi=sample["nucleus"], radius=4, n_bootstrap=3, device="cpu")


def _png(path: Path) -> Path:
    """A real 2 x 2 grey PNG, written without any imaging library."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    raw = b"".join(b"\x00" + bytes([10, 200]) for _ in range(2))
    body = chunk(b"IHDR", (2).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- TIFF
def test_ome_tiff_physical_size_axes_and_channels(tmp_path):
    data = np.random.default_rng(0).random((2, 3, 16, 20)).astype(np.float32)  # c, z, y, x
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 25.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.02,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 0.1, "PhysicalSizeZUnit": "µm",
        "Channel": {"Name": ["H3K9me3", "H3K27ac"]},
    })
    img = io.read_tiff(path)
    assert img.axes == "czyx"
    assert img.scale == pytest.approx((1.0, 0.1, 0.02, 0.025))
    assert img.units == (None, "um", "um", "um")
    assert img.channel_names == ["H3K9me3", "H3K27ac"]
    assert img.has_physical_size and img.pixel_size == pytest.approx((0.1, 0.02, 0.025))
    np.testing.assert_array_equal(img.data, data)

    reader = io_hooks.get_tiff_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert [kind for *_, kind in layers] == ["image", "image"]
    (d0, k0, _), (d1, k1, _) = layers
    np.testing.assert_array_equal(d1, data[1])
    assert k0["scale"] == pytest.approx((0.1, 0.02, 0.025)) and k0["axis_labels"] == ("z", "y", "x")
    assert k0["name"] == "cell [H3K9me3]" and k1["name"] == "cell [H3K27ac]"
    if "units" in k0:
        assert k0["units"] == ("um", "um", "um")


def test_imagej_and_plain_tiff_scale(tmp_path):
    data = np.arange(2 * 8 * 10, dtype=np.uint16).reshape(2, 8, 10)
    ij = tmp_path / "stack.tif"
    tifffile.imwrite(ij, data, imagej=True, resolution=(1 / 0.05, 1 / 0.05),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.3})
    img = io.read_tiff(ij)
    assert img.axes == "zyx" and img.scale == pytest.approx((0.3, 0.05, 0.05)) and img.has_physical_size

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data[0], resolution=(72, 72), resolutionunit="INCH")  # a screen dpi, not a pixel
    img = io.read_tiff(plain)
    assert img.axes == "yx" and not img.has_physical_size and img.scale == (1.0, 1.0)
    assert img.with_pixel_size(0.02).pixel_size == (0.02, 0.02)

    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, data[0], resolution=(1e4 / 0.04, 1e4 / 0.04), resolutionunit="CENTIMETER")
    assert io.read_tiff(cm).pixel_size == pytest.approx((0.04, 0.04))


def test_tiff_lazy_read_matches(tmp_path):
    data = np.random.default_rng(1).random((64, 96))
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(32, 32))
    img = io.read_tiff(path, lazy=True)
    assert isinstance(img.data, da.Array) and img.data.numblocks == (2, 3)
    np.testing.assert_array_equal(img.data.compute(), data)


# --------------------------------------------------------------------------- Zarr
def _ome_zarr_v04(path: Path, data: np.ndarray) -> None:
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))
    arr[...] = data
    half = root.create_array("1", shape=(data.shape[0], data.shape[1] // 2, data.shape[2] // 2), dtype=data.dtype)
    half[...] = data[:, ::2, ::2]
    root.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "nanometer"},
                     {"name": "x", "type": "space", "unit": "nanometer"}],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 20.0, 25.0]},
                                                            {"type": "translation", "translation": [0, 100, 0]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 40.0, 50.0]}]},
            ],
        }],
        "omero": {"channels": [{"label": "phi_h"}, {"label": "phi_e"}]},
    })


def test_ome_zarr_v04_level0_scale_lazy(tmp_path):
    data = np.random.default_rng(2).random((2, 40, 48))
    path = tmp_path / "cell.ome.zarr"
    _ome_zarr_v04(path, data)
    img = io.read_zarr(path)
    assert isinstance(img.data, da.Array), "zarr must be read lazily"
    assert img.data.chunksize == (1, 16, 16)
    assert img.axes == "cyx" and img.channel_names == ["phi_h", "phi_e"]
    assert img.scale == pytest.approx((1.0, 0.02, 0.025)) and img.units == (None, "um", "um")
    assert img.translate == pytest.approx((0.0, 0.1, 0.0))
    np.testing.assert_array_equal(img.data.compute(), data)

    reader = io_hooks.get_zarr_reader(str(path))
    layers = reader(str(path))
    assert len(layers) == 2
    assert layers[1][1]["name"] == "cell [phi_e]" and layers[1][1]["scale"] == pytest.approx((0.02, 0.025))
    np.testing.assert_array_equal(np.asarray(layers[0][0]), data[0])


def test_ome_zarr_v05_zarr3(tmp_path):
    data = np.random.default_rng(3).random((24, 32)).astype(np.float32)
    path = tmp_path / "v05.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array("s0", shape=data.shape, dtype=data.dtype, chunks=(8, 8))
    arr[...] = data
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.03, 0.03]}]}],
    }]}})
    img = io.read_zarr(path)
    assert img.axes == "yx" and img.pixel_size == pytest.approx((0.03, 0.03)) and img.has_physical_size
    np.testing.assert_array_equal(img.data.compute(), data)


# --------------------------------------------------------------------------- SMLM
THUNDERSTORM_HEADER = ('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
                       '"bkgstd [photon]","uncertainty [nm]"')


def _thunderstorm(path: Path, n=500, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1000, n)
    y = rng.uniform(0, 600, n)
    rows = [f"{i + 1},{i % 50 + 1},{x[i]:.3f},{y[i]:.3f},110.5,1500.2,12.0,4.1,9.5" for i in range(n)]
    path.write_text(THUNDERSTORM_HEADER + "\n" + "\n".join(rows) + "\n")
    return np.round(x, 3), np.round(y, 3)


def test_thunderstorm_csv_density(tmp_path):
    path = tmp_path / "locs.csv"
    x, y = _thunderstorm(path)
    img = io.read_smlm(path, pixel_size=20.0)
    assert img.axes == "yx" and img.scale == pytest.approx((0.02, 0.02)) and img.units == ("um", "um")
    assert img.data.sum() == pytest.approx(len(x))
    assert img.shape == (int(y.max() // 20) + 1, int(x.max() // 20) + 1)
    expected, _, _ = np.histogram2d(y, x, bins=img.shape, range=((0, img.shape[0] * 20), (0, img.shape[1] * 20)))
    np.testing.assert_array_equal(img.data, expected)
    gauss = io.read_smlm(path, pixel_size=20.0, method="gaussian")
    assert gauss.metadata["render"]["sigma_nm"] == pytest.approx(9.5)  # median uncertainty column
    assert gauss.data.sum() == pytest.approx(len(x), rel=0.05)
    assert gauss.data.max() < img.data.max()

    reader = io_hooks.get_smlm_reader(str(path))
    (data, kwargs, kind), = reader(str(path))
    assert kind == "image" and kwargs["scale"] == pytest.approx((0.02, 0.02))


def test_plain_xy_csv_units(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("x,y\n100,50\n130,52\n1990,990\n")
    img = io.read_smlm(path, pixel_size=10.0)
    assert img.shape == (100, 200) and img.data.sum() == 3
    um = io.read_smlm(path, pixel_size=10_000.0, unit="um")  # the same numbers read as um
    assert um.shape == (100, 200) and um.scale == pytest.approx((10.0, 10.0))
    with pytest.raises(MollifierInputError, match="too large"):
        io.read_smlm(path, pixel_size=1.0, unit="um")


# --------------------------------------------------------------------------- refusal and errors
@pytest.mark.parametrize("getter", [io_hooks.get_tiff_reader, io_hooks.get_zarr_reader, io_hooks.get_smlm_reader])
def test_readers_refuse_foreign_files(tmp_path, getter):
    png = _png(tmp_path / "picture.png")
    text = tmp_path / "notes.txt"
    text.write_text("just some words\nand more words\n")
    fake_tif = tmp_path / "fake.tif"
    fake_tif.write_text("this is not a TIFF\n")
    other_csv = tmp_path / "table.csv"
    other_csv.write_text("name,value\napple,3\n")
    folder = tmp_path / "plain_folder"
    folder.mkdir()
    binary = tmp_path / "blob.csv"
    binary.write_bytes(os.urandom(256).replace(b"\n", b"") + b"\x00")
    for path in (png, text, fake_tif, other_csv, folder, binary, tmp_path / "missing.tif", [str(png), str(text)]):
        assert getter(str(path) if not isinstance(path, list) else path) is None, path


def test_truncated_tiff_is_claimed_and_explained(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((2, 64, 64)).astype(np.float32))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reader = io_hooks.get_tiff_reader(str(path))
    assert reader is not None
    with pytest.raises(MollifierInputError, match="truncated"):
        reader(str(path))
    with pytest.raises(MollifierInputError, match="not a TIFF"):
        io.read_tiff(_png(tmp_path / "p.tif"))


def test_zarr_folder_without_array(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert io_hooks.get_zarr_reader(str(empty)) is not None
    with pytest.raises(MollifierInputError, match="no array|no zarr metadata"):
        io_hooks.get_zarr_reader(str(empty))(str(empty))
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w")
    with pytest.raises(MollifierInputError, match="holds no array"):
        io.read_zarr(group)
    broken = tmp_path / "broken.ome.zarr"
    _ome_zarr_v04(broken, np.zeros((1, 16, 16)))
    import shutil

    shutil.rmtree(broken / "0")
    (broken / "0").mkdir()
    with pytest.raises(MollifierInputError):
        io.read_zarr(broken)


def test_csv_missing_columns_and_text(tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text('"id","frame","x [nm]","intensity [photon]"\n1,1,10.0,100\n')
    reader = io_hooks.get_smlm_reader(str(missing))
    assert reader is not None, "a ThunderSTORM-like table is claimed"
    with pytest.raises(MollifierInputError, match="missing column.*y"):
        reader(str(missing))
    text = tmp_path / "text.csv"
    text.write_text("x,y\n1.0,2.0\n3.0,oops\n")
    with pytest.raises(MollifierInputError, match="holds text"):
        io.read_smlm(text)
    empty = tmp_path / "empty.csv"
    empty.write_text("x [nm],y [nm]\n")
    with pytest.raises(MollifierInputError, match="no localisations"):
        io.read_smlm(empty)


# --------------------------------------------------------------------------- writers
def test_write_ome_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    maps = {"rate": rng.random((20, 30)), "uncertainty": rng.random((20, 30))}
    maps["rate"][0, 0] = np.nan
    prov = {"model": "chromatin-balance", "params": {"l2": 0.0234}, "note": 'quotes " and <tags> & more'}
    path = io.write_ome_tiff(tmp_path / "maps.ome.tif", maps, (0.02, 0.025), description={"provenance": prov})
    img = io.read_tiff(path)
    assert img.axes == "cyx" and img.channel_names == ["rate", "uncertainty"]
    assert img.pixel_size == pytest.approx((0.02, 0.025))
    assert img.metadata["provenance"] == prov
    assert _equal(img.data[0], maps["rate"]) and _equal(img.data[1], maps["uncertainty"])


def test_write_ome_zarr_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    maps = {"rate": rng.random((3, 12, 14)), "residual": rng.random((3, 12, 14))}  # 3-D
    prov = {"model": "heat", "seed": 3}
    path = io.write_ome_zarr(tmp_path / "maps.ome.zarr", maps, (0.1, 0.02, 0.02), attrs={"provenance": prov})
    img = io.read_zarr(path)
    assert img.axes == "czyx" and img.channel_names == ["rate", "residual"]
    assert img.pixel_size == pytest.approx((0.1, 0.02, 0.02))
    assert img.metadata["provenance"] == prov
    assert _equal(img.data[1].compute(), maps["residual"])


def test_zarr_reader_puts_label_images_on_the_image_grid_in_its_unit(tmp_path):
    """Label images of an OME-Zarr open with the image's scale and unit, like its image layers (issue 15: every
    layer the plugin creates carries physical scale and units)."""
    from napari_mollifier._napari.layer_data import napari_supports_units

    rng = np.random.default_rng(7)
    maps = {"rate": rng.random((12, 14))}
    labels = {"nucleus": (rng.random((12, 14)) > 0.5).astype(np.int32)}
    path = io.write_ome_zarr(tmp_path / "maps.ome.zarr", maps, (0.02, 0.025), labels=labels)
    layers = io_hooks.read_zarr_layers(str(path))
    (image,) = [kw for _, kw, kind in layers if kind == "image"]
    ((data, kw, _),) = [t for t in layers if t[2] == "labels"]
    assert _equal(np.asarray(data), labels["nucleus"])
    assert kw["scale"] == pytest.approx((0.02, 0.025))
    assert kw["scale"] == pytest.approx(image["scale"][-2:])
    assert kw["translate"] == pytest.approx(image["translate"][-2:])
    if napari_supports_units():
        assert tuple(kw["units"]) == tuple(image["units"][-2:]) and "pixel" not in kw["units"]


def test_npe2_writers_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    prov = {"model": "chromatin-balance", "radius": 4.0}
    layer_data = [
        (rng.random((16, 18)), {"name": "rate", "scale": (0.02, 0.02), "units": ("um", "um"),
                                "metadata": {"provenance": prov}}, "image"),
        (rng.random((16, 18)), {"name": "uncertainty", "scale": (0.02, 0.02), "units": ("um", "um"),
                                "metadata": {}}, "image"),
    ]
    out = io_hooks.write_ome_tiff_layers(str(tmp_path / "layers.ome.tif"), layer_data)
    assert out == [str(tmp_path / "layers.ome.tif")]
    img = io.read_tiff(out[0])
    assert img.channel_names == ["rate", "uncertainty"] and img.pixel_size == pytest.approx((0.02, 0.02))
    assert img.metadata["provenance"] == prov
    assert _equal(img.data[0], layer_data[0][0])
    # nanometre layers are written in um
    nm_layers = [(layer_data[0][0], {"name": "rate", "scale": (20.0, 20.0), "units": ("nm", "nm"), "metadata": {}},
                  "image")]
    out = io_hooks.write_ome_zarr_layers(str(tmp_path / "layers.ome.zarr"), nm_layers)
    assert io.read_zarr(out[0]).pixel_size == pytest.approx((0.02, 0.02))
    with pytest.raises(MollifierInputError, match="different shapes"):
        io_hooks.write_ome_tiff_layers(str(tmp_path / "bad.ome.tif"),
                                       [layer_data[0], (np.zeros((3, 3)), {"name": "x"}, "image")])


@pytest.mark.parametrize("suffix", [".npz", ".ome.tif", ".ome.zarr"])
def test_result_save_load_round_trip(tmp_path, result, suffix):
    path = tmp_path / f"result{suffix}"
    assert result.save(path) == path
    back = nm.load_result(path)
    for name in ("rate", "uncertainty", "residual", "labels"):
        assert _equal(getattr(back, name), getattr(result, name)), name
    assert list(back.fields) == list(result.fields)
    for k in result.fields:
        assert _equal(back.fields[k], result.fields[k]), k
    assert back.radius == result.radius
    assert _norm(back.roi_stats) == _norm(result.roi_stats)
    assert _norm(back.provenance) == _norm(result.provenance)
    assert nm.RateResult.load(path).radius == result.radius
    # the generic readers see the maps with their physical scale
    img = io.read_image(path) if suffix != ".npz" else None
    if img is not None:
        assert img.channel_names == ["rate", "uncertainty", "residual"]
        assert img.pixel_size == pytest.approx((0.02, 0.02))
        assert _norm(img.metadata["provenance"]) == _norm(result.provenance)


def test_load_result_rejects_other_files(tmp_path):
    path = tmp_path / "other.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 4)))
    with pytest.raises(MollifierInputError, match="not a napari-mollifier result"):
        nm.load_result(path)
    with pytest.raises(MollifierInputError, match="unknown result format"):
        nm.load_result(tmp_path / "x.png")


# --------------------------------------------------------------------------- atomic writes
def test_failed_tiff_write_leaves_no_file(tmp_path, monkeypatch, result):
    calls = {"n": 0}
    original = tifffile.TiffWriter.write

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the maps are written, the fields fail: midway
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "r.ome.tif")
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, result):
    target = tmp_path / "r.npz"
    target.write_bytes(b"previous content")
    monkeypatch.setattr(np, "savez_compressed", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        result.save(target)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]


def test_failed_zarr_write_leaves_no_folder(tmp_path, monkeypatch, result):
    from zarr.core.group import Group

    original = Group.create_array

    def failing(self, name, *args, **kwargs):
        if str(name).startswith("fields/"):
            raise OSError("quota exceeded (simulated)")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Group, "create_array", failing)
    with pytest.raises(OSError, match="quota"):
        result.save(tmp_path / "r.ome.zarr")
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict(result):
    text = to_json(result.provenance)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
