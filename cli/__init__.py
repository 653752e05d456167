"""Command-line interface (installed as acdc.cli)."""
