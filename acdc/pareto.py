"""Curves of circuit size against loss recovered, their pareto frontier and summary numbers.

A *curve* is one method's circuits at many sizes: from a score ranking (one circuit per size on a grid, chosen by a
selector) or a list of separately found circuits (ACDC thresholds, hybrid targets). Every circuit is evaluated
exactly with the batched masked forward (``batch`` circuits per pass) on held-out prompts; the normalised
faithfulness

    f(C) = (M(C) - M(empty)) / (M(full) - M(empty))

(prompt-averaged metric values first, then the ratio) and KL(full || C) come with 95% bootstrap intervals (all
computed by acdc.evaluate, the one evaluator).

Summaries (Mueller et al. 2025, MIB): CPR = area under f over the edge fraction and CMD = area under |1 - f|, both by
the trapezoid rule on MIB's grid of fractions (0.001 ... 1, linear x, circuits of ``int(fraction * edges)`` edges);
and the fewest edges at which f reaches 0.8, 0.9 and 0.99. The frontier is the set of points, over all methods,
not dominated by another point with no more edges and no lower f (and strictly better in one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from acdc.errors import InputError
from acdc.evaluate import Evaluation, baseline_warning, evaluate_masks, faithfulness_ci
from acdc.graph import Circuit, Graph
from acdc.types import TaskData

PARETO_FORMAT = "acdc-pareto/1"
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
RECOVERY_LEVELS: tuple[float, ...] = (0.8, 0.9, 0.99)


# ---- grids ---------------------------------------------------------------------------------------------------------
def mib_sizes(n_edges: int) -> list[int]:
    """Circuit sizes of MIB's grid: ``int(fraction * n_edges)`` for each fraction in :data:`MIB_FRACTIONS`."""
    return [int(p * n_edges) for p in MIB_FRACTIONS]


def log_sizes(n_edges: int, per_decade: int = 6) -> list[int]:
    """Edge counts from 1 to ``n_edges`` spaced evenly in log (``per_decade`` per factor of ten), deduplicated."""
    if n_edges < 1:
        return []
    k = max(2, int(math.ceil(per_decade * math.log10(max(n_edges, 2)))) + 1)
    return sorted({int(round(x)) for x in np.logspace(0, math.log10(n_edges), k)} | {n_edges})


def size_grid(n_edges: int, per_decade: int = 6, mib: bool = True) -> list[int]:
    """The sweep's sizes: the log grid, plus MIB's grid when ``mib`` (sizes may include 0: the empty circuit)."""
    return sorted(set(log_sizes(n_edges, per_decade)) | (set(mib_sizes(n_edges)) if mib else set()))


# ---- summaries -------------------------------------------------------------------------------------------------------
def trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoid-rule area under ``y(x)`` for increasing ``x``."""
    if len(x) != len(y) or len(x) < 2:
        raise InputError("an area needs at least two points with matching x and y")
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.any(np.diff(xs) < 0):
        raise InputError("x must be increasing")
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def cpr_cmd(fractions: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """MIB's CPR (area under f) and CMD (area under |1 - f|) over the edge fraction, linear x."""
    return trapezoid(fractions, f), trapezoid(fractions, [abs(1 - v) for v in f])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(edges, f)`` points (fewer edges and higher f are better), by edges.

    A point is dominated when another has edges <= and f >= with at least one strict; equal points are kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    out: list[int] = []
    best_before = -math.inf  # highest f among points with strictly fewer edges
    i = 0
    while i < len(order):
        j = i
        e = points[order[i]][0]
        while j < len(order) and points[order[j]][0] == e:
            j += 1
        top = points[order[i]][1]  # the best f at this edge count (sorted first)
        if top > best_before:
            out += [k for k in order[i:j] if points[k][1] == top]
        best_before = max(best_before, top)
        i = j
    return out


def edges_to_reach(points: Sequence[dict[str, Any]], level: float) -> int | None:
    """Fewest edges among the points whose f is at least ``level`` (None: not reached)."""
    ok = [int(p["edges"]) for p in points if p["f"] is not None and p["f"] >= level]
    return min(ok) if ok else None


# ---- the sweep -------------------------------------------------------------------------------------------------------
@dataclass
class Curve:
    """One method's circuits to evaluate: ``kind`` ``scores`` (circuits at grid sizes from a ranking) or
    ``circuits`` (separately found circuits); ``labels`` name each circuit (e.g. ``n=12``, ``tau=0.01``);
    ``requested`` is the size asked of the selector (None for found circuits)."""

    method: str
    kind: str
    circuits: list[Circuit]
    labels: list[str]
    requested: list[int | None]


def curve_from_scores(graph: Graph, method: str, scores: torch.Tensor, sizes: Sequence[int], *,
                      selector: str = "greedy", absolute: bool = True) -> Curve:
    """Circuits of ``sizes`` edges chosen from ``scores`` by ``selector`` (``greedy`` or ``topn``), dangling edges
    removed (so a circuit can be smaller than asked; its point records the size after pruning)."""
    from acdc.selection import ordered_circuits

    circuits = ordered_circuits(graph, scores, sizes, selector=selector, absolute=absolute)
    return Curve(method, "scores", circuits, [f"n={n}" for n in sizes], list(sizes))


def curve_from_circuits(method: str, circuits: Sequence[Circuit], labels: Sequence[str] | None = None) -> Curve:
    labels = list(labels) if labels is not None else [str(c.meta.get("label", i)) for i, c in enumerate(circuits)]
    return Curve(method, "circuits", list(circuits), labels, [None] * len(circuits))


def sweep(
    model: Any,
    graph: Graph,
    data: TaskData,
    curves: Sequence[Curve],
    *,
    ablation: str = "patch",
    batch: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    evaluator: Callable[..., Evaluation] | None = None,
) -> dict[str, Any]:
    """Evaluate every circuit of every curve exactly on ``data`` (held-out prompts) and summarise.

    ``evaluator``: what evaluates the masks (default :func:`evaluate_masks`; :func:`acdc.distributed.
    evaluate_distributed` shares the prompts among torchrun processes).

    Identical circuits (across sizes and methods) are evaluated once. Returns the JSON-able pareto document
    (format ``acdc-pareto/1``: curves with points ``edges, requested, fraction, f, f_ci, kl, kl_ci, label``, the
    frontier over all methods, and per-method CPR, CMD and edges needed for f >= 0.8/0.9/0.99).
    """
    from tqdm.auto import tqdm

    if not curves:
        raise InputError("nothing to sweep: no curves given")
    unique: dict[bytes, int] = {}
    masks: list[torch.Tensor] = []
    where: list[list[int]] = []
    for cv in curves:
        idx = []
        for c in cv.circuits:
            key = np.packbits(c.mask.numpy()).tobytes()
            if key not in unique:
                unique[key] = len(masks)
                masks.append(c.mask)
            idx.append(unique[key])
        where.append(idx)
    bar = tqdm(total=len(masks) + 2, desc="pareto sweep", unit="circuit", disable=not progress, leave=False)
    ev = (evaluator or evaluate_masks)(model, graph, data, masks, ablation=ablation, batch=batch, progress=bar.update)
    bar.close()
    stats = faithfulness_ci(ev, n_boot=n_boot, seed=seed)
    total = graph.n_edges

    def num(x: torch.Tensor) -> float | None:
        v = float(x)
        return None if math.isnan(v) else v

    out_curves = []
    for cv, idx in zip(curves, where, strict=True):
        pts = []
        for c, label, req, k in zip(cv.circuits, cv.labels, cv.requested, idx, strict=True):
            lo, hi = num(stats["f_lo"][k]), num(stats["f_hi"][k])
            klo, khi = num(stats["kl_lo"][k]), num(stats["kl_hi"][k])
            pts.append({"edges": c.n_edges, "requested": req, "fraction": c.n_edges / total,
                        "f": num(stats["f"][k]), "f_ci": None if lo is None or hi is None else [lo, hi],
                        "kl": num(stats["kl"][k]), "kl_ci": None if klo is None or khi is None else [klo, khi],
                        "label": label})
        out_curves.append({"method": cv.method, "kind": cv.kind, "points": pts})
    doc: dict[str, Any] = {"format": PARETO_FORMAT, **(info or {}), "split": data.info.get("split"),
                           "n_prompts": len(data), "n_edges_total": total, "metric": data.description,
                           "ablation": ablation, "bootstrap": n_boot,
                           "baseline": {"full": float(ev.full.mean()), "empty": float(ev.empty.mean())},
                           "curves": out_curves}
    warning = baseline_warning(ev, data.metric)
    if warning:
        doc["baseline_warning"] = warning
    doc["frontier"] = frontier(out_curves)
    doc["summary"] = [summarise(cv, total) for cv in out_curves]
    return doc


def frontier(curves: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pareto frontier over every point of every curve (points with f undefined are skipped); a point several
    methods share (e.g. the empty circuit) is one entry naming them all (``"eap, eap-ig"``)."""
    flat = [(cv["method"], p) for cv in curves for p in cv["points"] if p["f"] is not None]
    keep = pareto_front([(p["edges"], p["f"]) for _, p in flat])
    merged: dict[tuple[int, float], dict[str, Any]] = {}
    for i in keep:
        m, p = flat[i]
        entry = merged.setdefault((p["edges"], p["f"]), {"method": m, "edges": p["edges"], "f": p["f"],
                                                         "label": p["label"]})
        if m not in entry["method"].split(", "):
            entry["method"] += f", {m}"
    return list(merged.values())


def summarise(curve: dict[str, Any], n_edges: int) -> dict[str, Any]:
    """CPR / CMD on MIB's grid (score curves that contain every MIB size; else null) and edges for each level."""
    pts = curve["points"]
    cpr = cmd = None
    if curve["kind"] == "scores":
        by_req = {p["requested"]: p for p in pts}
        sizes = mib_sizes(n_edges)
        if all(s in by_req and by_req[s]["f"] is not None for s in sizes):
            cpr, cmd = cpr_cmd(MIB_FRACTIONS, [by_req[s]["f"] for s in sizes])
    return {"method": curve["method"], "kind": curve["kind"], "cpr": cpr, "cmd": cmd,
            "edges_for": {f"{lv:g}": edges_to_reach(pts, lv) for lv in RECOVERY_LEVELS}}
