"""The method registry (acdc/methods): one record per method, the command line's choices come from it, a new
family is one file plus one registry line; shared pieces (TaskData slicing, the speculative removal loop, the
ensemble) behave as documented."""

from __future__ import annotations

import json

import pytest
import torch
from acdc.cli.main import main
from click.testing import CliRunner

from acdc import Graph, get_task
from acdc.errors import InputError
from acdc.graph import Circuit
from acdc.methods import REGISTRY, Context, Settings, get_method, method_names
from acdc.methods.discover import check_controls
from acdc.methods.registry import FAMILIES


def test_registry_is_the_only_list_of_methods() -> None:
    import importlib

    names = [m.name for fam in FAMILIES for m in importlib.import_module(f"acdc.methods.{fam}").METHODS]
    assert list(REGISTRY) == names and len(set(names)) == len(names)
    assert method_names(in_job=True) == ("eap", "eap-ig", "edge-pruning", "hybrid", "acdc")
    # the command line offers what the registry holds
    scores_choices = next(p for p in main.commands["scores"].params if p.name == "method").type.choices
    discover_choices = next(p for p in main.commands["discover"].params if p.name == "method").type.choices
    assert list(scores_choices) == list(method_names(attribution=True))
    assert list(discover_choices) == list(REGISTRY)
    r = CliRunner().invoke(main, ["methods"])
    assert r.exit_code == 0 and all(name in r.output for name in REGISTRY)
    with pytest.raises(InputError, match="unknown method 'magic'"):
        get_method("magic")


def test_controls_are_checked_before_any_model_loads() -> None:
    for method, kw, msg in (("acdc", {"edges": 5}, "--threshold"), ("hybrid", {"threshold": 0.1}, "target"),
                            ("hybrid", {"edges": 5}, "target"), ("edge-pruning", {"threshold": 0.1}, "--edges")):
        with pytest.raises(InputError, match=msg):
            check_controls(method, **kw)
    assert check_controls("eap", threshold=0.1).name == "eap"
    r = CliRunner().invoke(main, ["discover", "no-such-task", "--method", "hybrid", "--edges", "5"])
    assert r.exit_code == 2 and "not controlled by a size" in r.output  # refused before the task is even read


def test_taskdata_rows_and_take_keep_every_field(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    data = get_task("ioi").build(toy_ioi, 10, split="test")
    part = data.rows(2, 5)
    assert torch.equal(part.clean, data.clean[2:5]) and torch.equal(part.positions, data.positions[2:5])
    assert part.texts == data.texts[2:5] and torch.equal(part.lengths, data.lengths[2:5])
    assert part.metric == data.metric and part.description == data.description
    assert part.info["rows"] == {"lo": 2, "hi": 5, "of": 10} and part.info["task"] == data.info["task"]
    idx = torch.tensor([7, 1])
    some = data.take(idx)
    assert torch.equal(some.answers, data.answers[idx]) and some.texts == [data.texts[7], data.texts[1]]
    assert torch.equal(some.wrong, data.wrong[idx]) and "rows" not in data.info


def test_speculation_width_changes_cost_not_decisions(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    """The shared accept/commit loop: the hybrid's refinement decides the same at every width."""
    from acdc.methods import hybrid_search

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 24, split="train")
    found = [hybrid_search(toy_ioi, g, data, target=0.8, width=w, progress=False) for w in (1, 3, 8)]
    masks = [c.mask for c, _ in found]
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    assert len({c.n_edges for c, _ in found}) == 1 and found[0][0].n_edges < found[0][1].extra["size_before_refine"]


def test_ensemble_averages_normalised_member_scores(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    from acdc.attribution import attribute
    from acdc.methods.ensemble import MEMBERS

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    ctx = Context(toy_ioi, g, data, progress=False)
    out = get_method("ensemble").run(ctx, Settings(ig_steps=3))
    want = torch.zeros(g.n_src, g.n_dst, dtype=torch.float64)
    for m in MEMBERS:
        s = attribute(toy_ioi, g, data, m, steps=3, progress=False).scores.abs()
        want += s / s.max()
    assert out.scores is not None
    assert torch.allclose(out.scores.scores, want / len(MEMBERS), atol=1e-12)
    assert float(out.scores.scores.max()) <= 1.0 and sorted(ctx.rankings) == sorted(f"{m}:3:patch" for m in MEMBERS)
    # a later method asking for a member reuses it (no second scoring)
    again = get_method("eap").run(ctx, Settings(ig_steps=3))
    assert again.scores is ctx.rankings["eap:3:patch"]


def test_run_takes_any_registered_method(tmp_path, toy_ioi) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", "ioi", "--methods", "mask-ig,ensemble", "--n", "16", "--bootstrap", "20",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert [c["method"] for c in s["circuits"]] == ["mask-ig", "ensemble"]
    assert [c["method"] for c in s["pareto"]["curves"]] == ["mask-ig", "ensemble"]
    r = CliRunner().invoke(main, ["run", "ioi", "--methods", "eap,magic"])
    assert r.exit_code == 2 and "unknown method(s) magic" in r.output


def test_budgets_cut_the_search_and_say_so(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    """A time budget stops edge pruning's steps and the hybrid's bisection/refinement early, with a note; without
    one (or a generous one) nothing changes."""
    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    ctx = Context(toy_ioi, g, data, progress=False)
    tight = get_method("edge-pruning").run(ctx, Settings(train_steps=50, budget_s=1e-9))
    assert tight.circuits[0].meta["steps"] == 3 and "3 of 50 steps fit the budget" in tight.notes[-1]
    free = get_method("edge-pruning").run(ctx, Settings(train_steps=20))
    roomy = get_method("edge-pruning").run(ctx, Settings(train_steps=20, budget_s=1e6))
    assert free.circuits[0].meta["steps"] == 20 and len(free.notes) == 1
    assert torch.equal(free.scores.scores, roomy.scores.scores)
    hyb = get_method("hybrid").run(ctx, Settings(targets=(0.8,), budget_s=0.0))
    assert hyb.circuits[0].n_edges <= g.n_edges and "bisection stopped by the budget" in hyb.notes[-1]
    full = get_method("hybrid").run(ctx, Settings(targets=(0.8,)))
    roomy_h = get_method("hybrid").run(ctx, Settings(targets=(0.8,), budget_s=1e6))
    assert not full.notes and torch.equal(full.circuits[0].mask, roomy_h.circuits[0].mask)


def test_acdc_budget_stops_at_a_reader_and_estimates(toy_ioi, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ACDC's budget: the largest threshold runs first; a search the budget stops is dropped with a note that says
    where it stopped and what it would need; a roomy budget gives the unbudgeted circuits in threshold order; a
    stopped search with a checkpoint resumes to the same circuit."""
    from acdc.methods.acdc import SearchStopped, acdc_search

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    ctx = Context(toy_ioi, g, data, progress=False)
    tight = get_method("acdc").run(ctx, Settings(thresholds=(0.01, 0.1), budget_s=0.0))
    assert not tight.circuits
    assert "stopped the search at threshold 0.1 after 0 of" in tight.notes[-1]
    assert "dropped thresholds 0.1, 0.01" in tight.notes[-1]
    free = get_method("acdc").run(ctx, Settings(thresholds=(0.01, 0.1)))
    roomy = get_method("acdc").run(ctx, Settings(thresholds=(0.01, 0.1), budget_s=1e6))
    assert [c.meta["label"] for c in roomy.circuits] == ["tau=0.01", "tau=0.1"]
    a, b = roomy.circuits
    assert roomy.notes == [f"acdc: accumulated KL(full || C) on the train split: tau=0.01: "
                           f"{a.meta['final_distance']:.4g} ({a.n_edges} edges), "
                           f"tau=0.1: {b.meta['final_distance']:.4g} ({b.n_edges} edges)"]
    for a, b in zip(free.circuits, roomy.circuits, strict=True):
        assert torch.equal(a.mask, b.mask)
    ck = tmp_path / "search.json"
    # a deadline already passed stops inside the first reader (the logits) after its first batch of candidates;
    # nothing whole was decided, so no checkpoint
    with pytest.raises(SearchStopped) as stop:
        acdc_search(toy_ioi, g, data, 0.01, progress=False, checkpoint=ck, deadline=0.0)
    assert stop.value.readers == 0 and stop.value.estimate_s > 0 and not ck.exists()
    # at a reader boundary (the check that every torchrun process agrees on): the checkpoint keeps the reader
    import acdc.methods.acdc as acdc_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(acdc_module, "_passed", lambda deadline, world: True)
        with pytest.raises(SearchStopped) as stop:
            acdc_search(toy_ioi, g, data, 0.01, progress=False, checkpoint=ck, deadline=float("inf"))
    assert stop.value.readers == 1 and stop.value.estimate_s > 0
    resumed, cost = acdc_search(toy_ioi, g, data, 0.01, progress=False, checkpoint=ck)
    assert cost.extra["resumed_at_reader"] == 1 and torch.equal(resumed.mask, free.circuits[0].mask)


def test_discover_budget_stops_acdc_in_one_line_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`acdc discover --method acdc --budget` that is too small: one line (exit 1) saying where the search stopped and
    how to resume; the same command with the same --out and no budget resumes and writes the circuit a fresh
    search finds."""
    out = tmp_path / "acdc"
    args = ["discover", "ioi", "--method", "acdc", "--n", "16", "--threshold", "0.02", "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--budget", "1e-9"])
    assert r.exit_code == 1, r.output  # stopped inside the first reader: nothing to resume from
    assert "stopped the search at threshold 0.02 after 0 of" in r.output and "nothing to resume" in r.output
    assert "Traceback" not in r.output and not (out / "search.json").is_file()
    import acdc.methods.acdc as acdc_module

    with pytest.MonkeyPatch.context() as mp:  # a budget that lasts one reader
        mp.setattr(acdc_module, "_passed", lambda deadline, world: True)
        r = CliRunner().invoke(main, [*args, "--budget", "1e9"])
    assert r.exit_code == 1, r.output
    assert "stopped the search at threshold 0.02 after 1 of" in r.output and "resumes it" in r.output
    assert "Traceback" not in r.output and (out / "search.json").is_file()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    fresh = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "fresh")])
    assert fresh.exit_code == 0, fresh.output
    a = json.loads((out / "circuit.json").read_text())
    b = json.loads((tmp_path / "fresh" / "circuit.json").read_text())
    assert sorted(a["edges"]) == sorted(b["edges"]) and a["meta"]["resumed_at_reader"] == 1


def test_selection_methods_ilp_and_stable(toy_ioi, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """eap-ig-ilp: the eap-ig scores, a curve of ILP circuits of exactly each size (total |score| >= greedy's);
    discover gives the ILP circuit of --edges. eap-ig-stable: the top of its ranking is the set of edges among the
    n best in at least half of the bootstrap resamples, and the chunks' mean is the plain eap-ig ranking."""
    from acdc.attribution import attribute
    from acdc.job import JobOptions, Prepared, run_methods
    from acdc.methods.selected import CHUNKS, FRACTION, RESAMPLES
    from acdc.selection import greedy, stability

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    prep = Prepared(None, "zoo:toy-ioi", toy_ioi, g, "patch", 0, {"train": data}, {})
    runs = run_methods(prep, [get_method("eap-ig-ilp"), get_method("eap-ig")], JobOptions(ig_steps=3),
                       progress=False)
    ilp_curve, greedy_curve = runs.curves
    assert torch.equal(runs.rankings["eap-ig-ilp"][1], runs.rankings["eap-ig"][1])
    scores = runs.rankings["eap-ig"][1]
    for n, c in zip(ilp_curve.requested, ilp_curve.circuits, strict=True):
        assert c.meta["selector"] == "ilp" and c.meta["optimal"] and c.n_edges == n
        assert c.meta["total"] >= float(scores.abs()[greedy(g, scores, n).mask].sum()) - 1e-9
    assert [c.meta["selector"] for c in greedy_curve.circuits] == ["greedy"] * len(greedy_curve.circuits)
    out = tmp_path / "d"
    r = CliRunner().invoke(main, ["discover", "ioi", "--method", "eap-ig-ilp", "--edges", "17", "--n", "16",
                                  "--steps", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["n_edges"] == 17 and doc["meta"]["selector"] == "ilp"

    ctx = Context(toy_ioi, g, data, progress=False)
    stable = get_method("eap-ig-stable").run(ctx, Settings(ig_steps=3, seed=4))
    assert stable.scores is not None and stable.scores.meta["chunks"] == CHUNKS
    size = len(data) // CHUNKS
    chunks = torch.stack([attribute(toy_ioi, g, data.rows(i * size, (i + 1) * size), "eap-ig", steps=3,
                                    progress=False).scores for i in range(CHUNKS)])
    plain = ctx.rankings["eap-ig-inputs:3:patch"].scores
    assert torch.allclose(plain, attribute(toy_ioi, g, data, "eap-ig", steps=3, progress=False).scores, atol=1e-5)
    for n in (5, 12, 30):
        kept = (stability(g, chunks, n, resamples=RESAMPLES, seed=4) >= FRACTION) & g.valid
        k = int(kept.sum())
        top = torch.zeros_like(g.valid)
        top.view(-1)[torch.argsort(stable.scores.scores.flatten(), descending=True)[:k]] = True
        assert torch.equal(top, kept), n


def test_ensemble_aggregations_and_one_member(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    """An ensemble of one ranking is that ranking's normalised |scores| under every aggregation (so it ranks edges
    as the ranking does); over several members min <= mean <= max, and the registered methods aggregate so."""
    from acdc.attribution import attribute
    from acdc.methods.ensemble import AGGREGATIONS, MEMBERS, aggregate, normalised

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    one = attribute(toy_ioi, g, data, "eap-ig", steps=3, progress=False)
    for how in AGGREGATIONS:
        agg = aggregate([one.scores], g.valid, how)
        assert torch.equal(agg, normalised(one.scores, g.valid)) and float(agg.max()) == 1.0
        from acdc.attribution import EdgeScores

        assert [n for n, _ in EdgeScores(g, agg, how).ranked()] == [n for n, _ in one.ranked()]
    with pytest.raises(InputError, match="unknown aggregation"):
        aggregate([one.scores], g.valid, "median")
    ctx = Context(toy_ioi, g, data, progress=False)
    out = {how: get_method(name).run(ctx, Settings(ig_steps=3)).scores.scores
           for how, name in (("mean", "ensemble"), ("max", "ensemble-max"), ("min", "ensemble-min"))}
    members = [ctx.rankings[f"{m}:3:patch"].scores for m in MEMBERS]
    assert torch.equal(out["max"], aggregate(members, g.valid, "max"))
    assert bool((out["min"] <= out["mean"] + 1e-15).all()) and bool((out["mean"] <= out["max"] + 1e-15).all())


def test_edge_pruning_warm_start_follows_the_scores(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    """edge-pruning-warm starts log alpha at warm_init of the eap-ig scores: monotone in |score|, 3 for the most
    important edge, -3 for a zero score; with a vanishing learning rate the learned log alpha is that start; the
    registered method runs and says so."""
    from acdc.attribution import attribute
    from acdc.methods.edge_pruning import INIT_HIGH, INIT_LOW, edge_pruning, warm_init

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    s = attribute(toy_ioi, g, data, "eap-ig", steps=3, progress=False).scores
    init = warm_init(g, s)
    a = s.abs()[g.valid]
    order = torch.argsort(a)
    assert bool((init[g.valid][order].diff() >= 0).all())
    assert abs(float(init.max()) - INIT_HIGH) < 1e-12 and float(init[~g.valid].max()) == INIT_LOW
    _, log_alpha, _ = edge_pruning(toy_ioi, g, data, edges=20, steps=2, lr=1e-12, init=init, progress=False)
    assert torch.allclose(log_alpha[g.valid], init[g.valid], atol=1e-6)
    ctx = Context(toy_ioi, g, data, progress=False)
    out = get_method("edge-pruning-warm").run(ctx, Settings(ig_steps=3, train_steps=20))
    assert out.scores is not None and out.scores.meta["warm_start"] == "eap-ig"
    assert out.circuits[0].meta["method"] == "edge-pruning-warm" and "started from" in out.notes[0]
    assert "eap-ig-inputs:3:patch" in ctx.rankings
    cold = get_method("edge-pruning").run(ctx, Settings(ig_steps=3, train_steps=20))
    assert not torch.equal(cold.scores.scores, out.scores.scores)


def test_edge_pruning_budget_is_a_deadline_after_its_plan(toy_ioi, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Steps that slow down after the plan (other jobs start) stop at the budget with a note, not at the planned
    count."""
    import sys

    ep = sys.modules["acdc.methods.edge_pruning"]  # (the package exports a function of the same name)
    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    calls = {"n": 0}

    def clock() -> float:  # 0.1 s a call for the first steps, then 100 s a call
        calls["n"] += 1
        return 0.1 * calls["n"] if calls["n"] <= 8 else 0.8 + 100.0 * (calls["n"] - 8)

    monkeypatch.setattr(ep.time, "perf_counter", clock)
    circuit, _, cost = ep.edge_pruning(toy_ioi, g, data, edges=20, steps=50, budget_s=30.0, progress=False)
    assert circuit.meta["steps"] < 10
    assert "stopped at the budget of 30 s" in cost.extra["budget_note"]


def test_edge_pruning_schedule_by_graph_size(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    """32 prompts a step at rate 0.1 on the zoo's graphs, 8 at 0.3 above LARGE_GRAPH edges; an explicit batch or
    rate wins; the circuit records what was used."""
    from types import SimpleNamespace

    from acdc.methods.edge_pruning import LARGE_GRAPH, edge_pruning, schedule

    g = Graph.from_model(toy_ioi)
    assert schedule(g) == (32, 0.1)
    assert schedule(SimpleNamespace(n_edges=LARGE_GRAPH)) == (32, 0.1)  # type: ignore[arg-type]
    assert schedule(SimpleNamespace(n_edges=LARGE_GRAPH + 1)) == (8, 0.3)  # type: ignore[arg-type]
    data = get_task("ioi").build(toy_ioi, 16, split="train")
    c, _, _ = edge_pruning(toy_ioi, g, data, edges=20, steps=2, progress=False)
    assert (c.meta["batch_size"], c.meta["lr"]) == (32, 0.1)
    c, _, _ = edge_pruning(toy_ioi, g, data, edges=20, steps=2, batch_size=4, lr=0.05, progress=False)
    assert (c.meta["batch_size"], c.meta["lr"]) == (4, 0.05)


def test_hybrid_targets_share_what_is_left(toy_ioi, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each target gets an even share of the budget left when it starts (time one target leaves over goes to the
    next; a round past its share shortens the later ones), so the whole overshoots by one target's overrun at most."""
    import acdc.methods.hybrid as hybrid_module
    from acdc.methods.base import SearchCost

    g = Graph.from_model(toy_ioi)
    data = get_task("ioi").build(toy_ioi, 8, split="train")
    ctx = Context(toy_ioi, g, data, progress=False)
    get_method("eap-ig").run(ctx, Settings())  # the ranking the hybrid reuses
    clock = [0.0]
    given: list[float] = []

    def fake_search(model, graph, data, *, target, budget_s, **kw):  # type: ignore[no-untyped-def]
        given.append(budget_s)
        clock[0] += budget_s + 2.0 if target != 0.5 else budget_s / 2  # the first leaves half; the others overrun
        return Circuit(graph, graph.valid.clone()), SearchCost()

    monkeypatch.setattr(hybrid_module, "hybrid_search", fake_search)
    monkeypatch.setattr(hybrid_module.time, "perf_counter", lambda: clock[0])
    out = get_method("hybrid").run(ctx, Settings(targets=(0.5, 0.8, 0.9), budget_s=30.0))
    assert given[0] == pytest.approx(10.0) and given[1] == pytest.approx(12.5)  # 25 s left for two targets
    assert given[2] == pytest.approx(30.0 - 5.0 - 14.5)  # what the second's overrun left
    assert clock[0] == pytest.approx(30.0 + 2.0) and len(out.circuits) == 3
