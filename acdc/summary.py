"""The typed summary of a run (``summary.json``, format ``acdc-run/1``): written by ``acdc run``, read by the
report, the command line's table and anyone scripting over run folders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RUN_FORMAT = "acdc-run/1"


@dataclass
class ChosenCircuit:
    """One method's chosen circuit: the smallest on its curve reaching the level on train, with its test numbers."""

    method: str
    edges: int
    nodes: int
    f: float | None
    f_ci: list[float] | None
    kl: float | None
    kl_ci: list[float] | None
    how: str
    label: str
    json: str
    top_edges: list[list[Any]]
    images: dict[str, str] = field(default_factory=dict)  # "svg"/"png" -> path inside the run folder

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("images"))
        return d


@dataclass
class RunSummary:
    """Everything ``summary.json`` holds; :meth:`as_dict` is the file's content (key order kept)."""

    task: str
    task_description: str
    model: str
    graph: dict[str, int]
    data: dict[str, Any]
    metric: str
    ablation: str
    seed: int
    bootstrap: int
    level: float
    created: str
    versions: dict[str, str]
    command: str
    timings: dict[str, Any]
    baseline: dict[str, float]
    pareto: dict[str, Any]
    circuits: list[ChosenCircuit]
    headline: str | None
    images: dict[str, str]
    notes: list[str]
    folder: str = ""  # where it was written (not part of the file)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": RUN_FORMAT}
        for k, v in self.__dict__.items():
            if k != "folder":
                d[k] = [c.as_dict() for c in v] if k == "circuits" else v
        return d


def summary_table(s: RunSummary) -> list[str]:
    """The per-method table ``acdc run`` prints: chosen circuit, its test f with interval, CPR, CMD, edges needed."""
    by = {row["method"]: row for row in s.pareto["summary"]}
    lines = [f"{'method':<14}{'edges':>6}  {'f (test) [95% CI]':<24}{'CPR':>7}{'CMD':>7}   edges for f>=0.8/0.9/0.99"
             f"{'time':>9}"]
    for c in s.circuits:
        row = by.get(c.method, {})
        ci = f"[{c.f_ci[0]:.3f}, {c.f_ci[1]:.3f}]" if c.f_ci else ""
        need = "/".join("-" if v is None else str(v) for v in row.get("edges_for", {}).values())
        cpr = "n/a" if row.get("cpr") is None else f"{row['cpr']:.3f}"
        cmd = "n/a" if row.get("cmd") is None else f"{row['cmd']:.3f}"
        t = s.timings["methods"].get(c.method, 0.0)
        f = "n/a" if c.f is None else f"{c.f:.3f}"
        lines.append(f"{c.method:<14}{c.edges:>6}  {f:<5} {ci:<18}{cpr:>7}{cmd:>7}   {need:<24}{t:>8.1f}s")
    return lines
