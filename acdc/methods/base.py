"""The record every search method is registered with, what it is told, and what it returns.

A method is a way of choosing edge masks (see the package README). It is one :class:`Method` record: its name, its
kind (``ranking``: a score for every edge, from which circuits of any size are chosen; ``circuits``: one or more
circuits found directly), the function that runs it, and a cost model. ``acdc run``, ``acdc discover`` and
``acdc scores`` loop over the registry (acdc.methods.registry); nothing else lists method names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from acdc.attribution import EdgeScores
from acdc.graph import Circuit, Graph
from acdc.types import TaskData

Kind = Literal["ranking", "circuits"]


def default_size(graph: Graph) -> int:
    """The circuit size a method uses when none is asked for: 5% of the edges, at least 20 (at most all)."""
    return min(graph.n_edges, max(20, round(0.05 * graph.n_edges)))


@dataclass
class SearchCost:
    """What a search cost: evaluation calls (masked forwards, or calls of the incremental engine), masks
    evaluated, full-model-equivalent forward passes (a full masked forward of K masks counts K, a backward 2; the
    incremental engine counts its FLOPs over those of one plain forward), and wall time."""

    passes: int = 0
    masks: int = 0
    forward_equivalents: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, other: SearchCost) -> None:
        """Count ``other``'s cost into this one (several searches of one method)."""
        self.passes += other.passes
        self.masks += other.masks
        self.forward_equivalents += other.forward_equivalents
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"passes": self.passes, "masks": self.masks, "forward_equivalents": round(self.forward_equivalents, 2),
                "seconds": round(self.seconds, 3), **self.extra}


@dataclass(frozen=True)
class Settings:
    """What a method may be told. Each method reads the fields its record documents and ignores the others, so one
    ``Settings`` serves every method of a job."""

    ablation: str = "patch"
    seed: int = 0
    ig_steps: int = 5  # interpolation steps of integrated-gradient rankings (and the hybrid's ranking)
    train_steps: int = 300  # optimisation steps of learned masks
    edges: int | None = None  # the size to train or select (None: :func:`default_size`)
    thresholds: tuple[float, ...] | None = None  # exact search: one circuit per threshold (None: the method's)
    targets: tuple[float, ...] | None = None  # target faithfulness: one circuit per target (None: the method's)
    budget_s: float | None = None  # seconds a search may take; what does not fit is dropped with a note
    options: Mapping[str, Any] = field(default_factory=dict)  # method-specific keyword arguments


@dataclass
class Context:
    """What a method runs on: the model, its graph, the (train) prompts, and the rankings already computed in this
    job (by attribution name), which later methods may reuse instead of scoring again."""

    model: Any
    graph: Graph
    data: TaskData
    progress: bool = True
    distributed: bool = False
    rankings: dict[str, EdgeScores] = field(default_factory=dict)


@dataclass
class Outcome:
    """A method's result: ``scores`` ranks every edge (rankings; edge pruning's keep probability), ``circuits``
    are the circuits it found (each with ``meta["label"]``), ``notes`` lines for the report."""

    scores: EdgeScores | None = None
    circuits: list[Circuit] = field(default_factory=list)
    cost: SearchCost = field(default_factory=SearchCost)
    notes: list[str] = field(default_factory=list)

    def record(self, circuit: Circuit, cost: SearchCost, *, label: str) -> None:
        """Add one found circuit (labelled for its curve point) and count its search's cost."""
        circuit.meta["label"] = label
        self.circuits.append(circuit)
        self.cost.add(cost)


@dataclass(frozen=True)
class Method:
    """One search method.

    ``kind``: ``ranking`` (a curve of circuits of every size comes from ``scores``) or ``circuits`` (the curve is the
    found circuits). ``ranking_sense``: ``effect`` for scores in metric units (negative = supports the task, ranked by
    |score|), ``keep`` for scores where larger means keep. ``cost(graph, settings)`` estimates full-model forward
    equivalents before running (a backward counts two). ``in_job``: part of ``acdc run``'s default set.
    ``distributed``: can share its prompts among torchrun processes. ``scores_only``: an attribution method that
    ``acdc scores`` offers (edge and node level). ``selector``: how a ranking's circuit of a size is chosen
    (``greedy``, or ``ilp``: the best connected circuit of exactly that size).
    """

    name: str
    kind: Kind
    summary: str
    run: Callable[[Context, Settings], Outcome]
    cost: Callable[[Graph, Settings], float]
    ranking_sense: Literal["effect", "keep"] = "effect"
    in_job: bool = False
    distributed: bool = False
    attribution: bool = False
    controls: tuple[str, ...] = ()  # the Settings fields it reads, for help texts and validation
    selector: str = "greedy"  # rankings: how a circuit of a size is chosen from the scores (acdc.selection)

