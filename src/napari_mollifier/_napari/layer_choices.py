"""Which layers the "Rate maps" dock offers: the input and ROI combos follow the viewer's layers (issue #14).

:class:`LayerChoices` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) fills the combos,
pre-selects an input layer per model input (layer metadata ``field``, then name hints, then order) and makes a new
Shapes or Labels layer (or the first shape drawn) the ROI.
"""

from __future__ import annotations

import weakref

from napari.layers import Image, Labels, Shapes
from qtpy.QtWidgets import QComboBox

from ._qt_layout import alive as _alive
from .collect import WHOLE_CHOICES, WHOLE_IMAGE, WHOLE_IMAGE_ALL
from .results import _META_KEY

__all__ = ["INPUT_HINTS", "LayerChoices", "roi_candidate"]

#: Name fragments used to pre-select an input layer for a model input.
INPUT_HINTS = {
    "phi_h": ("phi_h", "hetero"),
    "phi_e": ("phi_e", "euchro"),
    "density": ("density", "dna", "chromatin"),
}


def roi_candidate(layer) -> bool:
    """Tell whether the ROI box may pick ``layer`` by itself.

    Labels, or Shapes with a shape; not one marked ``roi_candidate`` False (e.g. the domains' own labels, where
    every domain would become an ROI).

    Parameters
    ----------
    layer : napari.layers.Layer
        A layer of the viewer.

    Returns
    -------
    bool
        True when it can be the ROI.
    """
    if layer.metadata.get("roi_candidate", True) is False:
        return False
    if isinstance(layer, Shapes):
        return len(layer.data) > 0
    return isinstance(layer, Labels)


class LayerChoices:
    """The input and ROI combos of the dock, kept in step with the viewer's layer list."""

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_layers)
        ev.removed.connect(self._refresh_layers)
        ev.moved.connect(self._refresh_layers)
        from .layer_style import restyle_on_insert

        restyle_on_insert(self.viewer)  # maps reopened from the plugin's files show their titled colour bar

    def _watch(self, layer) -> None:
        if id(layer) not in self._connected_layers:
            self._connected_layers.add(id(layer))
            layer.events.name.connect(self._refresh_layers)
            if isinstance(layer, Shapes):
                ref = weakref.ref(layer)
                layer.events.data.connect(lambda *_a: (ly := ref()) is not None and self._on_shapes_drawn(ly))

    def _input_layers(self) -> list:
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and _META_KEY not in ly.metadata]

    def _refresh_layers(self, *_args) -> None:
        for layer in self.viewer.layers:
            self._watch(layer)
        image_layers = self._input_layers()
        images = [ly.name for ly in image_layers]
        seen = getattr(self, "_known_images", None)
        self._known_images = {id(ly) for ly in image_layers}
        for key, combo in self.input_combos.items():
            self._fill(combo, images, self._guess_input(key, images))
            if seen is not None:  # a new layer made for this input (e.g. the domains' phi_h): the hand-off
                tagged = [ly.name for ly in image_layers if id(ly) not in seen and ly.metadata.get("field") == key]
                if tagged and combo.currentText() != tagged[-1]:
                    combo.setCurrentText(tagged[-1])
        roi_layers = [ly for ly in self.viewer.layers if isinstance(ly, (Shapes, Labels))]
        rois = [WHOLE_IMAGE, WHOLE_IMAGE_ALL] + [ly.name for ly in roi_layers]
        known = getattr(self, "_known_rois", set())
        self._known_rois = {id(ly) for ly in roi_layers}
        fresh = [ly for ly in roi_layers if id(ly) not in known and roi_candidate(ly)]
        self._fill(self.roi_combo, rois, WHOLE_IMAGE)
        if fresh:  # a Shapes or Labels layer appeared (or the widget opened next to one): it is the ROI
            self._select_roi(fresh[-1].name)
        self._update_stack_controls()

    def _select_roi(self, name: str) -> None:
        if self.roi_combo.findText(name) >= 0 and self.roi_combo.currentText() != name:
            self.roi_combo.setCurrentText(name)

    def _on_shapes_drawn(self, layer) -> None:
        """Make a Shapes layer the ROI when a shape is drawn in it while the ROI is the whole image."""
        if self.roi_combo.currentText() in WHOLE_CHOICES and layer in self.viewer.layers and roi_candidate(layer):
            self._select_roi(layer.name)

    @staticmethod
    def _fill(combo: QComboBox, names: list[str], default: str | None) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        pick = current if current in names else default
        if pick in names:
            combo.setCurrentIndex(names.index(pick))
        combo.blockSignals(False)
        if combo.currentText() != current:  # announce a changed selection once
            combo.currentTextChanged.emit(combo.currentText())

    def _guess_input(self, key: str, names: list[str]) -> str | None:
        for name in names:
            if self.viewer.layers[name].metadata.get("field") == key:
                return name
        for hint in INPUT_HINTS.get(key, (key,)):
            for name in names:
                if hint in name.lower():
                    return name
        order = list(self.input_combos)
        pos = order.index(key) if key in order else 0
        return names[pos] if pos < len(names) else (names[0] if names else None)

    def _layer(self, name: str | None):
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _reference_layer(self):
        """Return the first input layer: its grid (scale, units...) is the one of the outputs."""
        for combo in self.input_combos.values():
            layer = self._layer(combo.currentText())
            if layer is not None:
                return layer
        return None

    def _update_stack_controls(self) -> None:
        if not _alive(self.all_slices):
            return
        ref = self._reference_layer()
        self.all_slices.setEnabled(ref is not None and ref.ndim > 2)
