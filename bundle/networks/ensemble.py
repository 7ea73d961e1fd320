"""An ensemble of networks of one architecture, averaged: the cross-validation folds as one detector."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """``members`` copies of ``network`` whose sigmoid probabilities are averaged; returns the average's logit.

    nnU-Net's practice: the K fold models of a cross-validation predict together at inference. The state dict holds
    ``members.<k>.<parameter>``, so one checkpoint file carries every member.

    Args:
        network: the member architecture (each member is a deep copy; weights come from the checkpoint).
        members: how many members.
    """

    def __init__(self, network: nn.Module, members: int = 5) -> None:
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = nn.ModuleList([copy.deepcopy(network) for _ in range(int(members))])

    @classmethod
    def from_networks(cls, networks: list[nn.Module]) -> Ensemble:
        """An ensemble holding ``networks`` themselves (e.g. trained fold models), which share one architecture."""
        ens = cls(networks[0], members=1)
        ens.members = nn.ModuleList(networks)
        return ens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-6)
