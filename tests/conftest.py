"""Shared fixtures: small models built locally (no download) and the hook-based reference implementation."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=3, n_head=4, d_model=32, vocab=50, n_ctx=32, seed=1, init_std=0.15)


@pytest.fixture(scope="session")
def tiny64():
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=2, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=2, dtype=torch.float64, init_std=0.15)


@pytest.fixture(scope="session")
def gpt2_small():
    """Randomly initialised model of GPT-2 small's shape (124M parameters), built locally."""
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=12, n_head=12, d_model=768, vocab=50257, n_ctx=1024, seed=0)


@pytest.fixture(scope="session")
def toy_induction():
    """The zoo's induction model (trained on first use, then cached)."""
    from acdc import load_model

    return load_model("zoo:toy-induction")
