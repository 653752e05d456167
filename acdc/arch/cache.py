"""One :class:`~acdc.arch.base.Arch` per model, rebuilt whenever the model's weights have changed.

The Arch holds stacked copies of the weights, so it must not outlive the weights it was copied from. Each entry is
stored with a fingerprint of every parameter and buffer of the model: its identity and storage address, dtype,
device, shape and torch's in-place version counter (``Tensor._version``, bumped by every in-place operation such as
``W.add_(...)``, ``copy_`` or ``load_state_dict``). ``model.to(device or dtype)`` gives new storage, an in-place edit a
new version, a replaced parameter a new identity: any of them makes the next :func:`get_arch` rebuild. Taking the
fingerprint reads a few attributes per tensor (about a millisecond for a GPT-2-small-sized bridge, well under 1% of a
forward), so it is taken on every call. Not seen: writes through ``p.data`` (which does not share the version
counter; use ``with torch.no_grad(): p.add_(...)``), and edits of a model's tensors that are neither parameters nor
buffers.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from acdc.arch.base import Arch
from acdc.arch.registry import build

Fingerprint = tuple[tuple[int, int, torch.dtype, torch.device, torch.Size, int], ...]

_CACHE: weakref.WeakKeyDictionary[Any, tuple[Fingerprint, Arch]] = weakref.WeakKeyDictionary()


def weights_fingerprint(model: Any) -> Fingerprint:
    """What identifies the current values of ``model``'s parameters and buffers without reading them."""
    # One walk over the modules reading torch's own per-module tables: a bridge has hundreds of small modules (its
    # hook points), and walking them twice (``parameters()`` then ``buffers()``) costs three times as much.
    return tuple((id(t), t.data_ptr(), t.dtype, t.device, t.shape, t._version)
                 for mod in model.modules() for table in (mod._parameters, mod._buffers)
                 for t in table.values() if t is not None)


def get_arch(model: Any) -> Arch:
    """The :class:`Arch` of a TransformerBridge: the cached one while the model's weights are unchanged (the same
    object on every call), a fresh one after ``model.to(...)`` or an in-place weight edit."""
    key = weights_fingerprint(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    arch = build(model)
    _CACHE[model] = (key, arch)
    return arch
