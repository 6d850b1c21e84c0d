"""napari integration of napari-mollifier (npe2 contributions).

Modules in this subpackage are referenced from the top-level ``napari.yaml``
manifest by their ``python_name``. Keep this ``__init__`` free of imports so
that importing a single contribution (e.g. sample data) never drags in Qt.
"""
