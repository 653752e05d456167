"""The masked forward: identities, a hook-based reference, gradients, ablations, and input errors."""

from __future__ import annotations

import pytest
import torch
from reference import reference_masked_forward

from acdc import Graph, ablation_cache, masked_forward, run_with_writers
from acdc.errors import InputError, ShapeError
from acdc.metrics import answer_logprob

TOL = 1e-4


def _tokens(model, b: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = model.cfg.d_vocab
    return torch.randint(0, v, (b, p), generator=g), torch.randint(0, v, (b, p), generator=g)


def _identities(model, b: int = 4, p: int = 12) -> None:
    graph = Graph.from_model(model)
    clean, corrupt = _tokens(model, b, p, seed=3)
    with torch.no_grad():
        want_clean, want_corrupt = model(clean), model(corrupt)
        ones = torch.ones(graph.n_src, graph.n_dst)
        both = masked_forward(model, graph, clean, corrupt, torch.stack([ones, torch.zeros_like(ones)]))
    assert both.shape == (2, b, p, model.cfg.d_vocab)
    assert (both[0] - want_clean).abs().max() <= TOL
    assert (both[1] - want_corrupt).abs().max() <= TOL
    # The two runs differ, so the identities are not vacuous.
    assert (want_clean - want_corrupt).abs().max() > 100 * TOL


def test_identities_tiny(tiny):
    _identities(tiny)


def test_identities_gpt2_small_shape(gpt2_small):
    _identities(gpt2_small, b=2, p=8)


def test_identities_toy_induction(toy_induction):
    _identities(toy_induction, b=4, p=24)


@pytest.mark.parametrize("kind", ["binary", "fractional"])
def test_matches_hook_reference(tiny, kind):
    graph = Graph.from_model(tiny)
    clean, corrupt = _tokens(tiny, 3, 10, seed=5)
    gen = torch.Generator().manual_seed(11)
    masks = torch.rand(4, graph.n_src, graph.n_dst, generator=gen)
    if kind == "binary":
        masks = (masks > 0.5).float()
    with torch.no_grad():
        got = masked_forward(tiny, graph, clean, corrupt, masks)
        for k in range(masks.shape[0]):
            want = reference_masked_forward(tiny, graph, clean, corrupt, masks[k])
            assert (got[k] - want).abs().max() <= TOL, f"mask {k}"
        # and each mask alone gives the same as in the batch
        alone = masked_forward(tiny, graph, clean, corrupt, masks[2])
        assert (alone - got[2]).abs().max() <= 1e-5


def test_matches_hook_reference_toy_induction(toy_induction):
    graph = Graph.from_model(toy_induction)
    clean, corrupt = _tokens(toy_induction, 2, 20, seed=7)
    masks = (torch.rand(2, graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    with torch.no_grad():
        got = masked_forward(toy_induction, graph, clean, corrupt, masks)
        for k in range(2):
            want = reference_masked_forward(toy_induction, graph, clean, corrupt, masks[k])
            assert (got[k] - want).abs().max() <= TOL


def test_single_edge_matters(tiny):
    """Removing one edge changes exactly what the reference says it changes (not a no-op)."""
    graph = Graph.from_model(tiny)
    clean, corrupt = _tokens(tiny, 2, 8, seed=9)
    mask = torch.ones(graph.n_src, graph.n_dst)
    mask[graph.head_writer(0, 1), graph.attn_readers(2).start + 2] = 0  # a0.h1 -> a2.h2<q>
    with torch.no_grad():
        got = masked_forward(tiny, graph, clean, corrupt, mask)
        want = reference_masked_forward(tiny, graph, clean, corrupt, mask)
        assert (got - want).abs().max() <= TOL
        assert (got - tiny(clean)).abs().max() > 100 * TOL


def test_gradient_matches_finite_differences(tiny64):
    graph = Graph.from_model(tiny64)
    clean, corrupt = _tokens(tiny64, 3, 8, seed=13)
    positions = torch.zeros(3, 8, dtype=torch.bool)
    positions[:, -3:] = True
    answers = torch.randint(0, tiny64.cfg.d_vocab, (3, 8), generator=torch.Generator().manual_seed(1))
    cache = ablation_cache(tiny64, graph, corrupt)

    def metric(m: torch.Tensor) -> torch.Tensor:
        return answer_logprob(masked_forward(tiny64, graph, clean, cache, m), positions, answers).mean()

    point = torch.rand(graph.n_src, graph.n_dst, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m = point.clone().requires_grad_(True)
    metric(m).backward()
    grad = m.grad
    assert grad is not None
    assert (grad[~graph.valid] == 0).all()
    edges = graph.valid.nonzero()
    pick = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:25]]
    eps = 1e-5
    with torch.no_grad():
        for s, d in pick.tolist():
            up, down = point.clone(), point.clone()
            up[s, d] += eps
            down[s, d] -= eps
            fd = (metric(up) - metric(down)) / (2 * eps)
            assert abs(float(fd) - float(grad[s, d])) <= 1e-6 + 1e-5 * abs(float(fd)), (s, d)
    assert grad[graph.valid].abs().max() > 1e-4  # gradients are not trivially zero


def test_batched_gradient_equals_per_mask_gradient(tiny):
    graph = Graph.from_model(tiny)
    clean, corrupt = _tokens(tiny, 2, 6, seed=17)
    masks = torch.rand(3, graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(2))
    m = masks.clone().requires_grad_(True)
    masked_forward(tiny, graph, clean, corrupt, m)[..., -1, :].logsumexp(-1).sum().backward()
    for k in range(3):
        mk = masks[k].clone().requires_grad_(True)
        masked_forward(tiny, graph, clean, corrupt, mk)[..., -1, :].logsumexp(-1).sum().backward()
        assert torch.allclose(m.grad[k], mk.grad, atol=1e-5, rtol=1e-4)


def test_mean_and_zero_ablation(tiny):
    graph = Graph.from_model(tiny)
    clean, ref = _tokens(tiny, 4, 10, seed=19)
    zeros = torch.zeros(graph.n_src, graph.n_dst)
    with torch.no_grad():
        # mean ablation with the empty circuit: every reader sees the mean residual of the reference prompts
        mean_cache = ablation_cache(tiny, graph, ref, "mean")
        _, ref_cache = run_with_writers(tiny, ref)
        assert torch.allclose(mean_cache.writers[:, 0], ref_cache.writers.mean(1), atol=1e-6)
        out = masked_forward(tiny, graph, clean, ref, zeros, ablation="mean")
        mask = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(5)) > 0.5
        # the reference implementation with a constant "counterfactual" equal to the mean: compare on one mask
        got = masked_forward(tiny, graph, clean, mean_cache, mask.float())
        assert got.shape == out.shape
        # zero ablation of every edge: output is independent of the prompt
        z1 = masked_forward(tiny, graph, clean, None, zeros, ablation="zero")
        z2 = masked_forward(tiny, graph, ref, None, zeros, ablation="zero")
        assert (z1 - z2).abs().max() <= 1e-5
        # ... and empty-circuit mean ablation also ignores the clean prompt
        out2 = masked_forward(tiny, graph, ref, ref, zeros, ablation="mean")
        assert (out - out2).abs().max() <= 1e-5
        # full circuit is the clean model under every ablation
        ones = torch.ones_like(zeros)
        for abl, cf in (("mean", ref), ("zero", None)):
            assert (masked_forward(tiny, graph, clean, cf, ones, ablation=abl) - tiny(clean)).abs().max() <= TOL


def test_mean_ablation_equals_patching_with_mean_activations(tiny):
    """Mean ablation is patching where every counterfactual prompt is replaced by the average writer outputs."""
    graph = Graph.from_model(tiny)
    clean, ref = _tokens(tiny, 3, 7, seed=23)
    mean_cache = ablation_cache(tiny, graph, ref, "mean")
    expanded = type(mean_cache)(
        "patch",
        mean_cache.writers.expand(-1, 3, -1, -1),
        mean_cache.base_attn.expand(-1, 3, -1, -1),
        mean_cache.base_mlp.expand(-1, 3, -1, -1),
        mean_cache.base_final.expand(3, -1, -1),
    )
    mask = (torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(8)) > 0.4).float()
    with torch.no_grad():
        a = masked_forward(tiny, graph, clean, mean_cache, mask)
        b = masked_forward(tiny, graph, clean, expanded, mask)
    assert (a - b).abs().max() <= 1e-5
    # the mean base residual is the sum of the mean writers plus the constant attention biases
    bias = tiny.b_O.detach().sum(0)
    assert torch.allclose(mean_cache.base_final[0], mean_cache.writers[:, 0].sum(0) + bias, atol=1e-4)


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_mismatched_shapes(tiny):
    graph = Graph.from_model(tiny)
    clean, corrupt = _tokens(tiny, 2, 6, seed=1)
    ones = torch.ones(graph.n_src, graph.n_dst)
    with pytest.raises(ShapeError, match=r"clean \[2, 6\] and corrupt \[2, 5\] must have the same shape"):
        masked_forward(tiny, graph, clean, corrupt[:, :5], ones)
    with pytest.raises(ShapeError, match=r"mask has shape \[3, 4\], this graph needs \[16, 40\]"):
        masked_forward(tiny, graph, clean, corrupt, torch.ones(3, 4))
    with pytest.raises(ShapeError, match=r"clean must be an integer tensor of token ids \[batch, pos\]"):
        masked_forward(tiny, graph, clean.float(), corrupt, ones)
    with pytest.raises(ShapeError, match=r"outside the model's vocabulary \[0, 50\)"):
        masked_forward(tiny, graph, clean + 1000, corrupt, ones)
    other = Graph.from_config(2, 4)
    with pytest.raises(ShapeError, match="does not belong to this model"):
        masked_forward(tiny, other, clean, corrupt, torch.ones(other.n_src, other.n_dst))
    with pytest.raises(InputError, match="unknown ablation 'resample'"):
        masked_forward(tiny, graph, clean, corrupt, ones, ablation="resample")  # type: ignore[arg-type]


def _structured_masks(graph: Graph, k: int, seed: int) -> torch.Tensor:
    """Masks whose reader columns are, at random, all zeros, all ones or mixed (as circuits and ACDC make them)."""
    gen = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (k, 1, graph.n_dst), generator=gen)
    rand = (torch.rand(k, graph.n_src, graph.n_dst, generator=gen) > 0.5).float()
    return torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, rand))


def test_shared_reader_inputs_match_reference_and_grad_path(tiny):
    """The no-gradient path shares inputs between readers with all-0/all-1 columns; it must change nothing."""
    graph = Graph.from_model(tiny)
    clean, corrupt = _tokens(tiny, 3, 9, seed=29)
    masks = _structured_masks(graph, 3, seed=3)
    for ablation, cf in (("patch", corrupt), ("mean", corrupt), ("zero", None)):
        cache = ablation_cache(tiny, graph, cf, ablation)
        with torch.no_grad():
            fast = masked_forward(tiny, graph, clean, cache, masks)
        slow = masked_forward(tiny, graph, clean, cache, masks.clone().requires_grad_(True)).detach()
        assert (fast - slow).abs().max() <= 1e-5, ablation
    with torch.no_grad():
        got = masked_forward(tiny, graph, clean, corrupt, masks)
        for k in range(3):
            want = reference_masked_forward(tiny, graph, clean, corrupt, masks[k])
            assert (got[k] - want).abs().max() <= TOL
