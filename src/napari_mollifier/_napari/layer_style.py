"""Colour bars of the widget's output layers, labelled with the quantity and its unit (issue 13, item 6).

Every rate, uncertainty and residual layer the widget creates shows napari's colour-bar overlay
(``layer.colorbar``, napari >= 0.9). napari's colour bar has ticks but no title, so the label
(:func:`quantity_label`, e.g. ``"rate λ = Γ_me/Γ_ac (no unit)"``) is put beside it as a small text overlay of the
layer, at the same canvas corner: napari stacks the overlays of one corner, so the label sits right under the bar
and is shown and hidden with its layer. The label is also kept in ``layer.metadata["colorbar_label"]``.

The text overlay of a layer uses napari's private overlay registry (``napari._vispy.utils.visual``); where that is
missing (another napari version) the colour bar is still shown and only the on-canvas label is left out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from napari import Viewer
    from napari.layers import Image

__all__ = ["LABEL_KEY", "quantity_label", "rate_unit", "restyle_on_insert", "show_colorbar", "style_output",
           "warm_colorbar_glyphs"]

log = logging.getLogger(__name__)

LABEL_KEY = "colorbar_label"
_OVERLAY = "mollifier_colorbar_label"
RELATIVE_RATE = "relative rate (λ / median)"
#: The per-domain maps of the Heterochromatin domains widget (the lab's geometric rates).
DOMAIN_LABELS = {"gamma_ac": "acetylation rate Γ_ac (1/s)", "gamma_me": "methylation rate Γ_me (1/s)",
                 "lambda": "geometric λ = Γ_me/Γ_ac (no unit)"}


def _power(unit: str, power: int) -> str:
    return unit + {1: "", 2: "²", 3: "³"}.get(power, f"^{power}")


def rate_unit(model: str, unit: str) -> str:
    """Return the unit of the rate of ``model`` for an image in ``unit``.

    Parameters
    ----------
    model : str
        Model name (``"chromatin-balance"``, ``"heat"``...).
    unit : str
        The image's length unit (``"µm"``, ``"px"``...).

    Returns
    -------
    str
        E.g. ``"no unit"`` (a ratio of two rates) or ``"µm² per time unit of m"``.
    """
    if model.startswith("chromatin"):
        return "no unit"  # lambda = Gamma_me / Gamma_ac, a ratio of two rates
    if model == "heat":
        return f"{_power(unit, 2)} per time unit of m"
    if model == "langevin":
        return "units of u per time unit"
    return "model units"


def quantity_label(kind: str, provenance: dict, unit: str) -> str:
    """Return the colour-bar label of an output layer: the quantity and its unit.

    Parameters
    ----------
    kind : str
        ``"rate"``, ``"uncertainty"`` or ``"residual"`` (others: returned as is).
    provenance : dict
        The result's provenance (model, relative level).
    unit : str
        The image's length unit.

    Returns
    -------
    str
        E.g. ``"rate λ = Γ_me/Γ_ac (no unit)"``.
    """
    model = str(provenance.get("model", ""))
    relative = provenance.get("rate_level") == "relative" and bool(provenance.get("relative_map"))
    symbol = "λ = Γ_me/Γ_ac" if model.startswith("chromatin") else "λ"
    if kind == "rate":
        return RELATIVE_RATE if relative else f"rate {symbol} ({rate_unit(model, unit)})"
    if kind == "uncertainty":
        if relative:
            return "uncertainty of the relative rate (λ / median)"
        return f"uncertainty of {symbol.split(' =')[0]} (1 s.d., {rate_unit(model, unit)})"
    if kind == "residual":
        if model == "chromatin-balance":
            return "PDE residual (volume fraction)"
        if model == "heat":
            return "PDE residual (units of m)"
        return "PDE residual (model units)"
    return kind


def _label_overlay_class():
    """Return a napari layer text overlay showing its own text (registered once with napari's vispy overlays)."""
    global _LabelOverlay
    if _LabelOverlay is not None:
        return _LabelOverlay
    from napari._vispy.overlays.text import _VispyLayerTextOverlay
    from napari._vispy.utils.visual import overlay_to_visual
    from napari.components.overlays.text import TextOverlay

    class ColorbarLabelOverlay(TextOverlay):
        """The title of a layer's colour bar (a layer overlay; napari's TextOverlay is a viewer overlay)."""

    class VispyColorbarLabelOverlay(_VispyLayerTextOverlay):
        def _connect_events(self):
            self.overlay.events.text.connect(self._on_text_change)

        def _on_text_change(self):
            self.node.text = self.overlay.text

    overlay_to_visual[ColorbarLabelOverlay] = VispyColorbarLabelOverlay
    _LabelOverlay = ColorbarLabelOverlay
    return _LabelOverlay


_LabelOverlay = None


#: Canvas corner of each kind's colour bar: the rate and the residual are both shown after a run, and a bar with
#: its title takes about 250 px; side by side in one corner the second title was cut at the canvas edge.
CORNER = {"rate": "top_right", "residual": "bottom_right", "uncertainty": "bottom_left"}


def show_colorbar(layer: Image, label: str, corner: str = "top_right", title: bool = True) -> None:
    """Show ``layer``'s colour bar at ``corner``, titled ``label``.

    The title is set again on every run: the label follows the result.

    Parameters
    ----------
    layer : napari.layers.Image
        The layer (napari < 0.9 has no colour bar: only the metadata is set).
    label : str
        The title, kept in ``layer.metadata["colorbar_label"]``.
    corner : str
        A napari canvas position (``"top_right"``...).
    title : bool
        False: the bar only, its on-canvas title left for a later call (napari builds and first draws each
        overlay's visuals in the event-loop turn that shows it: the widget shows the bar and its title in two
        turns, so that neither stalls the viewer as long as both together).
    """
    layer.metadata = {**layer.metadata, LABEL_KEY: label}
    colorbar = getattr(layer, "colorbar", None)
    if colorbar is None:  # napari < 0.9: no colour-bar overlay
        return
    colorbar.position = corner
    colorbar.visible = True
    colorbar.box = True  # readable over the image
    if not title:
        return
    import warnings

    try:
        with warnings.catch_warnings():  # napari flags private access from a plugin (FutureWarning, 0.9)
            warnings.simplefilter("ignore", FutureWarning)
            overlays = layer._overlays
        if _OVERLAY in overlays:
            overlays[_OVERLAY].text = label
            overlays[_OVERLAY].position = colorbar.position
            return
        cls = _label_overlay_class()
        overlays[_OVERLAY] = cls(text=label, visible=True, position=colorbar.position, box=True, font_size=9)
    except Exception:  # noqa: BLE001 - the label is cosmetic; the colour bar itself is shown
        log.debug("napari-mollifier: colour-bar label overlay unavailable", exc_info=True)


def style_output(layer: Image, kind: str, provenance: dict, unit: str, title: bool = True) -> None:
    """Show the colour bar of a rate, uncertainty or residual output layer (other kinds unchanged).

    Parameters
    ----------
    layer : napari.layers.Image
        The output layer.
    kind : str
        Its kind (``"rate"``, ``"uncertainty"``, ``"residual"``, ``"smoothed"``).
    provenance : dict
        The result's provenance.
    unit : str
        The image's length unit.
    title : bool
        As in :func:`show_colorbar`.
    """
    if kind in ("rate", "uncertainty", "residual"):
        show_colorbar(layer, quantity_label(kind, provenance, unit), CORNER[kind], title=title)


#: Glyphs every colour bar draws: the tick labels (``"%g"`` of the limits) and the titles of the output layers.
_TICK_GLYPHS = "0123456789.-+e"
_GLYPHS_PER_TURN = 2  # ~10-15 ms each under a software renderer: two per event-loop turn stay unnoticed


def _title_glyphs() -> str:
    titles = [quantity_label(kind, {"model": model}, unit) for kind in ("rate", "uncertainty", "residual")
              for model in ("chromatin", "chromatin-balance", "heat") for unit in ("µm", "px")]
    titles += [RELATIVE_RATE, "uncertainty of the relative rate (λ / median)", *DOMAIN_LABELS.values()]
    return "".join(sorted(set("".join(titles)) - set(" ")))


def warm_colorbar_glyphs(viewer: Viewer) -> None:
    """Render the colour bars' glyphs into the canvas font atlas now, a couple per event-loop turn.

    napari draws canvas text from one signed-distance-field atlas per canvas, and renders a glyph into it (Qt
    raster at 256 pt, then a CPU distance transform: ~10-15 ms per glyph here) the first time a text visual
    draws it. The first colour bars of a run need ~35 glyphs (tick digits and titles): ~0.5 s in the turns
    that show the first result layers (benchmarks/bench_widget_stall.py). Called when a dock opens, so that
    this work is done in idle turns while the user is drawing an ROI. Uses napari's private canvas font info;
    where that is missing nothing happens (the glyphs are then rendered on first use, as before).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose canvas atlas is filled.
    """
    import warnings

    try:
        with warnings.catch_warnings():  # napari flags private access from a plugin (FutureWarning, 0.9)
            warnings.simplefilter("ignore", FutureWarning)
            info = viewer.window._qt_viewer.canvas.font_info()
        font = info.font_manager.get_font(info.face)
    except Exception:  # noqa: BLE001 - an optimisation only: another napari version renders on first use
        log.debug("napari-mollifier: canvas font atlas unavailable", exc_info=True)
        return
    todo = list(_TICK_GLYPHS + _title_glyphs())  # a glyph already in the atlas is a dictionary look-up
    from qtpy.QtCore import QTimer

    def _next() -> None:
        try:
            for ch in todo[:_GLYPHS_PER_TURN]:
                font[ch]
            del todo[:_GLYPHS_PER_TURN]
        except Exception:  # noqa: BLE001 - e.g. the canvas closed meanwhile
            log.debug("napari-mollifier: glyph warm-up stopped", exc_info=True)
            todo.clear()
        if todo:
            QTimer.singleShot(1, _next)
        else:
            _warming.discard(id(todo))

    _warming.add(id(todo))
    QTimer.singleShot(1, _next)


_warming: set[int] = set()


def glyphs_warming() -> bool:
    """Return True while a :func:`warm_colorbar_glyphs` is still rendering glyphs (benchmarks wait for it)."""
    return bool(_warming)


def restyle_on_insert(viewer: Viewer) -> None:
    """Show the colour bar of every layer added to ``viewer`` that carries a saved title, at the corner of its kind.

    The saved title is ``metadata["colorbar_label"]``: maps reopened through the plugin's readers.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layer insertions are watched.
    """

    def _on_inserted(event) -> None:
        layer = event.value
        label = (getattr(layer, "metadata", None) or {}).get(LABEL_KEY)
        if not isinstance(label, str) or not label or getattr(layer, "colorbar", None) is None:
            return
        lower = label.lower()
        kind = "uncertainty" if lower.startswith("uncertainty") else "residual" if "residual" in lower else "rate"
        show_colorbar(layer, label, CORNER[kind])

    viewer.layers.events.inserted.connect(_on_inserted)

