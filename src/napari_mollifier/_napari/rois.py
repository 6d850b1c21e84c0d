"""Rasterise napari ROI layers (Shapes, Labels) onto an image layer's pixel grid.

Everything goes through world coordinates: a vertex or a pixel of the ROI layer is mapped with its own
``data_to_world`` and then with the image's ``world_to_data``, so ROI layers with another scale, translate,
rotation or dimensionality than the image land where they are drawn on the canvas. Only the last two (y, x)
axes are rasterised; leading axes (slices) are handled by :func:`labels_for_slice`.

Imports numpy, scipy and scikit-image only; the layers are duck-typed (anything with ``data``, ``ndim``,
``data_to_world`` and ``world_to_data``), so the helpers are testable without Qt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_mollifier.errors import MollifierInputError

__all__ = [
    "shapes_to_roi_labels",
    "labels_to_roi_labels",
    "roi_labels",
    "image_to_layer_affine",
]

#: Points used to turn an ellipse shape into a polygon.
ELLIPSE_POINTS = 128


def _map_points(transform, points) -> np.ndarray:
    """Apply a layer's (affine) coordinate transform to ``(N, D)`` points.

    Few points: one call each. Many (an ellipse outline): the affine map is read off ``D + 1`` probes spanning the
    points and applied to all of them at once (napari's per-point calls cost ~0.1 ms each; issue 15).
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or len(pts) <= pts.shape[1] + 1:
        return np.array([np.asarray(transform(p), dtype=float) for p in pts], dtype=float)
    base = pts.min(axis=0)
    span = np.maximum(np.ptp(pts, axis=0), 1.0)
    origin = np.asarray(transform(base), dtype=float)
    columns = [(np.asarray(transform(base + span[i] * np.eye(pts.shape[1])[i]), dtype=float) - origin) / span[i]
               for i in range(pts.shape[1])]
    return (pts - base) @ np.stack(columns, axis=0) + origin


def _to_world(layer, points: np.ndarray) -> np.ndarray:
    """(N, layer.ndim) data coordinates -> (N, layer.ndim) world coordinates."""
    return _map_points(layer.data_to_world, points)


def _to_data(layer, points: np.ndarray) -> np.ndarray:
    """(N, D) world coordinates -> (N, layer.ndim) data coordinates of ``layer`` (trailing axes aligned)."""
    return _map_points(layer.world_to_data, points)


def _image_point(image_layer, yx, leading) -> np.ndarray:
    """Return a full data-coordinate point of the image: ``leading`` slice index then (y, x)."""
    lead = list(leading) if leading is not None else []
    lead = ([0.0] * (image_layer.ndim - 2 - len(lead)) + lead)[: image_layer.ndim - 2]
    return np.array(lead + list(yx), dtype=float)


def image_to_layer_affine(
    image_layer: Any, other_layer: Any, leading: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Affine map from the image's (y, x) data coordinates to ``other_layer``'s data coordinates.

    Built by probing the layers' public world transforms (they are affine).

    Parameters
    ----------
    image_layer : napari.layers.Image
        The image (duck-typed: ``ndim``, ``data_to_world``).
    other_layer : napari.layers.Layer
        The ROI layer (duck-typed: ``world_to_data``).
    leading : sequence of int, optional
        The image slice (leading indices); None: the first.

    Returns
    -------
    matrix : numpy.ndarray
        ``(other_layer.ndim, 2)``.
    offset : numpy.ndarray
        ``(other_layer.ndim,)``; ``other = matrix @ (y, x) + offset``, whose leading entries say which slice of
        ``other_layer`` an image pixel of slice ``leading`` falls in.
    """
    probes = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    world = _to_world(image_layer, [_image_point(image_layer, p, leading) for p in probes])
    mapped = _to_data(other_layer, world)
    offset = mapped[0]
    matrix = np.stack([mapped[1] - offset, mapped[2] - offset], axis=1)  # (other.ndim, 2)
    return matrix, offset


def _shape_polygon(shape_type: str, vertices: np.ndarray) -> np.ndarray | None:
    """Return the closed outline of one shape in its own data coordinates, or None for shapes without area."""
    if shape_type in ("line", "path"):
        return None
    if shape_type == "ellipse":
        # napari stores an ellipse as the 4 corners of its (possibly rotated) bounding box.
        c = vertices.mean(axis=0)
        u = (vertices[1] - vertices[0]) / 2.0
        v = (vertices[3] - vertices[0]) / 2.0
        t = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_POINTS, endpoint=False)[:, None]
        return c + np.cos(t) * u + np.sin(t) * v
    return vertices  # polygon, rectangle


def _rasterise_polygon(yx: np.ndarray, shape2d) -> np.ndarray:
    """Pixels of the ``shape2d`` grid whose centres lie inside the polygon ``yx`` (a new array each call).

    The same polygon on the same grid is rasterised once (each Run rasterises the ROI again: ~8 ms for an ellipse
    on 256 x 256 px, issue 15): the last few masks are kept, keyed by the exact vertex values.
    """
    yx = np.ascontiguousarray(yx, dtype=float)
    return _rasterise_cached(yx.tobytes(), yx.shape[0], tuple(int(n) for n in shape2d)).copy()


@functools.lru_cache(maxsize=4)
def _rasterise_cached(vertices: bytes, n: int, shape2d: tuple) -> np.ndarray:
    from skimage.draw import polygon as draw_polygon

    yx = np.frombuffer(vertices, dtype=float).reshape(n, 2)
    mask = np.zeros(shape2d, dtype=bool)
    rr, cc = draw_polygon(yx[:, 0], yx[:, 1], shape=shape2d)
    mask[rr, cc] = True
    mask.flags.writeable = False
    return mask


def shapes_to_roi_labels(
    shapes_layer: Any, image_layer: Any, shape2d: Sequence[int]
) -> tuple[np.ndarray, list[str]]:
    """One label per shape (1, 2, ... in the layer's order) on the image's (y, x) grid.

    Vertices go data -> world (shapes layer) -> data (image layer); pixels whose centres lie inside the polygon
    belong to it (a later shape wins where shapes overlap). Lines and paths have no area and are skipped.

    Parameters
    ----------
    shapes_layer : napari.layers.Shapes
        The ROI layer (duck-typed: ``data``, ``shape_type``, ``data_to_world``).
    image_layer : napari.layers.Image
        The image whose grid is used.
    shape2d : tuple of int
        The image's (Y, X) shape.

    Returns
    -------
    labels : numpy.ndarray
        (Y, X) int32, 0 outside every shape.
    warnings : list of str
        Skipped shapes, shapes that cover no pixel, overlaps.
    """
    shape2d = tuple(int(n) for n in shape2d)
    labels = np.zeros(shape2d, dtype=np.int32)
    notes: list[str] = []
    types = list(getattr(shapes_layer, "shape_type", ["polygon"] * len(shapes_layer.data)))
    for i, (vertices, shape_type) in enumerate(zip(shapes_layer.data, types, strict=True)):
        outline = _shape_polygon(str(shape_type), np.asarray(vertices, dtype=float))
        if outline is None:
            notes.append(f"shape {i + 1} is a {shape_type} (no area): skipped")
            continue
        yx = _to_data(image_layer, _to_world(shapes_layer, outline))[:, -2:]
        # a vertex on a pixel centre stays there despite float32 round-off in napari (~1e-6 px)
        yx = np.round(yx, 4)
        mask = _rasterise_polygon(yx, shape2d)
        if not mask.any():
            notes.append(f"shape {i + 1} covers no pixel of the image")
            continue
        if (labels[mask] > 0).any():
            notes.append(f"shape {i + 1} overlaps an earlier shape: the overlap belongs to shape {i + 1}")
        labels[mask] = i + 1
    return labels, notes


def labels_to_roi_labels(
    labels_layer: Any, image_layer: Any, shape2d: Sequence[int], leading: Sequence[int] | None = None
) -> np.ndarray:
    """Resample the Labels layer (nearest neighbour) onto the image's (y, x) grid of slice ``leading``.

    Image pixels map through world coordinates into the labels' data; pixels that fall outside the labels
    array are 0. Where both layers share one grid this is an exact copy of the (current) labels slice.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        The ROI layer (duck-typed: ``data``, ``world_to_data``; multiscale: level 0).
    image_layer : napari.layers.Image
        The image whose grid is used.
    shape2d : tuple of int
        The image's (Y, X) shape.
    leading : sequence of int, optional
        The image slice (leading indices).

    Returns
    -------
    numpy.ndarray
        (Y, X) int32 labels.

    Raises
    ------
    MollifierInputError
        The labels are rotated out of the image plane.
    """
    shape2d = tuple(int(n) for n in shape2d)
    data = labels_layer.data
    if isinstance(data, (list, tuple)):  # multiscale: the full-resolution level
        data = data[0]
    matrix, offset = image_to_layer_affine(image_layer, labels_layer, leading)
    lead_idx = np.round(offset[:-2]).astype(int)
    lin2 = matrix[-2:]
    off2 = offset[-2:]
    if matrix.shape[0] > 2 and not np.allclose(matrix[:-2], 0, atol=1e-9):
        raise MollifierInputError(
            f"Labels layer {labels_layer.name!r} is rotated out of the image plane of {image_layer.name!r}: "
            "give it the image's orientation"
        )
    for k, n in zip(lead_idx, np.shape(data)[:-2], strict=True):
        if not 0 <= k < n:  # this image slice lies outside the labels stack
            return np.zeros(shape2d, dtype=np.int32)
    plane = np.asarray(data[tuple(lead_idx)] if lead_idx.size else data)
    if plane.dtype.kind not in "biu":
        plane = plane.astype(np.int64)
    if np.allclose(lin2, np.eye(2)) and np.allclose(off2, 0) and tuple(plane.shape) == shape2d:
        return np.asarray(plane, dtype=np.int32).copy()
    yy, xx = np.meshgrid(np.arange(shape2d[0]), np.arange(shape2d[1]), indexing="ij")
    src = np.einsum("ij,jyx->iyx", lin2, np.stack([yy, xx]).astype(float)) + off2[:, None, None]
    idx = np.floor(src + 0.5).astype(np.int64)  # nearest pixel centre
    inside = (idx[0] >= 0) & (idx[0] < plane.shape[0]) & (idx[1] >= 0) & (idx[1] < plane.shape[1])
    out = np.zeros(shape2d, dtype=np.int32)
    out[inside] = plane[idx[0][inside], idx[1][inside]]
    return out


def roi_labels(
    roi_layer: Any, image_layer: Any, shape2d: Sequence[int], leading: Sequence[int] | None = None
) -> tuple[np.ndarray, list[str]]:
    """ROI label image for the image slice ``leading``: from a Shapes or a Labels layer (duck-typed by type name).

    Parameters
    ----------
    roi_layer : napari.layers.Shapes or napari.layers.Labels
        The ROI layer.
    image_layer, shape2d, leading
        As in :func:`labels_to_roi_labels`.

    Returns
    -------
    labels : numpy.ndarray
        (Y, X) int32, 0 outside the ROI.
    notes : list of str
        Warnings for the user (skipped shapes...).

    Raises
    ------
    MollifierInputError
        An empty Shapes layer, or an ROI that covers no pixel of the image.
    """
    kind = type(roi_layer).__name__
    notes: list[str] = []
    if kind == "Shapes" or hasattr(roi_layer, "shape_type"):
        if len(roi_layer.data) == 0:
            raise MollifierInputError(
                f"Shapes layer {roi_layer.name!r} has no shapes: draw a polygon over the nucleus, "
                "or choose '(whole image)' as ROI"
            )
        labels, notes = shapes_to_roi_labels(roi_layer, image_layer, shape2d)
    else:
        labels = labels_to_roi_labels(roi_layer, image_layer, shape2d, leading)
    if not (labels > 0).any():
        raise MollifierInputError(
            f"the ROI layer {roi_layer.name!r} covers no pixel of image {image_layer.name!r}: draw the ROI over "
            "the image (check both layers' scale and translate), or choose '(whole image)' as ROI"
        )
    return labels, notes
