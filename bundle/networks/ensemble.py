"""Ensembles of networks, averaged: the cross-validation folds as one detector, and members trained at another pixel
size run inside one inferer (:class:`Rescaled`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Ensemble", "FlipTTA", "Rescaled"]


class Ensemble(nn.Module):
    """``members`` copies of ``network`` whose outputs are averaged: sigmoid probabilities (returning the average's
    logit) or logits.

    nnU-Net's practice: the K fold models of a cross-validation predict together at inference. The state dict holds
    ``members.<k>.<parameter>``, so one checkpoint file carries every member. ``network`` may be a list of
    architectures (e.g. one detector recipe at two pixel sizes, the second :class:`Rescaled`): each gets ``members``
    copies, in order, so member ``g * members + k`` is fold ``k``'s model of architecture ``g`` (:meth:`subset`
    picks one fold's).

    Args:
        network: the member architecture, or a list of them (each member is a deep copy; weights come from the
            checkpoint).
        members: how many members (of each architecture).
        combine: ``"prob"`` (the detector's: the logit of the mean probability) or ``"logit"`` (the mean logit, as
            the LA-region QA network's scan verdict pools its slices).

    Raises:
        ValueError: for fewer than one member or architecture, or an unknown ``combine``.
    """

    def __init__(self, network: nn.Module | Sequence[nn.Module], members: int = 5, combine: str = "prob") -> None:
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if combine not in ("prob", "logit"):
            raise ValueError(f"combine must be 'prob' or 'logit', got {combine!r}")
        networks = list(network) if isinstance(network, Sequence) else [network]
        if not networks:
            raise ValueError("network must be a network or a non-empty list of networks")
        self.combine = combine
        self.members = nn.ModuleList([copy.deepcopy(n) for n in networks for _ in range(int(members))])

    @classmethod
    def from_networks(cls, networks: list[nn.Module], combine: str = "prob") -> Ensemble:
        """An ensemble holding ``networks`` themselves (e.g. trained fold models)."""
        ens = cls(networks[0], members=1, combine=combine)
        ens.members = nn.ModuleList(networks)
        return ens

    def subset(self, index: int, period: int) -> Ensemble:
        """The members ``index``, ``index + period``, ... (sharing their weights): with ``period`` the number of folds,
        fold ``index``'s models of every architecture, which score fold ``index``'s held-out patients.

        Raises:
            ValueError: when the members do not come in groups of ``period`` or ``index`` is outside them.
        """
        if period < 1 or len(self.members) % period or not 0 <= index < period:
            raise ValueError(f"{len(self.members)} members do not split into {period} folds to pick fold {index} from")
        return Ensemble.from_networks(list(self.members)[index::period], combine=self.combine)

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


class Rescaled(nn.Module):
    """A network trained at another pixel size, run on this inferer's slices: its input resampled by ``scale``
    (bilinear), its logits resampled back to the input's size.

    A detector trained at 1.25 mm pixels inside a 1.0 mm inferer is ``Rescaled(network, scale=0.8)``: a 160-pixel
    window (160 mm) becomes the 128 pixels (160 mm) it was trained on. The window in mm, the 2.5D context and the
    slice axis must be the training's (:func:`bundle.evaluation.crossval.export_ensemble` checks them).

    Args:
        network: maps ``(N, C, h, w)`` to logits ``(N, K, h, w)``.
        scale: the inferer's pixel size over the network's (> 0).

    Raises:
        ValueError: for a scale that is not positive.
    """

    def __init__(self, network: nn.Module, scale: float) -> None:
        super().__init__()
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.network = network
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if self.scale == 1.0:
            return self.network(x)
        inner = tuple(max(1, round(s * self.scale)) for s in size)
        y = self.network(F.interpolate(x, size=inner, mode="bilinear", align_corners=False))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
