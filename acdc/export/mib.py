"""Scores and circuits in the submission layout of the MIB circuit-localisation track (Mueller et al. 2025).

MIB evaluates, per task/model folder, either one file of edge scores (it then keeps the top 0.1%, 0.2%, ..., 100%
of edges itself) or nine circuits, one within each budget of ``EDGE_FRACTIONS`` (it adds the full model as the
last point). A folder with one file is read as scores, a folder with several as circuits, so a folder must hold
nothing else. Layout written here::

    <out_dir>/<method>/<task>_<model>/importances.json                  (scores)
    <out_dir>/<method>/<task>_<model>/circuit_00.json .. circuit_08.json (circuits, smallest first)

Upload ``<out_dir>/<method>`` to a Hugging Face repository and submit its URL. MIB also reads torch ``.pt``
pickles of the same graph; only the JSON form is written here.

Every file is the graph JSON of EAP-IG (which MIB's evaluator loads)::

    {"cfg": {"n_layers": L, "n_heads": H, "parallel_attn_mlp": false, "d_model": D},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {...}, "m0": {...}, ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": false}, "a0.h0->m0": {...}, ...}}

Node and edge names are ours unchanged, and so are the valid edges (an MLP reads its own layer's heads, which is
``parallel_attn_mlp: false``). Two conventions differ:

- Sign. MIB scores the loss ``-logit_diff``, so a positive score means the edge supports the task, and its CPR
  ranking keeps the largest signed scores (CMD ranks by |score|). Ours estimate ``M(ablated) - M(full)``, negative
  for support, so the writer negates; pass ``higher_is_better=False`` for scores of a lower-is-better metric (kl).
- Grouped-query attention. MIB ungroups keys and values: every query head has its own k and v reader. Our shared
  reader ``a{L}.g{G}<k>`` has no counterpart, so the default refuses. With ``gqa="split"`` the group's heads stand
  in for it: a group score is divided equally among them (the linear estimate of one head's share; reading back
  sums them), and a circuit's group edge becomes the edges into those of the group's heads that are in the circuit
  (have an edge out; all of them if none has), so MIB does not count edges into heads it would prune.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from acdc.errors import CircuitFileError, InputError
from acdc.graph import Circuit, Graph
from acdc.io import atomic_write_text, read_json

if TYPE_CHECKING:
    from acdc.attribution import EdgeScores

GqaMode = Literal["refuse", "split"]

SCORES_FILE = "importances.json"
EDGE_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class MibModel:
    """Shape of one of MIB's models (query heads, key/value heads, residual width)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int


MIB_MODELS: dict[str, MibModel] = {
    "gpt2": MibModel(12, 12, 12, 768),
    "qwen2.5": MibModel(24, 14, 2, 896),
    "gemma2": MibModel(26, 8, 4, 2304),
    "llama3": MibModel(32, 32, 8, 4096),
}
MIB_TASKS = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
# the task/model pairs on the leaderboard
MIB_PAIRS: frozenset[tuple[str, str]] = frozenset(
    [("ioi", m) for m in ("gpt2", "qwen2.5", "gemma2", "llama3")]
    + [("mcqa", m) for m in ("qwen2.5", "gemma2", "llama3")]
    + [("arithmetic-addition", "llama3"), ("arithmetic-subtraction", "llama3")]
    + [("arc-easy", "gemma2"), ("arc-easy", "llama3"), ("arc-challenge", "llama3")]
)

_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_PART_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")  # no "_": MIB splits "<task>_<model>" on it


# ---- our graph as MIB sees it ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    """MIB's readers of a graph and, for each, the reader of ours it stands for and the writer it belongs to."""

    dst_names: tuple[str, ...]
    dst_of: torch.Tensor  # long [n_mib_dst]: our reader
    group: torch.Tensor  # float64 [n_mib_dst]: how many MIB readers stand for that reader of ours
    owner: torch.Tensor  # long [n_mib_dst]: the writer the reader feeds (0 for logits, unused there)
    valid: torch.Tensor  # bool [n_src, n_mib_dst]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """Our bool ``[n_src, n_dst]`` circuit as MIB's ``[n_src, n_mib_dst]``: an edge into a shared key/value
        reader goes to the group's heads that have an edge out (to all of them if none has)."""
        m = mask[:, self.dst_of] & self.valid
        if bool((self.group == 1).all()):
            return m
        alive = mask.any(1)[self.owner]
        alive_in_group = torch.zeros(mask.shape[1], dtype=torch.float64).index_add_(0, self.dst_of, alive.double())
        keep = (self.group == 1) | alive | (alive_in_group[self.dst_of] == 0)
        return m & keep


def _view(graph: Graph, gqa: GqaMode) -> _View:
    if gqa not in ("refuse", "split"):
        raise InputError(f"gqa must be 'refuse' or 'split', got {gqa!r}")
    grouped = graph.n_kv_heads != graph.n_heads
    if grouped and gqa != "split":
        raise InputError(
            f"MIB gives every query head its own key/value reader, but this graph's {graph.n_heads} heads share "
            f"{graph.n_kv_heads} key/value heads; pass gqa='split' to give each head its group's edges"
        )
    per_group = graph.n_heads // graph.n_kv_heads
    names: list[str] = []
    ours: list[str] = []
    owners: list[str] = []
    for layer in range(graph.n_layers):
        for letter in "qkv":
            for h in range(graph.n_heads):
                names.append(f"a{layer}.h{h}<{letter}>")
                shared = grouped and letter != "q"
                ours.append(f"a{layer}.g{h // per_group}<{letter}>" if shared else names[-1])
                owners.append(f"a{layer}.h{h}")
        names.append(f"m{layer}")
        ours.append(f"m{layer}")
        owners.append(f"m{layer}")
    names.append("logits")
    ours.append("logits")
    owners.append("input")
    dst_of = torch.tensor([graph.dst_index[n] for n in ours], dtype=torch.long)
    group = torch.bincount(dst_of, minlength=graph.n_dst).double()[dst_of]
    owner = torch.tensor([graph.src_index[n] for n in owners], dtype=torch.long)
    return _View(tuple(names), dst_of, group, owner, graph.valid[:, dst_of])


def mib_edge_count(graph: Graph, *, gqa: GqaMode = "refuse") -> int:
    """Number of edges MIB counts for ``graph`` (with ``gqa="split"``, keys and values counted per query head)."""
    return _view(graph, gqa).n_edges


# ---- writing --------------------------------------------------------------------------------------------------------
def _nodes_in_graph(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """EAP-IG's node rule: a writer is in the circuit if it has an edge out and (unless ``input``) an edge in."""
    out = mask.any(1)
    fed = (mask.any(0).double() @ graph.feeds.double()) > 0
    fed[0] = True
    return out & fed


def _document(graph: Graph, view: _View, d_model: int, mask: torch.Tensor, mib_scores: torch.Tensor) -> dict[str, Any]:
    src, dst = view.valid.nonzero(as_tuple=True)
    in_graph = view.expand(mask)[src, dst].tolist()
    scores = mib_scores[src, dst].tolist()
    edges = {
        f"{graph.src_names[s]}->{view.dst_names[d]}": {"score": sc, "in_graph": m}
        for s, d, sc, m in zip(src.tolist(), dst.tolist(), scores, in_graph, strict=True)
    }
    nodes: dict[str, dict[str, bool]] = {
        n: {"in_graph": f} for n, f in zip(graph.src_names, _nodes_in_graph(graph, mask).tolist(), strict=True)
    }
    nodes["logits"] = {"in_graph": True}  # EAP-IG's logits node is always in the graph
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": d_model}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def _check_scores(graph: Graph, scores: torch.Tensor) -> None:
    graph.check_mask(scores, batched=False)
    bad = graph.valid & ~torch.isfinite(scores.detach().cpu())
    if bad.any():
        s, d = bad.nonzero()[0].tolist()
        raise InputError(f"score of edge {graph.src_names[s]}->{graph.dst_names[d]} is {scores[s, d].item()}")


def _to_mib_scores(view: _View, scores: torch.Tensor, higher_is_better: bool) -> torch.Tensor:
    """Our ``[n_src, n_dst]`` scores as MIB's ``[n_src, n_mib_dst]``: sign flipped, group scores shared out."""
    out = scores.detach().cpu().double()[:, view.dst_of] / view.group
    return -out if higher_is_better else out


def _edge_scores_tensor(scores: torch.Tensor | EdgeScores) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores
    if scores.level != "edge":
        raise InputError(f"MIB export takes edge scores, got {scores.level}-level scores")
    return scores.scores


def _check_names(method: str, task: str, model: str, strict: bool) -> str:
    """Validate the names and return the task as MIB spells it in folder names."""
    if not _METHOD_NAME.fullmatch(method):
        raise InputError(f"method {method!r} is not usable as a folder name (letters, digits, '._+-')")
    task = task.lower().replace("_", "-")
    for kind, name in (("task", task), ("model", model)):
        if not _PART_NAME.fullmatch(name):
            raise InputError(f"{kind} {name!r} must be lowercase letters, digits, '.' or '-' (MIB splits on '_')")
    if strict:
        if model not in MIB_MODELS:
            raise InputError(f"MIB has no model {model!r} (one of {', '.join(MIB_MODELS)}; strict=False for others)")
        if task not in MIB_TASKS:
            raise InputError(f"MIB has no task {task!r} (one of {', '.join(MIB_TASKS)}; strict=False for others)")
        if (task, model) not in MIB_PAIRS:
            pairs = ", ".join(sorted(f"{t}_{m}" for t, m in MIB_PAIRS))
            raise InputError(f"MIB does not evaluate {task} on {model} (pairs: {pairs})")
    return task


def _check_model_shape(graph: Graph, model: str, d_model: int | None, strict: bool) -> int:
    known = MIB_MODELS.get(model)
    if strict and known is not None:
        want = (known.n_layers, known.n_heads, known.n_kv_heads)
        have = (graph.n_layers, graph.n_heads, graph.n_kv_heads)
        if have != want:
            raise InputError(
                f"graph has {have[0]} layers x {have[1]} heads ({have[2]} key/value heads) but MIB's {model} has "
                f"{want[0]} x {want[1]} ({want[2]})"
            )
        if d_model is not None and d_model != known.d_model:
            raise InputError(f"d_model={d_model}, but MIB's {model} has d_model={known.d_model}")
    if d_model is None:
        if known is None:
            raise InputError(f"pass d_model for model {model!r} (MIB's loader needs it in the file's cfg)")
        d_model = known.d_model
    if d_model < 1:
        raise InputError(f"d_model must be >= 1, got {d_model}")
    return d_model


def export_mib(
    out_dir: str | Path,
    graph: Graph,
    *,
    method: str,
    task: str,
    model: str,
    scores: torch.Tensor | EdgeScores | None = None,
    circuits: Sequence[Circuit] = (),
    d_model: int | None = None,
    gqa: GqaMode = "refuse",
    higher_is_better: bool = True,
    strict: bool = True,
) -> list[Path]:
    """Write a MIB submission folder for one task and model; returns the files written.

    With ``circuits``: one file per circuit, smallest first (``strict`` needs nine, the i-th within
    ``EDGE_FRACTIONS[i]`` of MIB's edge count); each edge's score comes from the circuit, else from ``scores``,
    else 0. Without: ``scores`` (``[n_src, n_dst]`` or edge-level ``EdgeScores``) go to ``importances.json``.
    ``strict`` checks the task, model and graph shape against MIB's. Everything is validated before anything is
    written, and each file is written atomically.
    """
    task = _check_names(method, task, model, strict)
    d_model = _check_model_shape(graph, model, d_model, strict)
    view = _view(graph, gqa)
    folder = Path(out_dir) / method / f"{task}_{model}"
    zero = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    base = zero if scores is None else _edge_scores_tensor(scores)

    jobs: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (file name, circuit mask, our scores)
    if circuits:
        sized = []
        for i, c in enumerate(circuits):
            if c.graph.signature() != graph.signature():
                raise InputError(f"circuit {i} is for a graph {c.graph.signature()}, not {graph.signature()}")
            sized.append((int(view.expand(c.mask).sum()), i, c))
        sized.sort(key=lambda t: (t[0], t[1]))
        if strict:
            if len(sized) != len(EDGE_FRACTIONS):
                raise InputError(f"MIB takes {len(EDGE_FRACTIONS)} circuits per task and model, got {len(sized)}")
            for (n, i, _), frac in zip(sized, EDGE_FRACTIONS, strict=True):
                limit = int(frac * view.n_edges)
                if n > limit:
                    raise InputError(
                        f"MIB needs a circuit within {frac:.1%} of its {view.n_edges} edges ({limit}); the "
                        f"smallest circuit left (circuit {i}) has {n}"
                    )
        for k, (_, _, c) in enumerate(sized):
            jobs.append((f"circuit_{k:02d}.json", c.mask, c.scores if c.scores is not None else base))
    elif scores is not None:
        jobs.append((SCORES_FILE, torch.zeros_like(graph.valid), base))
    else:
        raise InputError("nothing to export: pass scores or circuits")
    for _, _, s in jobs:
        _check_scores(graph, s)

    # MIB reads every .json/.pt in the folder, so files from an earlier export would change what it evaluates
    names = {name for name, _, _ in jobs}
    if folder.is_dir():
        stale = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".pt") and p.name not in names)
        if stale:
            raise InputError(f"{folder} already holds {', '.join(stale)}; MIB would read them too: remove them first")
    # one document at a time: for the largest models each holds over a million edges
    written = []
    for name, mask, s in jobs:
        doc = _document(graph, view, d_model, mask, _to_mib_scores(view, s, higher_is_better))
        written.append(atomic_write_text(folder / name, json.dumps(doc)))
    return written


# ---- reading --------------------------------------------------------------------------------------------------------
def _fail(path: str, what: str) -> CircuitFileError:
    return CircuitFileError(f"{path}: {what}")


def mib_from_dict(
    d: Any, graph: Graph, *, gqa: GqaMode = "refuse", higher_is_better: bool = True, where: str = "MIB file"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a parsed MIB graph JSON against ``graph``; return (scores float64, mask bool), both ``[n_src,
    n_dst]`` and in our conventions (see the module docstring). Raises CircuitFileError saying what is wrong."""
    view = _view(graph, gqa)
    if not isinstance(d, dict) or not all(isinstance(d.get(k), dict) for k in ("cfg", "nodes", "edges")):
        raise _fail(where, 'not a MIB graph (expected a JSON object with "cfg", "nodes" and "edges" objects)')
    cfg = d["cfg"]
    if (cfg.get("n_layers"), cfg.get("n_heads")) != (graph.n_layers, graph.n_heads):
        raise _fail(
            where,
            f"cfg is n_layers={cfg.get('n_layers')}, n_heads={cfg.get('n_heads')}; the graph has "
            f"{graph.n_layers} x {graph.n_heads}",
        )
    if cfg.get("parallel_attn_mlp") is not False:
        raise _fail(where, f"cfg.parallel_attn_mlp is {cfg.get('parallel_attn_mlp')!r}; only false is supported")
    if not isinstance(cfg.get("d_model"), int):
        raise _fail(where, "cfg.d_model is missing or not an integer")

    want_nodes = set(graph.src_names) | {"logits"}
    nodes = d["nodes"]
    if set(nodes) != want_nodes:
        odd = sorted(set(nodes) ^ want_nodes)
        raise _fail(where, f"node names do not match the graph ({len(odd)} differ, e.g. {odd[0]!r})")
    for name, v in nodes.items():
        if not isinstance(v, dict) or not isinstance(v.get("in_graph"), bool):
            raise _fail(where, f'node {name!r} needs a boolean "in_graph"')

    edges = d["edges"]
    if len(edges) != view.n_edges:
        raise _fail(where, f"has {len(edges)} edges; MIB's graph of this model has {view.n_edges}")
    mib_dst = {n: i for i, n in enumerate(view.dst_names)}
    valid = view.valid.tolist()
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    flags: list[bool] = []
    for name, v in edges.items():
        src, sep, dst = name.partition("->")
        s, t = graph.src_index.get(src), mib_dst.get(dst)
        if not sep or s is None or t is None or not valid[s][t]:
            raise _fail(where, f"{name!r} is not an edge of MIB's graph of this model")
        sc = v.get("score") if isinstance(v, dict) else None
        if not isinstance(sc, (int, float)) or isinstance(sc, bool) or not math.isfinite(sc):
            raise _fail(where, f'edge {name!r} needs a finite number "score", got {sc!r}')
        if not isinstance(v.get("in_graph"), bool):
            raise _fail(where, f'edge {name!r} needs a boolean "in_graph"')
        rows.append(s)
        cols.append(t)
        values.append(float(sc))
        flags.append(v["in_graph"])
    at = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
    scores = torch.zeros(graph.n_src, len(view.dst_names), dtype=torch.float64)
    scores[at] = torch.tensor(values, dtype=torch.float64)
    mask = torch.zeros(graph.n_src, len(view.dst_names), dtype=torch.bool)
    mask[at] = torch.tensor(flags, dtype=torch.bool)
    return _from_mib(graph, view, scores, mask, higher_is_better, where)


def _from_mib(
    graph: Graph, view: _View, scores: torch.Tensor, mask: torch.Tensor, higher_is_better: bool, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold MIB's per-head key/value readers back onto ours (identity without grouped-query attention)."""
    size = torch.bincount(view.dst_of, minlength=graph.n_dst).double()
    count = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64).index_add_(1, view.dst_of, mask.double())
    out_mask = (count > 0) & graph.valid
    differ = (view.expand(out_mask) != mask) & view.valid
    if differ.any():
        s, t = differ.nonzero()[0].tolist()
        raise _fail(
            where,
            f"edge {graph.src_names[s]}->{view.dst_names[t]} is {'in' if mask[s, t] else 'not in'} the circuit "
            "unlike the same edge into other heads of its key/value group; acdc's grouped graph cannot represent it",
        )
    idx = view.dst_of.expand(graph.n_src, -1)
    total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64).index_add_(1, view.dst_of, scores)
    hi = torch.full_like(total, -math.inf).scatter_reduce(1, idx, scores, "amax")
    lo = torch.full_like(total, math.inf).scatter_reduce(1, idx, scores, "amin")
    # equal shares (what the writer produces) are multiplied back, which is exact for power-of-two groups
    ours = torch.where(hi == lo, hi * size, total)
    ours = torch.where(graph.valid, -ours if higher_is_better else ours, torch.zeros_like(ours))
    return ours, out_mask


def load_mib(
    path: str | Path, graph: Graph, *, gqa: GqaMode = "refuse", higher_is_better: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one MIB graph JSON (``importances.json`` or a circuit file) onto ``graph``: (scores, mask)."""
    return mib_from_dict(read_json(path, "MIB file"), graph, gqa=gqa, higher_is_better=higher_is_better,
                         where=os.fspath(path))
