"""The hard-concrete distribution (Louizos et al. 2018) as edge pruning uses it (Bhaskar et al. 2024): a stretched,
clipped binary concrete whose samples are exactly 0 or 1 with positive probability, so an L0 penalty is
differentiable through ``log alpha``."""

from __future__ import annotations

import torch

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
"""Temperature and stretch interval (gamma, zeta)."""


def sample(log_alpha: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """A mask in [0, 1] for uniform noise ``u`` (same shape), or the deterministic one (``u=None``)."""
    if u is None:
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def expected_kept(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(mask > 0) for each entry: the expected L0 norm's terms."""
    shift = BETA * torch.log(torch.tensor(-GAMMA / ZETA))  # float32, as trained so far (results are bit-stable)
    return torch.sigmoid(log_alpha - shift)
