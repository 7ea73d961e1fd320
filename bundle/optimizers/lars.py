"""LARS: layer-wise adaptive rate scaling (You et al. 2017), the optimizer of the contrastive pretraining.

Neither torch nor MONAI ships LARS (torch.optim has SGD/Adam/LBFGS/...; MONAI has Novograd), hence this one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer

__all__ = ["LARS"]


class LARS(Optimizer):
    """SGD with momentum whose step per parameter tensor is scaled by its trust ratio.

    For a weight ``w`` with gradient ``g`` (weight decay added: ``g + wd * w``) the local learning rate is
    ``trust_coefficient * ||w|| / ||g + wd * w||`` (1 where either norm is 0), and the update is
    ``v = momentum * v + lr * local_lr * (g + wd * w)``, ``w -= v``. As in SimCLR and SupCon, one-dimensional
    tensors (biases, batch-norm weights) are excluded from the adaptation and the weight decay when
    ``exclude_1d`` is set.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate (the paper: 0.5).
        momentum: momentum factor.
        weight_decay: L2 penalty.
        trust_coefficient: ``eta`` of the trust ratio.
        exclude_1d: skip adaptation and weight decay for 1-D tensors.
        eps: added to the denominator.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.5,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        exclude_1d: bool = True,
        eps: float = 1e-9,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"need weight_decay >= 0 and trust_coefficient > 0, got {weight_decay}, {trust_coefficient}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude_1d=exclude_1d,
            eps=eps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                adapt = not (group["exclude_1d"] and p.ndim <= 1)
                if adapt:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)
        return loss
