"""The one registry of search methods. Each family is one module of this package exporting ``METHODS``, a tuple of
:class:`~acdc.methods.base.Method` records; adding a family is one new file plus one line here. The order is the
order of ``acdc run``'s default methods and of every listing."""

from __future__ import annotations

import importlib

from acdc.errors import InputError
from acdc.methods.base import Method

FAMILIES: tuple[str, ...] = (
    "attribution",
    "edge_pruning",
    "hybrid",
    "acdc",
    "ensemble",
    "selected",
)


def _load() -> dict[str, Method]:
    out: dict[str, Method] = {}
    for family in FAMILIES:
        for m in importlib.import_module(f"acdc.methods.{family}").METHODS:
            if m.name in out:
                raise RuntimeError(f"method {m.name} registered twice")  # a programming error, not user input
            out[m.name] = m
    return out


REGISTRY: dict[str, Method] = _load()


def get_method(name: str) -> Method:
    """The method called ``name``, or a one-line error listing the choices."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown method '{name}'; choose one of {', '.join(REGISTRY)}") from None


def method_names(*, in_job: bool | None = None, attribution: bool | None = None,
                 distributed: bool | None = None) -> tuple[str, ...]:
    """Names of the registered methods, optionally only those with the given flags."""
    return tuple(m.name for m in REGISTRY.values()
                 if (in_job is None or m.in_job == in_job) and (attribution is None or m.attribution == attribution)
                 and (distributed is None or m.distributed == distributed))
