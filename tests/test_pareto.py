"""Sweeps, frontier, CPR/CMD and bootstrap intervals (acdc/pareto.py)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from acdc import Graph, attribute
from acdc.errors import InputError
from acdc.evaluate import Evaluation, evaluate_circuits, evaluate_masks, faithfulness_ci
from acdc.pareto import (
    MIB_FRACTIONS,
    cpr_cmd,
    curve_from_circuits,
    curve_from_scores,
    edges_to_reach,
    mib_sizes,
    pareto_front,
    size_grid,
    sweep,
    trapezoid,
)
from acdc.selection import greedy, top_n


# ---- frontier against its definition ----------------------------------------------------------------------------
def _brute_front(points: list[tuple[float, float]]) -> set[int]:
    def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
        return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])

    return {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}


@pytest.mark.parametrize("seed", range(40))
def test_frontier_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    # small integer grids make ties in edges and in f common
    points = [(float(rng.randint(0, 12)), rng.choice([rng.random(), round(rng.random(), 1)])) for _ in range(n)]
    got = pareto_front(points)
    assert set(got) == _brute_front(points)
    assert [points[i][0] for i in got] == sorted(points[i][0] for i in got)


def test_frontier_simple_cases() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(5, 0.5), (3, 0.9), (10, 0.95), (4, 0.2)]) == [1, 2]
    assert sorted(pareto_front([(3, 0.9), (3, 0.9)])) == [0, 1]  # equal points dominate neither


# ---- areas ----------------------------------------------------------------------------------------------------------
def test_cpr_cmd_known_areas() -> None:
    x = list(MIB_FRACTIONS)
    width = MIB_FRACTIONS[-1] - MIB_FRACTIONS[0]
    cpr, cmd = cpr_cmd(x, [1.0] * len(x))
    assert cpr == pytest.approx(width) and cmd == pytest.approx(0.0)
    cpr, cmd = cpr_cmd(x, [0.0] * len(x))
    assert cpr == pytest.approx(0.0) and cmd == pytest.approx(width)
    # f = x is linear: area = (1 - 0.001^2) / 2 exactly under the trapezoid rule
    cpr, cmd = cpr_cmd(x, x)
    assert cpr == pytest.approx((1 - 0.001**2) / 2)
    assert cmd == pytest.approx(width - (1 - 0.001**2) / 2)
    # overshoot counts against CMD: f = 1.5 everywhere
    _, cmd = cpr_cmd(x, [1.5] * len(x))
    assert cmd == pytest.approx(0.5 * width)
    assert trapezoid([0, 1, 3], [0, 2, 2]) == pytest.approx(1 + 4)
    with pytest.raises(InputError):
        trapezoid([1, 0], [0, 0])


def test_grids() -> None:
    assert mib_sizes(32491) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
    g = size_grid(110)
    assert g[0] == 0 and g[-1] == 110 and g == sorted(set(g))
    assert {1, 2, 11, 22, 55}.issubset(g)


def test_edges_to_reach() -> None:
    pts = [{"edges": 3, "f": 0.5}, {"edges": 9, "f": 0.95}, {"edges": 6, "f": 0.85}, {"edges": 20, "f": None}]
    assert edges_to_reach(pts, 0.8) == 6
    assert edges_to_reach(pts, 0.9) == 9
    assert edges_to_reach(pts, 0.99) is None


# ---- bootstrap ------------------------------------------------------------------------------------------------------
def _synthetic(n: int, seed: int) -> Evaluation:
    g = torch.Generator().manual_seed(seed)
    full = 4 + torch.randn(n, generator=g, dtype=torch.float64)
    empty = torch.randn(n, generator=g, dtype=torch.float64)
    circ = 0.7 * full + 0.3 * empty + 0.5 * torch.randn(3, n, generator=g, dtype=torch.float64)
    kl = torch.rand(3, n, generator=g, dtype=torch.float64)
    return Evaluation(circ, kl, full, empty)


def test_bootstrap_interval_contains_value_and_narrows() -> None:
    widths = []
    for n in (50, 200, 800):
        s = faithfulness_ci(_synthetic(n, 1), n_boot=2000, seed=0)
        assert torch.all(s["f_lo"] <= s["f"]) and torch.all(s["f"] <= s["f_hi"])
        assert torch.all(s["kl_lo"] <= s["kl"]) and torch.all(s["kl"] <= s["kl_hi"])
        widths.append(float((s["f_hi"] - s["f_lo"]).mean()))
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # ~ 1/sqrt(n)
    s = faithfulness_ci(_synthetic(50, 1), n_boot=0)
    assert torch.isnan(s["f_lo"]).all()


def test_bootstrap_f_is_ratio_of_means() -> None:
    ev = _synthetic(30, 2)
    s = faithfulness_ci(ev, n_boot=10)
    want = (ev.metric.mean(1) - ev.empty.mean()) / (ev.full.mean() - ev.empty.mean())
    torch.testing.assert_close(s["f"], want)


# ---- exact sweep on a zoo model -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ioi_setup(toy_ioi):  # type: ignore[no-untyped-def]
    from acdc import get_task

    graph = Graph.from_model(toy_ioi)
    task = get_task("ioi")
    train = task.build(toy_ioi, 48, seed=0, split="train")
    test = task.build(toy_ioi, 40, seed=0, split="test")
    scores = attribute(toy_ioi, graph, train, "eap-ig-inputs", steps=3, progress=False)
    return toy_ioi, graph, test, scores


def test_batched_sweep_equals_single_evaluations(ioi_setup) -> None:  # type: ignore[no-untyped-def]
    model, graph, test, scores = ioi_setup
    sizes = size_grid(graph.n_edges)
    eap_ig = curve_from_scores(graph, "eap-ig", scores.scores, sizes)
    topn = curve_from_scores(graph, "eap-ig-topn", scores.scores, sizes, selector="topn")
    doc = sweep(model, graph, test, [eap_ig, topn], batch=7, n_boot=200, progress=False)
    for cv, got in ((eap_ig, doc["curves"][0]), (topn, doc["curves"][1])):
        for c, p in zip(cv.circuits, got["points"], strict=True):
            single = evaluate_circuits(model, graph, test, [c], batch=1)[0]
            assert p["edges"] == c.n_edges
            assert p["f"] == pytest.approx(single["faithfulness"], abs=1e-5)
            assert p["kl"] == pytest.approx(single["kl"], abs=1e-5)
            assert p["f_ci"][0] <= p["f"] + 1e-12 and p["f"] <= p["f_ci"][1] + 1e-12
    # the full circuit recovers everything and the empty one nothing
    last = doc["curves"][0]["points"][-1]
    assert last["edges"] == graph.n_edges and last["f"] == pytest.approx(1.0, abs=1e-6)
    assert last["kl"] == pytest.approx(0.0, abs=1e-6)
    first = doc["curves"][0]["points"][0]
    assert first["edges"] == 0 and first["f"] == pytest.approx(0.0, abs=1e-6)
    # summaries: both score curves have the MIB grid, and the frontier is consistent with the points
    for s in doc["summary"]:
        assert s["cpr"] is not None and s["cmd"] is not None
    flat = [(p["edges"], p["f"]) for cv in doc["curves"] for p in cv["points"]]
    best = {(f["edges"], f["f"]) for f in doc["frontier"]}
    assert best == {flat[i] for i in pareto_front(flat)}


def test_curve_circuits_are_selector_circuits(ioi_setup) -> None:  # type: ignore[no-untyped-def]
    _, graph, _, scores = ioi_setup
    sizes = [0, 1, 5, 17, 40, graph.n_edges]
    for selector, fn in (("greedy", greedy), ("topn", top_n)):
        cv = curve_from_scores(graph, "x", scores.scores, sizes, selector=selector)
        for n, c in zip(sizes, cv.circuits, strict=True):
            assert torch.equal(c.mask, fn(graph, scores.scores, n).mask)


def test_sweep_of_found_circuits_and_chunking(ioi_setup) -> None:  # type: ignore[no-untyped-def]
    model, graph, test, scores = ioi_setup
    circuits = [greedy(graph, scores.scores, n) for n in (10, 30)]
    doc = sweep(model, graph, test, [curve_from_circuits("hybrid", circuits, ["a", "b"])], n_boot=50,
                progress=False)
    assert doc["summary"][0]["cpr"] is None  # not a ranking: no MIB area
    assert [p["label"] for p in doc["curves"][0]["points"]] == ["a", "b"]
    # prompt chunks (tiny logits budget) give the same numbers as one chunk
    masks = [c.mask for c in circuits]
    one = evaluate_masks(model, graph, test, masks)
    many = evaluate_masks(model, graph, test, masks, max_elements=1)
    # (float32 rounding differs with the batch shape: 1e-5 relative)
    torch.testing.assert_close(one.metric, many.metric, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.kl, many.kl, rtol=1e-4, atol=1e-5)
    for ablation in ("mean", "zero"):
        ev = evaluate_masks(model, graph, test, [graph.valid], ablation=ablation)
        assert torch.allclose(ev.metric[0], ev.full)
    assert math.isfinite(doc["baseline"]["full"])
    with pytest.raises(InputError):
        sweep(model, graph, test, [])
    with pytest.raises(InputError):
        curve_from_scores(graph, "x", scores.scores, [3], selector="threshold")


def test_baseline_warning_when_f_is_meaningless() -> None:
    """f divides by M(full) - M(empty): a gap of the wrong sign, or one lost in its noise, is said in one line."""
    from acdc.evaluate import Evaluation, baseline_warning

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(200, generator=g, dtype=torch.float64)
    k = torch.zeros(1, 200, dtype=torch.float64)

    def ev(full: torch.Tensor, empty: torch.Tensor) -> Evaluation:
        return Evaluation(k, k, full, empty)

    assert baseline_warning(ev(3.0 + noise, 0.1 * noise), "logit_diff") is None
    assert "wrong sign" in str(baseline_warning(ev(0.1 * noise, 3.0 + noise), "logit_diff"))
    assert "standard errors" in str(baseline_warning(ev(0.05 + noise, noise.flip(0)), "logit_diff"))
    # for kl the metric is a distance: the full circuit is at 0 and the empty one above it
    assert baseline_warning(ev(0.0 * noise, 2.0 + 0.1 * noise), "kl") is None
    assert "wrong sign" in str(baseline_warning(ev(2.0 + 0.1 * noise, 0.0 * noise), "kl"))
