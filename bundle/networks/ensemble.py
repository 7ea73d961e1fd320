"""An ensemble of networks of one architecture, averaged: the cross-validation folds as one detector."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """``members`` copies of ``network`` whose outputs are averaged: sigmoid probabilities (returning the average's
    logit) or logits.

    nnU-Net's practice: the K fold models of a cross-validation predict together at inference. The state dict holds
    ``members.<k>.<parameter>``, so one checkpoint file carries every member.

    Args:
        network: the member architecture (each member is a deep copy; weights come from the checkpoint).
        members: how many members.
        combine: ``"prob"`` (the detector's: the logit of the mean probability) or ``"logit"`` (the mean logit, as
            the LA-region QA network's scan verdict pools its slices).
    """

    def __init__(self, network: nn.Module, members: int = 5, combine: str = "prob") -> None:
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if combine not in ("prob", "logit"):
            raise ValueError(f"combine must be 'prob' or 'logit', got {combine!r}")
        self.combine = combine
        self.members = nn.ModuleList([copy.deepcopy(network) for _ in range(int(members))])

    @classmethod
    def from_networks(cls, networks: list[nn.Module], combine: str = "prob") -> Ensemble:
        """An ensemble holding ``networks`` themselves (e.g. trained fold models), which share one architecture."""
        ens = cls(networks[0], members=1, combine=combine)
        ens.members = nn.ModuleList(networks)
        return ens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        if self.combine == "logit":
            return torch.stack([m(x).float() for m in self.members]).mean(0)
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-6)
