"""napari ``LayerDataTuple`` s from the plain records the readers return (no Qt, no napari import).

The readers of :mod:`napari_mollifier.io` return an :class:`~napari_mollifier.io.ImageData` (array, axes, scale in
micrometres, channel names, metadata); :func:`image_layer_data` turns one into napari image layers, which the npe2
reader hooks (:mod:`._napari.io_hooks <napari_mollifier._napari.io_hooks>`) hand to the viewer.
"""

from __future__ import annotations

__all__ = ["image_layer_data", "napari_supports_units", "CHANNEL_COLORMAPS"]

#: Colormaps of the channel layers of a multi-channel image, in channel order (then repeated).
CHANNEL_COLORMAPS = ("magenta", "green", "cyan", "yellow", "red", "blue")


def napari_supports_units() -> bool:
    """Tell whether the installed napari takes ``units=`` for layers (>= 0.6); reads metadata, imports no Qt."""
    from importlib import metadata

    try:
        version = metadata.version("napari")
    except metadata.PackageNotFoundError:
        return False
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= (0, 6)


def image_layer_data(image, *, split_channels: bool = True) -> list:
    """Napari ``LayerDataTuple`` s of an image as read from a file, in physical units.

    Parameters
    ----------
    image : napari_mollifier.io.ImageData
        The record a reader of :mod:`napari_mollifier.io` returns.
    split_channels : bool
        One image layer per entry of the ``c`` axis (additive blending, :data:`CHANNEL_COLORMAPS`); False: one
        layer for the whole array.

    Returns
    -------
    list of tuple
        ``(data, kwargs, "image")`` per layer, with ``scale``, ``translate``, ``axis_labels``, ``units`` (napari
        >= 0.6) and the file's metadata (plus ``channel`` and ``channel_name`` per channel layer).
    """
    base_meta = dict(image.metadata)
    if split_channels and "c" in image.axes:
        ax = image.axes.index("c")
        parts = [(i, image.take("c", i)) for i in range(image.shape[ax])]
    else:
        parts = [(None, image)]
    out = []
    for i, img in parts:
        kwargs = {
            "name": image.name if i is None else f"{image.name} [{image.channel_label(i)}]",
            "scale": tuple(float(s) for s in img.scale),
            "translate": tuple(float(t) for t in img.translate),
            "axis_labels": tuple(img.axes),
            "metadata": {
                **base_meta,
                **({"channel": i, "channel_name": image.channel_label(i)} if i is not None else {}),
            },
        }
        if napari_supports_units():
            kwargs["units"] = tuple(u if u is not None else "pixel" for u in img.units)
        if i is not None and len(parts) > 1:
            kwargs["colormap"] = CHANNEL_COLORMAPS[i % len(CHANNEL_COLORMAPS)]
            kwargs["blending"] = "additive"
        out.append((img.data, kwargs, "image"))
    return out
