"""The computational graph of a transformer: writers, readers and the edges between them.

State is dense: a boolean ``valid`` tensor ``[n_src, n_dst]`` says which writer -> reader edges exist, and masks and
scores are float tensors of that shape. Names follow the field's convention so circuits are interchangeable with
other tools:

- writers (sources): ``input``, ``a{L}.h{H}`` (one attention head's output), ``m{L}`` (an MLP's output);
- readers (destinations): ``a{L}.h{H}<q>``, ``a{L}.h{H}<k>``, ``a{L}.h{H}<v>``, ``m{L}``, ``logits``.
  With grouped-query attention a key/value reader is the shared key/value head: ``a{L}.g{G}<k>``/``<v>``.

Index layout (the masked forward relies on it): writers are ``input`` then, per layer, its heads then its MLP;
readers are, per layer, the q readers of every head, the k readers, the v readers, the MLP reader, and finally
``logits``. Both lists are therefore in topological order, and the writers upstream of any reader form a prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from acdc.errors import CircuitFileError, InputError
from acdc.io import atomic_write_text, read_json

CIRCUIT_FORMAT = "acdc-circuit/1"


@dataclass(frozen=True, eq=False)
class Graph:
    """Writers, readers and valid edges of a model with ``n_layers`` blocks of ``n_heads`` heads and an MLP."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    src_names: tuple[str, ...] = field(repr=False)
    dst_names: tuple[str, ...] = field(repr=False)
    valid: torch.Tensor = field(repr=False)  # bool [n_src, n_dst]
    feeds: torch.Tensor = field(repr=False)  # bool [n_dst, n_src]: reader r is an input of writer w

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, n_layers: int, n_heads: int, n_kv_heads: int | None = None) -> Graph:
        """Build the graph of a decoder-only transformer of this shape."""
        g = n_heads if n_kv_heads is None else n_kv_heads
        if n_layers < 1 or n_heads < 1 or g < 1 or n_heads % g:
            raise InputError(
                f"invalid graph shape: n_layers={n_layers}, n_heads={n_heads}, n_kv_heads={g} "
                "(all must be >= 1 and n_kv_heads must divide n_heads)"
            )
        grouped = g != n_heads
        src = ["input"]
        for layer in range(n_layers):
            src += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
        dst: list[str] = []
        for layer in range(n_layers):
            dst += [f"a{layer}.h{h}<q>" for h in range(n_heads)]
            kv = [f"a{layer}.g{i}" for i in range(g)] if grouped else [f"a{layer}.h{h}" for h in range(n_heads)]
            dst += [f"{n}<k>" for n in kv] + [f"{n}<v>" for n in kv] + [f"m{layer}"]
        dst.append("logits")

        n_src, n_dst = len(src), len(dst)
        per_w, per_r = n_heads + 1, n_heads + 2 * g + 1
        valid = torch.zeros(n_src, n_dst, dtype=torch.bool)
        feeds = torch.zeros(n_dst, n_src, dtype=torch.bool)
        for layer in range(n_layers):
            r0, w0 = layer * per_r, 1 + layer * per_w
            valid[:w0, r0 : r0 + per_r - 1] = True  # attention readers see everything before this layer
            valid[: w0 + n_heads, r0 + per_r - 1] = True  # the MLP also sees this layer's heads
            for h in range(n_heads):
                grp = h // (n_heads // g)
                feeds[r0 + h, w0 + h] = True
                feeds[r0 + n_heads + grp, w0 + h] = True
                feeds[r0 + n_heads + g + grp, w0 + h] = True
            feeds[r0 + per_r - 1, w0 + n_heads] = True
        valid[:, n_dst - 1] = True
        return cls(n_layers, n_heads, g, tuple(src), tuple(dst), valid, feeds)

    @classmethod
    def from_model(cls, model: Any) -> Graph:
        """Build the graph of a loaded model (a TransformerBridge or anything with a TransformerLens-style cfg)."""
        cfg = model.cfg
        kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return cls.from_config(cfg.n_layers, cfg.n_heads, kv)

    # ---- sizes and indices ----------------------------------------------------------------------------------
    @property
    def n_src(self) -> int:
        return len(self.src_names)

    @property
    def n_dst(self) -> int:
        return len(self.dst_names)

    @cached_property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def readers_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def logits_index(self) -> int:
        return self.n_dst - 1

    def head_writer(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_writer(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def attn_readers(self, layer: int) -> slice:
        """Indices of layer ``layer``'s q, k and v readers (in that order)."""
        r0 = layer * self.readers_per_layer
        return slice(r0, r0 + self.readers_per_layer - 1)

    def mlp_reader(self, layer: int) -> int:
        return (layer + 1) * self.readers_per_layer - 1

    def n_upstream_attn(self, layer: int) -> int:
        """Number of writers (a prefix of the writer list) that layer ``layer``'s attention can read."""
        return 1 + layer * (self.n_heads + 1)

    def n_upstream_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    @cached_property
    def src_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.src_names)}

    @cached_property
    def dst_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.dst_names)}

    def edge_index(self, name: str) -> tuple[int, int]:
        """``"a0.h1->a1.h2<k>"`` -> (src index, dst index); raises InputError for a name not in this graph."""
        src, sep, dst = name.partition("->")
        if not sep or src not in self.src_index or dst not in self.dst_index:
            raise InputError(f"'{name}' is not an edge of this graph (expected 'SRC->DST', e.g. 'a0.h1->m1')")
        s, d = self.src_index[src], self.dst_index[dst]
        if not self.valid[s, d]:
            raise InputError(f"'{name}' is not a valid edge: '{src}' is not upstream of '{dst}'")
        return s, d

    def edge_names(self, mask: torch.Tensor | None = None) -> list[str]:
        """Names of the edges in ``mask`` (default: every valid edge), in (src, dst) index order."""
        m = self.valid if mask is None else (mask.bool() & self.valid)
        return [f"{self.src_names[s]}->{self.dst_names[d]}" for s, d in m.nonzero().tolist()]

    def check_mask(self, mask: torch.Tensor, *, batched: bool = True) -> None:
        """Raise ShapeError unless ``mask`` is ``[n_src, n_dst]`` (or ``[K, n_src, n_dst]`` if batched)."""
        from acdc.errors import ShapeError

        want = (self.n_src, self.n_dst)
        ok = tuple(mask.shape) == want or (batched and mask.dim() == 3 and tuple(mask.shape[1:]) == want)
        if not ok:
            extra = " or [K, n_src, n_dst]" if batched else ""
            raise ShapeError(
                f"mask has shape {list(mask.shape)}, this graph needs [{want[0]}, {want[1]}]{extra} "
                f"(n_src writers x n_dst readers)"
            )

    def signature(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads}

    @staticmethod
    def reader_owner(name: str) -> str:
        """The node a reader belongs to: ``a0.h1<q>`` -> ``a0.h1``; ``m2`` -> ``m2``."""
        return re.sub(r"<[qkv]>$", "", name)


# ---- dangling-edge removal ---------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _meets(a: np.ndarray, b: np.ndarray) -> bool:  # pragma: no cover - jitted
    """any(a & b) for two boolean vectors, stopping at the first common entry."""
    for i in range(a.shape[0]):
        if a[i] and b[i]:
            return True
    return False


@numba.njit(cache=True)
def _live_edges(mask: np.ndarray, feeds: np.ndarray, logits: int) -> np.ndarray:  # pragma: no cover - jitted
    """Edges whose source is reachable from ``input`` and whose destination has a path to ``logits``.

    Relies on the topological index layout: every writer feeding from reader r comes after every writer with an
    edge into r. One forward and one backward sweep give the fixed point (removing an edge of either kind never
    changes the other kind's reachability).
    """
    n_src, n_dst = mask.shape
    reach = np.zeros(n_src, dtype=np.bool_)  # writers reachable from the input
    reach[0] = True
    for r in range(n_dst):
        if _meets(mask[:, r], reach):
            reach |= feeds[r]
    alive_w = np.zeros(n_src, dtype=np.bool_)  # writers with a path to the logits
    alive_r = np.zeros(n_dst, dtype=np.bool_)
    for r in range(n_dst - 1, -1, -1):
        if r == logits or _meets(feeds[r], alive_w):
            alive_r[r] = True
            alive_w |= mask[:, r]
    out = np.zeros_like(mask)
    for u in range(n_src):
        if reach[u]:
            out[u] = mask[u] & alive_r
    return out


def prune_dangling(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Remove edges whose source is unreachable from ``input`` or whose destination cannot reach ``logits``."""
    graph.check_mask(mask, batched=False)
    m = (mask.detach().cpu() > 0) & graph.valid
    out = _live_edges(m.numpy(), graph.feeds.numpy(), graph.logits_index)
    return torch.from_numpy(out).to(mask.device)


# ---- circuits -------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Circuit:
    """A binary edge mask over a graph, with optional per-edge scores (same ``[n_src, n_dst]`` layout)."""

    graph: Graph
    mask: torch.Tensor  # bool [n_src, n_dst]
    scores: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.graph.check_mask(self.mask, batched=False)
        self.mask = (self.mask.detach().cpu() > 0) & self.graph.valid
        if self.scores is not None:
            self.graph.check_mask(self.scores, batched=False)
            self.scores = self.scores.detach().cpu().float()

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(graph, graph.valid.clone())

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(graph, torch.zeros_like(graph.valid))

    @classmethod
    def from_edges(cls, graph: Graph, names: list[str]) -> Circuit:
        mask = torch.zeros_like(graph.valid)
        for n in names:
            mask[graph.edge_index(n)] = True
        return cls(graph, mask)

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def edge_names(self) -> list[str]:
        return self.graph.edge_names(self.mask)

    def nodes(self) -> list[str]:
        """Heads and MLPs (plus ``input``/``logits``) touched by at least one edge, in graph order."""
        g = self.graph
        used_src = self.mask.any(1)
        used_dst = self.mask.any(0)
        names = {g.src_names[i] for i in used_src.nonzero().flatten().tolist()}
        for r in used_dst.nonzero().flatten().tolist():
            owners = g.feeds[r].nonzero().flatten().tolist()
            names.update(g.src_names[w] for w in owners)
            if r == g.logits_index:
                names.add("logits")
        order = {n: i for i, n in enumerate(list(g.src_names) + ["logits"])}
        return sorted(names, key=order.__getitem__)

    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every attention head in the circuit."""
        out = []
        for n in self.nodes():
            m = re.fullmatch(r"a(\d+)\.h(\d+)", n)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
        return out

    def mlps(self) -> list[int]:
        return [int(n[1:]) for n in self.nodes() if re.fullmatch(r"m\d+", n)]

    def pruned(self) -> Circuit:
        """This circuit without dangling edges (see :func:`prune_dangling`)."""
        return Circuit(self.graph, prune_dangling(self.graph, self.mask), self.scores, dict(self.meta))

    # ---- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": CIRCUIT_FORMAT,
            "graph": self.graph.signature(),
            "n_edges": self.n_edges,
            "edges": self.edge_names(),
            "meta": self.meta,
        }
        if self.scores is not None:
            valid = self.graph.valid.nonzero().tolist()
            d["scores"] = {
                f"{self.graph.src_names[s]}->{self.graph.dst_names[t]}": float(self.scores[s, t]) for s, t in valid
            }
        return d

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (atomically: an interrupted write leaves the old file or none)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: Any, graph: Graph | None = None) -> Circuit:
        if not isinstance(d, dict) or d.get("format") != CIRCUIT_FORMAT:
            raise CircuitFileError(f"not an acdc circuit (expected \"format\": \"{CIRCUIT_FORMAT}\")")
        sig: Any = d.get("graph")
        try:
            g = graph or Graph.from_config(int(sig["n_layers"]), int(sig["n_heads"]), int(sig["n_kv_heads"]))
        except (TypeError, KeyError, ValueError) as e:
            raise CircuitFileError("circuit file has no valid \"graph\" entry (n_layers, n_heads, n_kv_heads)") from e
        if sig != g.signature():
            raise CircuitFileError(f"circuit is for a graph {sig}, but the model's graph is {g.signature()}")
        edges = d.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise CircuitFileError("circuit file's \"edges\" must be a list of edge names like 'a0.h1->m1'")
        try:
            c = cls.from_edges(g, edges)
        except InputError as e:
            raise CircuitFileError(f"circuit file: {e}") from e
        scores = d.get("scores")
        if scores is not None:
            t = torch.zeros(g.n_src, g.n_dst)
            try:
                for name, v in scores.items():
                    t[g.edge_index(name)] = float(v)
            except (InputError, AttributeError, TypeError, ValueError) as e:
                raise CircuitFileError(f"circuit file's \"scores\" is malformed: {e}") from e
            c.scores = t
        c.meta = dict(d.get("meta") or {})
        return c

    @classmethod
    def load(cls, path: str | Path, graph: Graph | None = None) -> Circuit:
        return cls.from_dict(read_json(path, "circuit file"), graph)
