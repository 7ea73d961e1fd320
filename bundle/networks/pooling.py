"""Attention pooling of a scan's slices (multiple-instance learning), as HAMIL-QA pools the slices of a scan.

MONAI's ``MILModel`` computes the same kind of attention inside a whole-slide classifier with its own backbone and
no way to use the attention on its own; this module is that attention alone, on any instance features.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentionPooling"]


class AttentionPooling(nn.Module):
    """Gated attention pooling of a bag of instance features (Ilse, Tomczak and Welling, ICML 2018).

    Each instance ``h_i`` gets a score ``w^T (tanh(V h_i) * sigmoid(U h_i))``; the softmax of the scores over the bag
    weighs the instances' average. The result does not depend on the instances' order.

    Args:
        in_features: size of an instance's features.
        hidden: size of the attention's hidden layer.
        gated: use the sigmoid gate (False: ``w^T tanh(V h_i)``).

    Raises:
        ValueError: for a non-positive size.
    """

    def __init__(self, in_features: int, hidden: int = 32, gated: bool = True) -> None:
        super().__init__()
        if int(in_features) < 1 or int(hidden) < 1:
            raise ValueError(f"in_features and hidden must be positive, got {in_features}, {hidden}")
        self.attention = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh())
        self.gate = nn.Sequential(nn.Linear(in_features, hidden), nn.Sigmoid()) if gated else None
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` ``(B, N, F)``; ``mask`` ``(B, N)`` marks the real instances of bags padded to ``N`` (True).

        Returns:
            the pooled features ``(B, F)`` and the attention weights ``(B, N)`` (summing to 1 over each bag).

        Raises:
            ValueError: for a wrong shape or a bag without any instance.
        """
        if x.ndim != 3:
            raise ValueError(f"expected instance features (B, N, F), got shape {tuple(x.shape)}")
        a = self.attention(x)
        if self.gate is not None:
            a = a * self.gate(x)
        scores = self.score(a).squeeze(-1)
        if mask is not None:
            if mask.shape != scores.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the bags {tuple(scores.shape)}")
            if not bool(mask.any(1).all()):
                raise ValueError("every bag needs at least one instance")
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bn,bnf->bf", weights, x), weights
