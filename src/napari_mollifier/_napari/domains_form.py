"""Layout of the "Heterochromatin domains" dock: the controls and their tooltips, nothing else (issue #14).

:func:`build_domains_form` creates the widgets as attributes of the dock; the dock connects the rest of their
signals. Module-level imports: qtpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
)

from napari_mollifier.domains.pipeline import THRESHOLD_METHODS

from ._qt_layout import Collapsible, scrolling_body
from .domains_report import TABLE_HEADERS, TABLE_SHOWN
from .rate_maps_form import compact_combo

if TYPE_CHECKING:  # pragma: no cover
    from .domains_widget import DomainsWidget

__all__ = ["THRESHOLDS", "build_domains_form"]

#: The threshold choices: the library's methods, in order (the dock's index 0, 1), then a density.
THRESHOLDS = (*THRESHOLD_METHODS, "value (/µm²)")


def build_domains_form(widget: DomainsWidget) -> None:
    """Create the controls of the domains dock ``widget`` as its attributes (``source_combo``, ``d_spin``, ``table``...).

    In order: the localisation source, the diffusivity, the collapsed segmentation settings, Run / Cancel, the
    progress and summary, the per-domain table and its export button.
    """
    from napari_mollifier.domains import DEFAULTS as D

    lay = scrolling_body(widget)
    form = QFormLayout()
    widget.source_combo = QComboBox()
    compact_combo(widget.source_combo)
    widget.source_combo.setToolTip("Where the localisations come from: a table file (x, y in nm), a Points layer, "
                                 "or a density image opened from a table by the plugin's reader.")
    form.addRow("Localisations", widget.source_combo)
    row = QHBoxLayout()
    widget.path_edit = QLineEdit()
    widget.path_edit.setPlaceholderText("localisation table (.csv), x/y in nm")
    widget.path_edit.setToolTip("Localisation table (.csv/.tsv; ThunderSTORM-style columns, x and y in nm).")
    browse = QPushButton("...")
    browse.setToolTip("Choose the localisation table file.")
    browse.clicked.connect(widget._browse)
    row.addWidget(widget.path_edit)
    row.addWidget(browse)
    form.addRow("Table file", row)
    widget.points_unit = QComboBox()
    widget.points_unit.addItems(["µm", "nm"])
    widget.points_unit.setToolTip("Unit of the Points layer's world coordinates (its data times its scale).")
    widget.points_unit_label = QLabel("Points layer unit")
    form.addRow(widget.points_unit_label, widget.points_unit)
    widget._source_form = form

    def dspin(value, lo, hi, step, decimals=1, suffix="", tip=""):
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setDecimals(decimals)
        s.setSingleStep(step)
        s.setValue(value)
        if suffix:
            s.setSuffix(suffix)
        s.setToolTip(tip)
        return s

    def ispin(value, lo, hi, tip=""):
        s = QSpinBox()
        s.setRange(lo, hi)
        s.setValue(value)
        s.setToolTip(tip)
        return s

    widget.d_spin = dspin(D["diffusivity"], 1e-6, 1e6, 0.1, 4, " µm²/s",
                        "Chromatin diffusivity D (µm²/s): the rates scale with it (Γac = D / spacing²).")
    form.addRow("Diffusivity D", widget.d_spin)
    lay.addLayout(form)

    widget.advanced = Collapsible("Segmentation settings")
    adv = QFormLayout(widget.advanced.body)
    adv.setContentsMargins(0, 0, 0, 0)
    widget.pixel_spin = dspin(D["pixel_size"], 1, 1000, 5, 1, " nm",
                            "Pixel size (nm) of the output images (domains, rates, phi_h / phi_e).")
    adv.addRow("Pixel size", widget.pixel_spin)
    widget.threshold_combo = QComboBox()
    widget.threshold_combo.addItems(list(THRESHOLDS))
    widget.threshold_combo.setToolTip("How dense a localisation must be to count as heterochromatin: a percentile "
                                    "of the densities in the nucleus, Otsu's method on log density, or a "
                                    "density in localisations per µm².")
    widget.threshold_value = dspin(D["percentile"], 0, 1e9, 5, 2,
                                 tip="Percentile (0-100) or density (localisations per µm²), as chosen left.")
    trow = QHBoxLayout()
    trow.addWidget(widget.threshold_combo)
    trow.addWidget(widget.threshold_value)
    adv.addRow("Density threshold", trow)
    widget.eps_spin = dspin(D["eps_nm"], 0.1, 1000, 5, 1, " nm",
                          "Clustering distance (nm): dense localisations closer than this join one domain "
                          "(DBSCAN eps).")
    adv.addRow("Joining distance", widget.eps_spin)
    widget.min_samples_spin = ispin(D["min_samples"], 1, 1000,
                                  "Neighbours a localisation needs within the joining distance to start a "
                                  "domain (DBSCAN min samples).")
    adv.addRow("Neighbours to start", widget.min_samples_spin)
    widget.min_points_spin = ispin(D["min_points"], 1, 100000,
                                 "Smallest domain, in localisations: smaller clusters are ignored.")
    adv.addRow("Smallest domain", widget.min_points_spin)
    widget.subsample_spin = ispin(D["subsample"], 0, 100,
                                "Analyse 1 in N localisations. 'auto': all of them up to 300,000 (then the "
                                "smallest N below that). Subsampling is faster but finds fewer, smaller "
                                "domains.")
    widget.subsample_spin.setSpecialValueText("auto")
    adv.addRow("Analyse 1 in", widget.subsample_spin)
    lay.addWidget(widget.advanced)

    buttons = QHBoxLayout()
    widget.run_button = QPushButton("Run")
    widget.run_button.setToolTip("Find the domains and their rates (in the background).")
    widget.run_button.clicked.connect(widget.run)
    widget.cancel_button = QPushButton("Cancel")
    widget.cancel_button.setToolTip("Stop the analysis; nothing is added.")
    widget.cancel_button.setEnabled(False)
    widget.cancel_button.clicked.connect(widget.cancel)
    buttons.addWidget(widget.run_button)
    buttons.addWidget(widget.cancel_button)
    lay.addLayout(buttons)
    widget.progress_bar = QProgressBar()
    widget.progress_bar.setRange(0, 100)
    lay.addWidget(widget.progress_bar)
    widget.status_label = QLabel("Ready")
    widget.status_label.setWordWrap(True)
    lay.addWidget(widget.status_label)
    widget.summary_label = QLabel("")
    widget.summary_label.setWordWrap(True)
    lay.addWidget(widget.summary_label)
    widget.details = Collapsible("Details")
    dl = QVBoxLayout(widget.details.body)
    dl.setContentsMargins(0, 0, 0, 0)
    widget.details_label = QLabel("")
    widget.details_label.setWordWrap(True)
    widget.details_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    dl.addWidget(widget.details_label)
    widget.details.setVisible(False)
    lay.addWidget(widget.details)
    widget.table = QTableWidget(0, len(TABLE_SHOWN))
    widget.table.setHorizontalHeaderLabels([TABLE_HEADERS[c] for c in TABLE_SHOWN])
    widget.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    widget.table.verticalHeader().setVisible(False)
    widget.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    widget.table.setMinimumHeight(160)
    widget.table.setToolTip("One row per interior domain; scroll sideways for every column. Export CSV writes "
                          "all columns.")
    lay.addWidget(widget.table)
    widget.export_button = QPushButton("Export CSV...")
    widget.export_button.setToolTip("Write the per-domain table (every column) to a CSV file.")
    widget.export_button.setEnabled(False)
    widget.export_button.clicked.connect(widget._export_dialog)
    lay.addWidget(widget.export_button)
    lay.addStretch(1)
