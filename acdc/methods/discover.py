"""One circuit from any registered method: what ``acdc discover`` and :func:`acdc.discover` do."""

from __future__ import annotations

import time
from typing import Any

from acdc.errors import BudgetSpent, InputError
from acdc.graph import Circuit, Graph
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings, default_size
from acdc.methods.registry import get_method
from acdc.selection import select
from acdc.types import TaskData


def check_controls(method: str, *, threshold: float | None = None, edges: int | None = None) -> Method:
    """The method, or a one-line error when it is given a control it does not take (call before loading a model)."""
    m = get_method(method)
    takes_threshold = m.kind == "ranking" and not m.name.startswith("edge-pruning") or "thresholds" in m.controls
    takes_size = m.kind == "ranking"
    if threshold is not None and not takes_threshold:
        raise InputError(f"{method} is not controlled by a threshold (--threshold); use "
                         + ("its size (--edges)" if takes_size else "the target faithfulness"))
    if edges is not None and not takes_size:
        raise InputError(f"{method} is not controlled by a size (--edges); use "
                         + ("its threshold (--threshold)" if takes_threshold else "the target faithfulness"))
    return m


def find_circuit(model: Any, graph: Graph, data: TaskData, method: str = "hybrid", *, threshold: float | None = None,
                 edges: int | None = None, target: float = 0.9, selector: str = "greedy", ablation: str = "patch",
                 seed: int = 0, steps: int | None = None, progress: bool = True, distributed: bool = False,
                 budget_s: float | None = None, **options: Any) -> tuple[Circuit, Outcome]:
    """Find a circuit with ``method``; returns the circuit and the method's whole outcome (scores, cost, notes).

    - circuit methods (``acdc``, ``hybrid``) and edge pruning return the circuit they found: ``threshold`` is ACDC's
      (default 0.01), ``target`` the hybrid's faithfulness, ``edges`` edge pruning's size (default 5% of the graph,
      at least 20);
    - rankings (``eap``, ``eap-ig``, ...) give a circuit chosen from their scores by ``selector`` (greedy / topn /
      ilp; a method with a selector of its own, e.g. ``eap-ig-ilp``, uses it) with ``edges`` edges, or every edge
      with |score| >= ``threshold``.
    ``steps``: integrated-gradient steps of rankings and of the hybrid's ranking (5), or training steps of edge
    pruning (300). ``options`` go to the method's search function (e.g. ``fast``, ``checkpoint``, ``refine``).
    ``distributed``: share the prompts among the torchrun processes (methods marked distributed; see
    acdc.distributed). ``budget_s``: seconds the search may take (acdc, edge pruning, the hybrid); an exact search
    it stops before the end raises :class:`~acdc.errors.BudgetSpent` saying how far it got.
    """
    m = check_controls(method, threshold=threshold, edges=edges)
    if distributed and not m.distributed:
        from acdc.methods.registry import method_names

        raise InputError(f"{method} cannot share its prompts among processes; these can: "
                         f"{', '.join(method_names(distributed=True))}")
    settings = Settings(ablation=ablation, seed=seed, ig_steps=steps or 5, train_steps=steps or 300, edges=edges,
                        thresholds=None if threshold is None or m.kind == "ranking" else (threshold,),
                        targets=(target,), budget_s=budget_s, options=options)
    t0 = time.perf_counter()
    out = m.run(Context(model, graph, data, progress=progress, distributed=distributed), settings)
    if not out.circuits and m.kind == "circuits":
        raise BudgetSpent(out.notes[-1] if out.notes else f"{method} returned no circuit")
    if out.circuits:
        circuit = out.circuits[0]
    else:
        assert out.scores is not None  # a ranking method always has scores
        if threshold is not None:
            circuit = select(graph, out.scores.scores, "threshold", tau=threshold)
        else:
            how = m.selector if m.selector != "greedy" else selector  # a method's own selector (e.g. ilp) wins
            circuit = select(graph, out.scores.scores, how, n=edges or default_size(graph))
        out.cost.seconds = time.perf_counter() - t0
        circuit.meta.update({"method": method, **out.cost.as_dict()})
    return circuit, out


def discover(model: Any, graph: Graph, data: TaskData, method: str = "hybrid", **kw: Any) -> tuple[Circuit, SearchCost]:
    """Find a circuit with any registered method; returns the circuit (scores attached where the method has them)
    and its cost. Arguments as :func:`find_circuit`."""
    circuit, out = find_circuit(model, graph, data, method, **kw)
    return circuit, out.cost
