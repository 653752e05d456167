"""Memory planning (acdc/memory.py): how the estimate scales, batch choice under a budget, size parsing, and
`acdc scores --max-memory`. (Estimates against measured peak RSS: bench/bench_memory.py.)"""

from __future__ import annotations

import re

import pytest
import torch
from acdc.cli.main import main
from click.testing import CliRunner

from acdc.errors import InputError
from acdc.memory import (
    GiB,
    MiB,
    ModelShape,
    estimate,
    estimate_peak_bytes,
    format_size,
    model_shape,
    parse_size,
    pick_batch_size,
)

GPT2_SMALL = {"n_layers": 12, "n_heads": 12, "d_model": 768, "d_vocab": 50257, "n_ctx": 1024}
PER_PROMPT = ("writers", "activations", "attention", "logits")


# ---- sizes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("512MiB", 512 * MiB), ("4GiB", 4 * GiB), ("4G", 4 * GiB), ("4g", 4 * GiB),
                                        ("4 GiB", 4 * GiB), ("1.5GiB", 3 * GiB // 2), ("2GB", 2 * 10**9),
                                        ("300M", 300 * MiB), ("64k", 64 * 1024), ("123", 123), ("1T", 2**40)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["4 gigs", "", "G", "-1G", "0", "4GiBs", "1e9"])
def test_parse_size_refuses_in_one_line(text):
    with pytest.raises(InputError) as e:
        parse_size(text)
    assert "\n" not in str(e.value) and "512MiB" in str(e.value)


def test_format_size():
    assert format_size(3.1 * GiB) == "3.1 GiB"
    assert format_size(512 * MiB) == "512 MiB"
    assert format_size(2 * GiB) == "2.0 GiB"
    assert format_size(100) == "100 B"


# ---- scaling -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "clean-corrupted", "eap-ig-activations", "mask-ig",
                                    "exact", "acdc"])
def test_per_prompt_terms_are_linear_in_batch(method):
    e1, e2, e5 = (estimate(GPT2_SMALL, method=method, batch=b, seq_len=64) for b in (1, 2, 5))
    for term in PER_PROMPT:
        a, b, c = getattr(e1, term), getattr(e2, term), getattr(e5, term)
        assert a > 0 or (method == "exact" and term == "activations"), term  # exact: transients are in writers
        assert abs(b - 2 * a) <= 2 and abs(c - 5 * a) <= 5, term
    assert e1.weights == e2.weights == e5.weights and e1.fixed == e5.fixed
    assert e1.total < e2.total < e5.total


def test_terms_scale_with_their_dimensions():
    base = estimate(GPT2_SMALL, batch=4, seq_len=64)
    long = estimate(GPT2_SMALL, batch=4, seq_len=128)
    assert abs(long.attention - 4 * base.attention) <= 4  # patterns are [H, B, P, P]
    assert abs(long.writers - 2 * base.writers) <= 2 and abs(long.logits - 2 * base.logits) <= 2
    big_vocab = estimate({**GPT2_SMALL, "d_vocab": 2 * 50257}, batch=4, seq_len=64)
    assert abs(big_vocab.logits - 2 * base.logits) <= 2
    assert big_vocab.writers == base.writers and big_vocab.weights > base.weights
    more_writers = estimate(GPT2_SMALL, batch=4, seq_len=64, n_writers=2 * 157)
    assert abs(more_writers.writers - 2 * base.writers) <= 2
    half = estimate(GPT2_SMALL, batch=4, seq_len=64, dtype=torch.float16)
    assert abs(half.writers - base.writers / 2) <= 1 and half.weights < base.weights


def test_writer_stores_hold_at_least_three_copies():
    """The cache ã, this run's outputs a and the deltas ã - a are [n_src, B, P, d] each, alive together."""
    e = estimate(GPT2_SMALL, batch=8, seq_len=32)
    assert e.writers >= 3 * 157 * 8 * 32 * 768 * 4
    assert e.logits >= 2 * 8 * 32 * 50257 * 4  # the logits and their gradient


def test_acdc_counts_the_engine_state():
    """The fast ACDC keeps every writer's delta and every reader's input [B, P, d] (twice at its first pass) and the
    counterfactual cache; mean ablation's cache has batch 1."""
    X = 8 * 32 * 768 * 4
    n_src, n_in = 157, 12 * (36 + 1) + 1
    e = estimate(GPT2_SMALL, method="acdc", batch=8, seq_len=32)
    assert e.writers >= (2 * (n_src + n_in) + n_src) * X
    assert estimate(GPT2_SMALL, method="acdc", batch=8, seq_len=32, ablation="mean").writers < e.writers


def test_methods_and_ablations_order():
    def peak(method="eap", ablation="patch", metric="logit_diff"):
        return estimate_peak_bytes(GPT2_SMALL, method=method, batch=8, seq_len=32, ablation=ablation, metric=metric)

    assert peak() == peak("eap-ig-inputs") < peak("clean-corrupted") < peak("eap-ig-activations") < peak("mask-ig")
    assert peak(ablation="mean") < peak() and peak(ablation="zero") == peak(ablation="mean")
    assert peak(metric="kl") > peak()  # the clean logits are kept as the reference
    assert peak("eap-ig") == peak("eap-ig-inputs")
    with pytest.raises(InputError):
        peak("nope")


def test_mean_ablation_pass_over_all_prompts():
    """Mean ablation averages the writers over every prompt in one plain pass before the batches: that pass grows
    with the number of prompts, not with the batch, and is the peak once there are enough prompts."""
    few, many = (estimate(GPT2_SMALL, batch=4, seq_len=32, ablation="mean", n_prompts=n) for n in (8, 800))
    assert few.run == few.batch_peak + few.fixed and few.mean_pass < few.batch_peak
    assert many.mean_pass > many.batch_peak and many.run == many.mean_pass + many.fixed
    assert abs(many.mean_pass - 100 * few.mean_pass) <= 100
    assert "mean-ablation pass" in many.describe()
    assert estimate(GPT2_SMALL, batch=4, seq_len=32, ablation="patch", n_prompts=800).mean_pass == 0
    need = many.weights + many.fixed + many.mean_pass
    with pytest.raises(InputError, match="^mean ablation averages the writers over all 800 prompts in one pass"):
        pick_batch_size(need - 1, GPT2_SMALL, seq_len=32, ablation="mean", n_prompts=800)
    assert pick_batch_size(need, GPT2_SMALL, seq_len=32, ablation="mean", n_prompts=800) >= 1


def test_shape_of_a_loaded_model_matches_its_config(tiny):
    """Parameter bytes of the loaded model (unique storages) equal the GPT-2 formula used for a bare config."""
    s = model_shape(tiny)
    assert (s.n_layers, s.n_heads, s.d_model, s.d_vocab) == (3, 4, 32, 50)
    assert s.n_writers == 1 + 3 * 5 and s.d_mlp == 128
    assert s.param_bytes == s.params() * 4
    from_cfg = {"n_layers": 3, "n_heads": 4, "d_model": 32, "d_vocab": 50, "n_ctx": 32}
    assert estimate_peak_bytes(tiny, batch=4, seq_len=16) == estimate_peak_bytes(from_cfg, batch=4, seq_len=16)
    assert model_shape(s) is s and isinstance(model_shape(from_cfg), ModelShape)
    with pytest.raises(InputError):
        model_shape({"n_layers": 2})


# ---- batch choice --------------------------------------------------------------------------------------------------
def test_pick_batch_size_is_the_largest_that_fits():
    for b in (1, 7, 40):
        need = estimate_peak_bytes(GPT2_SMALL, batch=b, seq_len=128)
        assert pick_batch_size(need, GPT2_SMALL, seq_len=128) == b
        assert pick_batch_size(need + 1, GPT2_SMALL, seq_len=128) == b
        if b > 1:
            assert pick_batch_size(need - 1, GPT2_SMALL, seq_len=128) == b - 1
    assert pick_batch_size(64 * GiB, GPT2_SMALL, seq_len=128, max_batch=12) == 12
    for budget in (2 * GiB, 3 * GiB, 8 * GiB):
        b = pick_batch_size(budget, GPT2_SMALL, seq_len=128, method="eap-ig-inputs")
        assert estimate_peak_bytes(GPT2_SMALL, method="eap-ig-inputs", batch=b, seq_len=128) <= budget
        assert estimate_peak_bytes(GPT2_SMALL, method="eap-ig-inputs", batch=b + 1, seq_len=128) > budget


def test_pick_batch_size_refuses_in_one_line():
    one = estimate_peak_bytes(GPT2_SMALL, batch=1, seq_len=128)
    with pytest.raises(InputError) as e:
        pick_batch_size(one - 1, GPT2_SMALL, seq_len=128, budget_name="--max-memory")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"eap needs {format_size(one)} for one prompt of 128 tokens; --max-memory is ")
    assert msg.endswith("use a shorter task or a smaller model")


# ---- command line --------------------------------------------------------------------------------------------------
def test_cli_max_memory_sets_the_batch(toy_ioi, tmp_path):
    from acdc import Graph
    from acdc.task import get_task

    task = get_task("ioi")
    data = task.build(toy_ioi, 40, seed=None, split="train", counterfactual=None)
    need = estimate_peak_bytes(toy_ioi, method="eap", batch=10, seq_len=data.clean.shape[1],
                               n_writers=Graph.from_model(toy_ioi).n_src, metric=data.metric)
    run = CliRunner().invoke(main, ["scores", "ioi", "--method", "eap", "--n", "40", "--max-memory", str(need),
                                    "--top", "1", "--out", str(tmp_path / "a")])
    assert run.exit_code == 0, run.output
    assert "batch size 10 (the largest that fits --max-memory" in run.output  # (progress bars share the output)
    assert "batch_size: 10" in (tmp_path / "a" / "run.yaml").read_text()
    run = CliRunner().invoke(main, ["scores", "ioi", "--method", "eap", "--n", "40", "--max-memory", "4GiB",
                                    "--top", "1", "--out", str(tmp_path / "b")])
    assert run.exit_code == 0 and "batch size 40 (all prompts): estimated peak" in run.output


@pytest.mark.parametrize("args,message", [
    (["--max-memory", "1MiB"], "for one prompt of 18 tokens; --max-memory is 1.0 MiB; use a shorter task"),
    (["--max-memory", "lots"], "cannot read the memory size 'lots'"),
    (["--max-memory", "4GiB", "--batch-size", "8"], "give --batch-size or --max-memory, not both"),
])
def test_cli_max_memory_errors(toy_ioi, args, message):
    run = CliRunner().invoke(main, ["scores", "ioi", "--method", "eap", "--n", "20", *args])
    assert run.exit_code == 2
    errors = re.findall(r"error: [^\r\n]*", run.output)
    assert len(errors) == 1 and message in errors[0], run.output


# ---- whole jobs: every stage planned before it runs -----------------------------------------------------------------
def test_job_plan_has_every_stage_and_refuses_in_one_line(toy_ioi):
    from acdc import Graph
    from acdc.memory import RUNTIME, plan_job
    from acdc.task import get_task

    graph = Graph.from_model(toy_ioi)
    data = {s: get_task("ioi").build(toy_ioi, 24, split=s) for s in ("train", "test")}
    methods = ["eap", "edge-pruning", "hybrid", "acdc"]
    plan = plan_job(toy_ioi, graph, data, methods, max_memory="64GiB")
    assert plan is not None
    assert set(plan.stages) == {"eap", "edge-pruning", "hybrid (eap-ig-inputs)", "hybrid (sweep+acdc)", "acdc",
                                "exact evaluation (train)", "exact evaluation (test)"}
    # the hybrid's exact stages hold their memory together: more than either alone
    assert plan.stages["hybrid (sweep+acdc)"].total > max(plan.stages["acdc"].total,
                                                          plan.stages["exact evaluation (train)"].total)
    name, peak = plan.peak
    assert name == "hybrid (sweep+acdc)"
    plan.check()  # fits 64 GiB
    tight = plan_job(toy_ioi, graph, data, methods, max_memory=peak.total + RUNTIME - 1)
    assert tight is not None
    with pytest.raises(InputError) as e:
        tight.check()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("this job would not fit in memory: hybrid (sweep+acdc) needs about")
    assert plan_job(toy_ioi, graph, data, methods, max_memory=peak.total + RUNTIME) is not None


@pytest.mark.parametrize("command", [
    ["run", "ioi", "--methods", "eap"], ["pareto", "ioi", "--methods", "eap"],
    ["discover", "ioi", "--method", "acdc"], ["evaluate", "ioi"],
])
def test_cli_refuses_a_job_that_would_not_fit(toy_ioi, tmp_path, command):
    """run, pareto, discover and evaluate check every stage before running any: one line, exit 2, no output."""
    out = ["--out", str(tmp_path / "o")] if command[0] != "evaluate" else []
    run = CliRunner().invoke(main, [*command, "--n", "8", "--max-memory", "100MiB", *out])
    assert run.exit_code == 2, run.output
    errors = re.findall(r"error: [^\r\n]*", run.output)
    assert len(errors) == 1 and "would not fit in memory" in errors[0] and "--max-memory is 100 MiB" in errors[0]
    assert not (tmp_path / "o").exists()


def test_every_registered_method_has_a_memory_model():
    """A method added to the registry is planned by its own model, not by the fallback."""
    from acdc.memory import METHOD_MODELS
    from acdc.methods import method_names

    assert set(method_names()) <= set(METHOD_MODELS)
