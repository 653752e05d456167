"""The one registry of architectures: Hugging Face architecture name -> the module of this package whose ``build``
makes its :class:`~acdc.arch.base.Arch`. Adding an architecture is one new file exporting
``build(model, name) -> Arch`` plus one line in ``FAMILIES``; ``SUPPORTED_ARCHITECTURES`` (and so the loader's
check and its error messages) follows."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from acdc.arch.base import Arch
from acdc.errors import UnsupportedArchitecture

Builder = Callable[[Any, str], Arch]

FAMILIES: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "Gemma3ForCausalLM": "gemma3",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
}

BUILDERS: dict[str, Builder] = {name: importlib.import_module(f"acdc.arch.{family}").build
                                for name, family in FAMILIES.items()}

# Architectures whose attention the masked forward implements (see `Arch.attention`).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(BUILDERS)


def architecture_of(model: Any) -> str:
    """The Hugging Face architecture name of a TransformerBridge (e.g. ``GPT2LMHeadModel``)."""
    cfg = model.cfg
    name = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
    if name is None and hasattr(model, "original_model"):
        name = type(model.original_model).__name__
    return str(name)


def builder(name: str) -> Builder:
    """The builder registered for architecture ``name``, or a one-line :class:`UnsupportedArchitecture`."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise UnsupportedArchitecture(
            f"architecture '{name}' is not supported: the masked forward needs per-head query/key/value inputs, "
            f"implemented for {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from None


def build(model: Any) -> Arch:
    """A fresh :class:`Arch` of ``model`` (uncached; :func:`acdc.arch.get_arch` caches)."""
    name = architecture_of(model)
    return builder(name)(model, name)
