"""A job's time limit: the train sweep's search for the level (against brute force on synthetic curves), the plan
that shares the time out, and `acdc run --time-limit` end to end on a toy model."""

from __future__ import annotations

import json
import random
import time
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from acdc.evaluate import Evaluation
from acdc.job import GRIDS, JobOptions, plan_time, prepare, sweep_for_level
from acdc.methods import get_method

BLOCK = 64  # every mask has one block of edges per curve (all masks of a graph have one shape)


def _curve(fs: list[float], block: int) -> SimpleNamespace:
    """A curve of circuits with 1..n edges in its own block of the mask, whose f is ``fs``."""
    circuits = []
    for n in range(1, len(fs) + 1):
        mask = torch.zeros(16 * BLOCK, dtype=torch.bool)
        mask[block * BLOCK : block * BLOCK + n] = True
        circuits.append(SimpleNamespace(mask=mask, n_edges=n))
    return SimpleNamespace(method=f"m{block}", kind="scores", circuits=circuits,
                           labels=[f"n={n}" for n in range(1, len(fs) + 1)], requested=list(range(1, len(fs) + 1)))


@pytest.fixture()
def fake_eval(monkeypatch):
    """evaluate_masks replaced by a lookup: f of a mask = the table of the curve of its length, at its edge count."""
    tables: dict[int, list[float]] = {}  # block -> f of its curve
    calls: list[int] = []

    def evaluate(model, graph, data, masks, **kw):
        calls.append(len(masks))
        f = [tables[int(m.nonzero()[0]) // BLOCK][int(m.sum()) - 1] for m in masks]
        metric = torch.tensor(f, dtype=torch.float64).unsqueeze(1)
        return Evaluation(metric=metric, kl=torch.zeros_like(metric), full=torch.ones(1, dtype=torch.float64),
                          empty=torch.zeros(1, dtype=torch.float64))

    monkeypatch.setattr("acdc.evaluate.evaluate_masks", evaluate)
    return tables, calls


def _brute(fs: list[float], level: float) -> int | None:
    return next((i for i, v in enumerate(fs) if v >= level), None)


def test_level_search_equals_brute_force_on_monotone_curves(fake_eval):
    tables, calls = fake_eval
    rng = random.Random(0)
    curves = []
    for block, n in enumerate(list(range(1, 12)) + [39, 40, 45]):
        fs = sorted(rng.uniform(-0.2, 1.1) for _ in range(n))
        tables[block] = fs
        curves.append(_curve(fs, block))
    doc = sweep_for_level(None, None, None, curves, 0.9)
    for block, out in enumerate(doc["curves"]):
        fs = tables[block]
        want = _brute(fs, 0.9)
        reached = [i for i, p in enumerate(out["points"]) if p["f"] is not None and p["f"] >= 0.9]
        if want is None:
            assert not reached
            assert out["points"][-1]["f"] == pytest.approx(fs[-1])  # the largest was tried
        else:
            assert min(reached) == want
        for p, v in zip(out["points"], fs, strict=True):
            assert p["f"] is None or p["f"] == pytest.approx(v)  # evaluated points carry their true f
    big = [out for cv, out in zip(curves, doc["curves"], strict=True) if len(cv.circuits) >= 39]
    assert all(sum(p["f"] is not None for p in out["points"]) <= 14 for out in big)  # not all 39-45
    assert len(calls) <= 5  # all curves' probes of a round in one evaluation


def test_level_search_on_non_monotone_curves_finds_a_crossing(fake_eval):
    """Without monotonicity the circuit found reaches the level and the next smaller circuit does not."""
    tables, _ = fake_eval
    rng = random.Random(1)
    for trial in range(30):
        n = rng.randint(2, 40)
        fs = [rng.uniform(0, 1) for _ in range(n)]
        tables[0] = fs
        out = sweep_for_level(None, None, None, [_curve(fs, 0)], 0.7)["curves"][0]["points"]
        reached = [i for i, p in enumerate(out) if p["f"] is not None and p["f"] >= 0.7]
        if not reached:
            assert fs[-1] < 0.7  # only a curve whose largest circuit falls short reaches nothing
            continue
        i = min(reached)
        assert fs[i] >= 0.7 and (i == 0 or fs[i - 1] < 0.7), (trial, fs, i)


def test_plan_shares_the_time(toy_ioi):
    prep = prepare("ioi", "zoo:toy-ioi", n=16)
    methods = [get_method(m) for m in ("eap", "eap-ig", "edge-pruning", "hybrid", "acdc")]
    opts = JobOptions(budget_s=300.0)
    roomy = plan_time(prep, methods, opts, time.perf_counter() + 10_000, forward_s=0.01)
    assert roomy.per_decade == 6 and roomy.search_s == 300.0 and roomy.searches == 3  # capped by --budget
    mid = plan_time(prep, methods, opts, time.perf_counter() + 300, forward_s=1.0)
    assert mid.per_decade < 6 and mid.search_s >= 20  # a coarser grid keeps time for the searches
    assert mid.sweep_s <= 0.5 * mid.left_s or mid.per_decade == GRIDS[-1]
    assert mid.search_s == pytest.approx((mid.left_s - mid.sweep_s) / 3, rel=1e-6)
    # too tight for the searches: they will be skipped, so the sweeps get all the time for the rankings' curves
    tight = plan_time(prep, methods, opts, time.perf_counter() + 150, forward_s=1.0)
    alone = plan_time(prep, methods[:2], opts, time.perf_counter() + 150, forward_s=1.0)
    assert tight.search_s < 20 and alone.searches == 0
    assert tight.per_decade == alone.per_decade and tight.sweep_s == pytest.approx(alone.sweep_s)
    assert tight.per_decade > mid.per_decade or tight.per_decade == 6
    gone = plan_time(prep, methods, opts, time.perf_counter() + 5, forward_s=0.05)
    assert gone.search_s == 0.0


def test_run_with_a_time_limit(tmp_path):
    from cli.main import main

    r = CliRunner().invoke(main, ["run", "ioi", "--n", "24", "--bootstrap", "50", "--time-limit", "45s",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    plan = s["timings"]["time_plan"]
    assert plan["searches"] == 3 and plan["per_decade"] in GRIDS
    assert any(n.startswith("time limit 45 s:") for n in s["notes"])
    assert s["timings"]["total_s"] < 45 + 30  # planned, not enforced: but not far off on a toy
    import yaml

    run = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run["time_limit_s"] == 45.0 and run["budget_s"] == 300.0
    r = CliRunner().invoke(main, ["run", "ioi", "--n", "24", "--bootstrap", "50", "--time-limit", "1",
                                  "--out", str(tmp_path / "short")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert sum("skipped: the time limit left" in n for n in s["notes"]) == 3
    assert {c["method"] for c in s["circuits"]} == {"eap", "eap-ig"}
    r = CliRunner().invoke(main, ["run", "ioi", "--time-limit", "15x"])
    assert r.exit_code == 2 and "is not a duration" in r.output
