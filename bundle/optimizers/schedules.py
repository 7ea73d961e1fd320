"""Large-batch recipe: learning rate scaled with the global batch, gradual warm-up, cosine or cyclic schedules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["scaled_lr", "world_size", "warmup_schedule"]

SCHEDULES = ("cosine", "cyclic", "constant")
SCALINGS = ("linear", "sqrt", "none")


def world_size() -> int:
    """Processes in the distributed run (1 outside one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 128, scaling: str = "linear") -> float:
    """The learning rate for a global batch of ``batch_size`` x processes, from one tuned for ``reference_batch``.

    Goyal et al. (and the supercomputer-scale radiology seed paper): scale linearly with the global batch (with a
    gradual warm-up); "sqrt" is the gentler rule some large-batch work prefers; "none" keeps ``base_lr``.

    Args:
        base_lr: learning rate tuned for ``reference_batch``.
        batch_size: per-process batch size.
        reference_batch: global batch ``base_lr`` was tuned for.
        scaling: "linear", "sqrt" or "none".

    Returns:
        the learning rate to use.

    Raises:
        ValueError: for an unknown ``scaling`` or non-positive sizes.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if batch_size < 1 or reference_batch < 1 or base_lr <= 0:
        raise ValueError(f"need positive base_lr, batch_size, reference_batch; got {base_lr}, {batch_size}, {reference_batch}")
    ratio = batch_size * world_size() / reference_batch
    return float(base_lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[scaling])


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    schedule: str = "cosine",
    warmup_epochs: int = 0,
    cycle_epochs: int = 10,
    min_factor: float = 0.0,
) -> LambdaLR:
    """An epoch-level learning-rate schedule: linear warm-up, then cosine annealing, cosine cycles or constant.

    Stepped once per epoch (MONAI's ``LrScheduleHandler`` with ``epoch_level=True``). During warm-up the rate rises
    linearly from ``1 / (warmup_epochs + 1)`` of the base rate to the base rate; ``cosine`` then anneals to
    ``min_factor`` x base by ``max_epochs``; ``cyclic`` restarts a cosine every ``cycle_epochs`` (SGDR-like cyclic
    rates, as in the seed papers); ``constant`` keeps the base rate.

    Args:
        optimizer: the optimizer whose base rates are scaled.
        max_epochs: training length in epochs.
        schedule: "cosine", "cyclic" or "constant".
        warmup_epochs: epochs of linear warm-up (0: none).
        cycle_epochs: cycle length for "cyclic".
        min_factor: lowest rate as a fraction of the base rate.

    Returns:
        a ``LambdaLR`` scheduler.

    Raises:
        ValueError: for an unknown schedule or inconsistent lengths.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if max_epochs < 1 or warmup_epochs < 0 or cycle_epochs < 1 or not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"invalid lengths: max_epochs={max_epochs}, warmup_epochs={warmup_epochs}, "
                         f"cycle_epochs={cycle_epochs}, min_factor={min_factor}")  # fmt: skip

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        t = epoch - warmup_epochs
        if schedule == "constant":
            return 1.0
        period = cycle_epochs if schedule == "cyclic" else max(1, max_epochs - warmup_epochs)
        phase = (t % period) / period if schedule == "cyclic" else min(t, period) / period
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * phase))

    return LambdaLR(optimizer, lr_lambda=factor)
