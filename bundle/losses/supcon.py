"""Supervised contrastive loss (Khosla et al. 2020; the paper's eqs. 4-5), per label and summed over labels."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiLabelSupConLoss", "SupConLoss"]


class SupConLoss(nn.Module):
    """Supervised contrastive loss of L2-normalised embeddings of ``V`` views of ``N`` samples.

    For each of the ``N * V`` anchors ``i``, with ``P(i)`` the other views whose label equals ``i``'s (its own
    other views included) and ``A(i)`` all views but ``i``::

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

    (the paper's eq. 4). The loss is the mean of ``L_i`` over anchors (Khosla et al.'s implementation; eq. 4 writes
    the sum, which only scales it by ``N * V``) times ``temperature / base_temperature``. Anchors without a
    positive (a single view of a unique label) are left out.

    Args:
        temperature: ``tau``.
        base_temperature: scale reference (Khosla et al.: 0.07); equal to ``temperature`` for the plain formula.

    ``forward(features, labels)``: ``features`` ``(N, V, D)`` normalised embeddings, ``labels`` ``(N,)``.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature if base_temperature is not None else temperature)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3:
            raise ValueError(f"features must be (N, V, D), got {tuple(features.shape)}")
        n, v = features.shape[:2]
        labels = labels.reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"need one label per sample: {n} samples, {labels.numel()} labels")
        z = features.transpose(0, 1).reshape(n * v, -1)  # view-major: anchors 0..N-1 are the first views
        lab = labels.repeat(v)
        logits = z @ z.t() / self.temperature
        self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (lab[:, None] == lab[None, :]) & ~self_mask
        n_pos = pos.sum(1)
        keep = n_pos > 0
        if not keep.any():
            return features.sum() * 0.0
        mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[keep] / n_pos[keep]
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()


class MultiLabelSupConLoss(nn.Module):
    """The sum of :class:`SupConLoss` over label columns: the three attributes and QA (the paper's eq. 5).

    Args:
        temperature, base_temperature: see :class:`SupConLoss`.
        label_weights: optional weight per label column (default 1 each).

    ``forward(features, labels)``: ``features`` ``(N, V, D)``, ``labels`` ``(N, L)`` binary.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None, label_weights=None) -> None:
        super().__init__()
        self.supcon = SupConLoss(temperature, base_temperature)
        self.label_weights = None if label_weights is None else [float(w) for w in label_weights]

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim != 2:
            raise ValueError(f"labels must be (N, L), got {tuple(labels.shape)}")
        weights = self.label_weights or [1.0] * labels.shape[1]
        if len(weights) != labels.shape[1]:
            raise ValueError(f"{len(weights)} label_weights for {labels.shape[1]} labels")
        return sum(w * self.supcon(features, labels[:, k]) for k, w in enumerate(weights))
