"""An ensemble of networks of one architecture, averaged: the cross-validation folds as one detector."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["Ensemble", "FlipTTA"]


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

    @property
    def uses_scan_prior(self) -> bool:
        """Whether the members need their scan's features (:func:`bundle.networks.qa.scan_context`)."""
        return any(getattr(m, "uses_scan_prior", False) for m in self.members)

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """The members' combined output; ``args`` (e.g. a QA network's scan features) go to every member."""
        if len(self.members) == 1:
            return self.members[0](x, *args)
        if self.combine == "logit":
            return torch.stack([m(x, *args).float() for m in self.members]).mean(0)
        p = torch.stack([torch.sigmoid(m(x, *args).float()) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-6)


class FlipTTA(nn.Module):
    """Test-time augmentation by flips: ``network``'s sigmoid probabilities averaged over the input flipped along
    each of ``flips`` (spatial dimension tuples of ``(N, C, H, W)``, ``()`` the unflipped input), returned as the
    logit of the average, as :class:`Ensemble` combines members.

    Args:
        network: a network mapping ``(N, C, H, W)`` to logits of the same spatial size.
        flips: the flips, e.g. ``((), (2,), (3,), (2, 3))`` (both in-plane axes and both together).

    Raises:
        ValueError: for no flip or a flip of a non-spatial dimension.
    """

    def __init__(self, network: nn.Module, flips: tuple = ((), (2,), (3,), (2, 3))) -> None:
        super().__init__()
        self.flips = tuple(tuple(int(d) for d in f) for f in flips)
        if not self.flips or any(d < 2 for f in self.flips for d in f):
            raise ValueError(f"flips must be tuples of spatial dimensions (>= 2), got {flips}")
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [
            torch.sigmoid(self.network(x.flip(f)).float()).flip(f) if f else torch.sigmoid(self.network(x).float())
            for f in self.flips
        ]
        return torch.logit(torch.stack(probs).mean(0), eps=1e-6)
