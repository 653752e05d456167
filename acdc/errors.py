"""Typed exceptions. Every message says what is wrong and what to do; the CLI prints it on one line.

`InputError` and its subclasses mean the user gave something unusable (CLI exit status 2); any other
`AcdcError` is a failure while doing valid work (exit status 1).
"""

from __future__ import annotations


class AcdcError(Exception):
    """Base class of the errors this package raises on purpose."""

    exit_code = 1


class InputError(AcdcError):
    """The input (a model spec, a tensor shape, a file) is unusable as given."""

    exit_code = 2


class UnknownZooModel(InputError):
    """A `zoo:NAME` that the zoo does not have."""


class ModelLoadError(InputError):
    """A model spec that could not be loaded (hub unreachable, missing directory, bad checkpoint)."""


class UnsupportedArchitecture(InputError):
    """A model whose attention cannot expose per-head query/key/value inputs."""


class ShapeError(InputError):
    """Tensors whose shapes do not fit together (clean vs counterfactual, masks vs graph)."""


class CircuitFileError(InputError):
    """A circuit JSON file that is malformed or belongs to another graph."""


class ZooTrainingError(AcdcError):
    """Training a zoo model failed (the loss diverged, a trainer wrote no model, the zoo folder is not writable)."""


class BudgetSpent(AcdcError):
    """A search stopped by its time budget before it had a circuit to return."""
