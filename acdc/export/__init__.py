"""Exporters: what a run leaves for people and other tools.

- circuit.py: circuit graphs drawn with graphviz (``dot``), SVG and PNG.
- plot.py: pareto plots (circuit size vs loss recovered) with matplotlib, SVG and PNG.
- report.py: the self-contained ``report.html`` of a run folder.
- mib.py: scores and circuits in the file layout of the MIB circuit-localisation track.
"""
