"""Exporters: what a run leaves for people and other tools.

- circuit.py: circuit graphs drawn with graphviz (``dot``), SVG and PNG.
- plot.py: pareto plots (circuit size vs loss recovered) with matplotlib, SVG and PNG.
- report.py: the self-contained ``report.html`` of a run folder.
- view.py: the data of the report's interactive circuit view (compact, bounded for real-size graphs).
- assets/: the view's script and styles, inlined into the report (hand-written, no libraries).
- explore.py: ``acdc explore``, the view served with the model loaded (Flask), circuits edited and evaluated exactly.
- mib.py: scores and circuits in the file layout of the MIB circuit-localisation track.
"""
