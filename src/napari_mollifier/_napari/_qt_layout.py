"""Small Qt layout pieces shared by the dock widgets: a scrolling body and a collapsible section.

A dock widget builds its controls into :func:`scrolling_body`'s inner widget, so that the dock scrolls instead of
growing the viewer's window past a 768 px screen; rarely changed settings go into a :class:`Collapsible`.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

__all__ = ["scrolling_body", "fit_width", "Collapsible", "alive", "set_progress"]


def set_progress(bar, value: int) -> None:
    """``bar.setValue(value)``, repainted with the window's next repaint instead of at once.

    ``QProgressBar.setValue`` repaints the bar synchronously whenever its text or chunk changes; in napari's window
    (an OpenGL canvas inside) that is a whole-window composition on the spot, one more than the event loop's own
    (~15-30 ms with software OpenGL, issue 15). With updates off during the call, Qt schedules the repaint instead.

    Parameters
    ----------
    bar : QProgressBar
        The progress bar.
    value : int
        The new value.
    """
    if bar.value() == value:
        return
    bar.setUpdatesEnabled(False)
    try:
        bar.setValue(value)
    finally:
        bar.setUpdatesEnabled(True)  # schedules the repaint (update())


def scrolling_body(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout of the (scrolled) body to put controls in.

    Parameters
    ----------
    widget : QWidget
        The dock widget; it gets the attribute ``scroll_area``.

    Returns
    -------
    QVBoxLayout
        The layout of the scrolled body.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea(widget)
    scroll.setObjectName("mollifier_scroll")  # found by docs/make_screenshots.py
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # never cut a control off
    body = QWidget()
    scroll.setWidget(body)
    outer.addWidget(scroll)
    widget.scroll_area = scroll
    # the dock asks for little height: the window fits the screen and the body scrolls
    widget.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
    widget.setMinimumHeight(200)
    layout = QVBoxLayout(body)
    layout.setContentsMargins(4, 4, 4, 4)
    return layout


def fit_width(widget: QWidget) -> None:
    """Make the dock at least as wide as its body needs, once the controls are built.

    No control is cut off at the right; only the height scrolls.

    Parameters
    ----------
    widget : QWidget
        A widget set up by :func:`scrolling_body` (at most 560 px wide).
    """
    scroll = widget.scroll_area
    bar = scroll.verticalScrollBar().sizeHint().width()
    body = scroll.widget()
    body.adjustSize()
    need = max(body.sizeHint().width(), body.minimumSizeHint().width()) + bar + 4
    if need > scroll.minimumWidth():
        scroll.setMinimumWidth(min(need, 560))


class Collapsible(QWidget):
    """A titled section that opens and closes with a click on its title (closed at first).

    Parameters
    ----------
    title : str
        The text of the title button.
    parent : QWidget, optional
        The Qt parent.
    expanded : bool
        Open at first (default False). Put the section's controls in :attr:`body`.
    """

    def __init__(self, title: str, parent: QWidget | None = None, *, expanded: bool = False):
        super().__init__(parent)
        self.toggle = QToolButton(self)
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = QWidget(self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.toggle)
        lay.addWidget(self.body)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    def set_expanded(self, on: bool) -> None:
        """Open (True) or close the section.

        Parameters
        ----------
        on : bool
            True: open.
        """
        if self.toggle.isChecked() != bool(on):
            self.toggle.setChecked(bool(on))  # re-enters through toggled
            return
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(bool(on))

    def is_expanded(self) -> bool:
        """Whether the section is open.

        Returns
        -------
        bool
            True when the section is open.
        """
        return self.toggle.isChecked()


def alive(widget: QWidget) -> bool:
    """Tell whether ``widget`` can still be used: False once its C++ object is gone (deleted with its layout row).

    Parameters
    ----------
    widget : QWidget
        Any Qt widget (or wrapper) that may have been deleted on the C++ side.

    Returns
    -------
    bool
        True while it can still be used.
    """
    try:
        widget.objectName()
    except RuntimeError:  # the C++ object was deleted with its layout row
        return False
    return True

