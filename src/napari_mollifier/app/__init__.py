"""The application layer: from files to saved results (the ``mollifier`` CLI and the widget's file jobs use it).

:mod:`.jobs` reads the input files, runs the solver and writes the outputs with their provenance;
:mod:`.rerun` repeats a recorded run. The layers below it (:mod:`napari_mollifier.io` for files, the solver
modules for the computation) never import it.
"""
