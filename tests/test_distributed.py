"""Data parallelism (acdc/distributed.py): two gloo processes on CPU give the single-process scores and evaluations;
the CLI under torchrun writes the same scores.safetensors as a plain run; shards keep every field."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acdc import Graph, attribute
from acdc.distributed import attribute_distributed, evaluate_distributed, shard, shard_bounds
from acdc.errors import InputError
from acdc.evaluate import evaluate_masks
from acdc.methods.acdc import acdc_search
from acdc.types import TaskData

SHAPE = dict(n_layer=2, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=3, init_std=0.15)
# (method, ablation, batch_size, kwargs): batch 16 > 10 prompts leaves rank 1 without prompts
RUNS = [("eap", "patch", 3, {}), ("eap-ig-inputs", "patch", 3, {"steps": 3}), ("eap", "zero", 4, {}),
        ("eap-ig-inputs", "patch", 4, {"steps": 2, "level": "node"}), ("exact", "patch", 4, {"exact_batch": 40}),
        ("eap", "patch", 16, {})]


# exact ACDC with the prompts shared among the ranks: (threshold, ablation, distance, fast)
ACDC_RUNS = [dict(threshold=2e-3), dict(threshold=5e-3, ablation="mean"), dict(threshold=0.05, distance="metric"),
             dict(threshold=2e-3, fast=False)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data(n: int = 10, p: int = 8) -> TaskData:
    g = torch.Generator().manual_seed(0)
    pos = torch.zeros(n, p, dtype=torch.bool)
    pos[:, -1] = True
    pos[::3, 4] = True
    return TaskData(
        clean=torch.randint(0, 40, (n, p), generator=g), corrupt=torch.randint(0, 40, (n, p), generator=g),
        positions=pos, answers=torch.randint(0, 40, (n, p), generator=g),
        wrong=torch.randint(0, 40, (n, p), generator=g), metric="logit_diff", description="handmade",
        lengths=torch.full((n,), p), texts=[(f"c{i}", f"x{i}") for i in range(n)], info={"task": "handmade", "n": n},
    )


def _masks(graph: Graph) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(graph.n_src, graph.n_dst, generator=g) < q) & graph.valid for q in (0.3, 0.7, 0.95)]


def _worker(rank: int, world: int, port: int, folder: str, model: object) -> None:
    """One rank: joins the gloo group through init_from_env (as under torchrun) and runs every distributed call."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from acdc.distributed import init_from_env, shutdown

    assert init_from_env(device="cpu") == (rank, world)
    graph = Graph.from_model(model)
    data = _data()
    out: dict[str, object] = {}
    for i, (method, ablation, bs, kw) in enumerate(RUNS):
        s = attribute_distributed(model, graph, data, method, ablation=ablation, batch_size=bs, progress=False, **kw)
        out[f"scores{i}"] = s.scores
    ev = evaluate_distributed(model, graph, data, _masks(graph), batch=2)
    out["eval"] = (ev.metric, ev.kl, ev.full, ev.empty)
    out["mean_scores"] = attribute_distributed(model, graph, data, "eap", ablation="mean", batch_size=4,
                                               progress=False).scores
    ev = evaluate_distributed(model, graph, data, _masks(graph), ablation="mean", batch=2)
    out["mean_eval"] = (ev.metric, ev.kl, ev.full, ev.empty)
    for i, kw in enumerate(ACDC_RUNS):
        circuit, _ = acdc_search(model, graph, data, progress=False, distributed=True, **kw)
        out[f"acdc{i}"] = (circuit.mask, circuit.meta["final_distance"])
    torch.save(out, Path(folder) / f"rank{rank}.pt")
    shutdown()


@pytest.fixture(scope="module")
def single():
    from acdc.models import random_gpt2

    model = random_gpt2(**SHAPE)
    return model, Graph.from_model(model), _data()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, single):
    """Results of the two gloo ranks (each saved by its process). The ranks are forked from this process, model
    included: a fresh interpreter would spend ~15 s importing transformer_lens."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(folder), single[0]), nprocs=2, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("i", range(len(RUNS)))
def test_distributed_scores_equal_single_process(two_ranks, single, i):
    model, graph, data = single
    method, ablation, bs, kw = RUNS[i]
    ref = attribute(model, graph, data, method, ablation=ablation, batch_size=bs, progress=False, **kw).scores
    assert ref.abs().max() > 1e-3
    for r in range(2):
        assert _rel(two_ranks[r][f"scores{i}"], ref) <= 1e-5
    assert torch.equal(two_ranks[0][f"scores{i}"], two_ranks[1][f"scores{i}"])


def test_distributed_evaluation_equals_single_process(two_ranks, single):
    model, graph, data = single
    ref = evaluate_masks(model, graph, data, _masks(graph), batch=2)
    for r in range(2):
        metric, kl, full, empty = two_ranks[r]["eval"]
        assert metric.shape == ref.metric.shape == (3, len(data))
        for got, want in ((metric, ref.metric), (kl, ref.kl), (full, ref.full), (empty, ref.empty)):
            assert _rel(got, want) <= 1e-5


def test_distributed_mean_ablation_uses_the_mean_over_all_prompts(two_ranks, single):
    """Each rank holds half the prompts, but the mean that replaces ablated writers is the mean over all of them
    (all-reduced writer sums), so scores and evaluations equal one process's."""
    model, graph, data = single
    ref = attribute(model, graph, data, "eap", ablation="mean", batch_size=4, progress=False).scores
    own = evaluate_masks(model, graph, data, _masks(graph), ablation="mean", batch=2)
    for r in range(2):
        assert _rel(two_ranks[r]["mean_scores"], ref) <= 1e-5
        metric, kl, full, empty = two_ranks[r]["mean_eval"]
        for got, want in ((metric, own.metric), (kl, own.kl), (full, own.full), (empty, own.empty)):
            assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("i", range(len(ACDC_RUNS)))
def test_distributed_acdc_finds_the_single_process_circuit(two_ranks, single, i):
    """Each rank searches on half the prompts with all-reduced distances: both return the circuit one process finds
    on all of them, a non-trivial one (some edges removed, some kept), with the same final distance."""
    model, graph, data = single
    ref, _ = acdc_search(model, graph, data, progress=False, **ACDC_RUNS[i])
    assert 0 < ref.n_edges < graph.n_edges
    for r in range(2):
        mask, final = two_ranks[r][f"acdc{i}"]
        assert torch.equal(mask, ref.mask)
        assert abs(final - ref.meta["final_distance"]) <= 1e-5 * max(1.0, abs(ref.meta["final_distance"]))


def test_single_process_falls_back_to_attribute(single):
    model, graph, data = single
    a = attribute_distributed(model, graph, data, "eap", ablation="mean", batch_size=4, progress=False)
    b = attribute(model, graph, data, "eap", ablation="mean", batch_size=4, progress=False)
    assert torch.equal(a.scores, b.scores)


# ---- sharding ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world,align", [(10, 2, 3), (10, 3, 1), (7, 4, 4), (1, 3, 1), (200, 2, 32), (5, 5, 2)])
def test_shards_partition_the_prompts_at_block_boundaries(n, world, align):
    bounds = [shard_bounds(n, r, world, align=align) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n and bounds[0][1] > 0
    for (_, hi), (lo, _) in zip(bounds, bounds[1:], strict=False):
        assert hi == lo
    assert all(lo % align == 0 or lo == n for lo, _ in bounds)
    blocks = [-(-(hi - lo) // align) for lo, hi in bounds]  # whole blocks, the last one possibly partial
    assert max(blocks) - min(blocks) <= 1


def test_shard_keeps_every_field():
    data = _data()
    part = shard(data, 1, 2, align=3)
    assert (part.info["rows"]["lo"], part.info["rows"]["hi"]) == (6, 10)
    assert torch.equal(part.clean, data.clean[6:]) and torch.equal(part.corrupt, data.corrupt[6:])
    assert torch.equal(part.positions, data.positions[6:]) and torch.equal(part.answers, data.answers[6:])
    assert part.wrong is not None and data.wrong is not None and torch.equal(part.wrong, data.wrong[6:])
    assert part.lengths is not None and torch.equal(part.lengths, data.lengths[6:])  # type: ignore[index]
    assert part.texts == data.texts[6:]  # type: ignore[index]
    assert part.metric == data.metric and part.description == data.description
    assert part.info["task"] == "handmade" and "rows" not in data.info
    with pytest.raises(InputError):
        shard_bounds(10, 2, 2)


# ---- the command line under torchrun -------------------------------------------------------------------------------
def test_cli_scores_under_torchrun_equal_plain_run(tmp_path, toy_ioi):
    """``torchrun --nproc-per-node 2 -m acdc.cli.main -- scores ... --distributed`` writes the scores a single process
    computes on the same prompts (the plain command is this very ``attribute`` call; it is run in-process here to
    save a third interpreter start)."""
    from safetensors.torch import load_file

    from acdc.task import get_task

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["scores", "ioi", "--method", "eap-ig-inputs", "--steps", "2", "--n", "60", "--batch-size", "16",
            "--top", "3", "--distributed", "--out", str(tmp_path / "dist")]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "acdc.cli.main", "--", *args], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("eap-ig-inputs scores for ioi") == 1 and "2 processes" in run.stdout  # rank 0 reports
    task = get_task("ioi")
    data = task.build(toy_ioi, 60, seed=None, split="train", counterfactual=None)
    ref = attribute(toy_ioi, Graph.from_model(toy_ioi), data, "eap-ig-inputs", ablation=task.spec.defaults.ablation,
                    steps=2, batch_size=16, progress=False).scores
    got = load_file(str(tmp_path / "dist" / "scores.safetensors"))["scores"]
    assert _rel(got, ref.float()) <= 1e-5


def test_cli_pareto_under_torchrun_equals_single_process(tmp_path, toy_ioi):
    """``acdc pareto ... --distributed`` under torchrun: the rankings and every circuit's f, KL and interval equal a
    single-process run's (the bootstrap sees the same per-prompt values in the same order)."""
    import json

    from acdc.cli.main import main
    from click.testing import CliRunner

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["pareto", "ioi", "--methods", "eap,eap-ig", "--n", "40", "--bootstrap", "50"]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "acdc.cli.main", "--", *common, "--distributed", "--out", str(tmp_path / "dist")],
        env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("frontier:") == 1  # rank 0 alone reports
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "dist" / "pareto.json").read_text())
    want = json.loads((tmp_path / "one" / "pareto.json").read_text())
    for cg, cw in zip(got["curves"], want["curves"], strict=True):
        assert [p["edges"] for p in cg["points"]] == [p["edges"] for p in cw["points"]]
        for pg, pw in zip(cg["points"], cw["points"], strict=True):
            for key in ("f", "kl"):
                assert pg[key] == pytest.approx(pw[key], rel=1e-5, abs=1e-7)
            assert pg["f_ci"] == pytest.approx(pw["f_ci"], rel=1e-5, abs=1e-7)
    r = CliRunner().invoke(main, ["pareto", "ioi", "--methods", "eap,hybrid", "--distributed"])
    assert r.exit_code == 2 and "run hybrid without it" in r.output


def test_cli_discover_acdc_under_torchrun_equals_single_process(tmp_path):
    """``acdc discover --method acdc --distributed`` under torchrun: two processes, each with half the prompts, find
    the circuit of a plain ``acdc discover`` and evaluate it to the same test numbers; rank 0 alone writes and
    reports. Methods that cannot share prompts are refused in one line."""
    import json

    from acdc.cli.main import main
    from click.testing import CliRunner

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["discover", "ioi", "--method", "acdc", "--threshold", "0.02", "--n", "24"]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "acdc.cli.main", "--", *common, "--distributed", "--out", str(tmp_path / "dist")],
        env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("acdc circuit for ioi") == 1
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "dist" / "circuit.json").read_text())
    want = json.loads((tmp_path / "one" / "circuit.json").read_text())
    assert sorted(got["edges"]) == sorted(want["edges"]) and 0 < len(want["edges"])
    assert got["meta"]["processes"] == 2
    assert got["meta"]["faithfulness_test"] == pytest.approx(want["meta"]["faithfulness_test"], rel=1e-5)
    r = CliRunner().invoke(main, ["discover", "ioi", "--method", "hybrid", "--distributed"])
    assert r.exit_code == 2 and "hybrid cannot share its prompts" in r.output
