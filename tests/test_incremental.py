"""The incremental engine behind the fast ACDC: every candidate it evaluates has the logits of the masked forward of
the same circuit at the metric positions, along a random walk of removals and commits, for GPT-2, Llama and Qwen2
(rotary, grouped-query attention) and every ablation."""

from __future__ import annotations

import pytest
import torch

from acdc import Graph
from acdc.arch import get_arch
from acdc.incremental import Incremental, forward_flops
from acdc.patching import ablation_cache, masked_forward
from acdc.types import TaskData


def _data(vocab: int, seed: int, B: int = 5, P: int = 9) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (B, P), generator=g)
    corrupt = torch.randint(0, vocab, (B, P), generator=g)
    pos = torch.zeros(B, P, dtype=torch.bool)
    pos[0, 6] = True  # metric positions differ per prompt, and so do their counts (padding of the index)
    pos[1, [2, 5, 6]] = True
    pos[2, 4] = True
    pos[3, [3, 6]] = True
    pos[4, 1] = True  # nothing after position 6 matters: the engine stops there
    answers = torch.randint(0, vocab, (B, P), generator=g)
    wrong = torch.randint(0, vocab, (B, P), generator=g)
    return TaskData(clean, corrupt, pos, answers, wrong, "logit_diff")


def _models():
    from acdc.models import random_gpt2
    from tests.test_llama import _build

    yield "gpt2", random_gpt2(n_layer=3, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=4, dtype=torch.float64,
                              init_std=0.2)
    yield "llama", _build("llama", torch.float64)
    yield "qwen2", _build("qwen2", torch.float64)


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])
def model(request):
    return dict(_models())[request.param]


@pytest.mark.parametrize("ablation", ["patch", "mean", "zero"])
def test_candidates_equal_the_masked_forward(model, ablation):
    graph = Graph.from_model(model)
    arch = get_arch(model)
    data = _data(model.cfg.d_vocab, seed=3)
    cache = ablation_cache(model, graph, data.corrupt if ablation != "zero" else None, ablation)
    eng = Incremental(arch, graph, data.clean, cache, data)
    idx, real = eng.T.index, eng.sub.positions

    def at_metric(logits: torch.Tensor) -> torch.Tensor:  # [K, B, P, V] -> [K, B, n, V], padding zeroed
        out = logits.gather(2, idx.view(1, *idx.shape, 1).expand(logits.shape[0], *idx.shape, logits.shape[-1]))
        return out * real.view(1, *real.shape, 1)

    def check(got: torch.Tensor, masks: torch.Tensor) -> None:
        ref = masked_forward(model, graph, data.clean, cache, masks.double())
        torch.testing.assert_close(got * real.view(1, *real.shape, 1), at_metric(ref), rtol=1e-9, atol=1e-9)

    with torch.no_grad():
        full = eng.reset(graph.valid)
        check(full.unsqueeze(0), graph.valid.unsqueeze(0))
        gen = torch.Generator().manual_seed(0)
        mask = graph.valid.clone()
        for _ in range(25):
            live = mask.any(0).nonzero().flatten()
            r = int(live[torch.randint(len(live), (1,), generator=gen)])
            cands = mask[:, r].nonzero().flatten()
            cands = cands[torch.randperm(len(cands), generator=gen)][:3].tolist()
            trials = mask.unsqueeze(0).repeat(len(cands), 1, 1)
            for j, u in enumerate(cands):
                trials[j:, u, r] = False
            check(eng.propagate(trials, {r}), trials)
            j = int(torch.randint(len(cands), (1,), generator=gen))
            eng.commit(j)
            mask = trials[j]
        # a fresh state for an arbitrary circuit
        rand = graph.valid & (torch.rand(graph.valid.shape, generator=gen) < 0.5)
        check(eng.reset(rand).unsqueeze(0), rand.unsqueeze(0))
    assert 0 < eng.flops


def test_forward_flops_counts_every_matmul():
    from acdc.models import random_gpt2

    m = random_gpt2(n_layer=2, n_head=2, d_model=8, vocab=10, n_ctx=8, seed=0)
    arch = get_arch(m)
    # per layer per token: q/k/v 2*8*6*4, out 2*8*8, mlp 2*8*32*2; scores/values 4*2*P*4 per token; unembed 2*8*10
    P = 3
    want = 2 * ((2 * 8 * 24 + 2 * 8 * 8 + 2 * 8 * 32 * 2) * P + 4 * 2 * P * P * 4) + 2 * P * 8 * 10
    assert forward_flops(arch, 1, P) == want
