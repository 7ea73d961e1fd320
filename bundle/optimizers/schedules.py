"""Large-batch recipe: learning rate scaled with the global batch, gradual warm-up, cosine or cyclic schedules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["scaled_lr", "world_size", "warmup_schedule"]

SCHEDULES = ("cosine", "cyclic", "constant")
SCALINGS = ("linear", "sqrt", "none")


def world_size() -> int:
    """Processes in the distributed run (1 outside one), as ignite counts them (it finds a process group that
    ``torchrun`` and :func:`bundle.utils.init_distributed` made)."""
    import ignite.distributed as idist

    return int(idist.get_world_size())


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
        raise ValueError(
            f"need positive base_lr, batch_size, reference_batch; got {base_lr}, {batch_size}, {reference_batch}"
        )
    ratio = batch_size * world_size() / reference_batch
    return float(base_lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[scaling])


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    schedule: str = "cosine",
    warmup_epochs: int = 0,
    cycle_epochs: int = 10,
    min_factor: float = 0.0,
) -> LRScheduler:
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
        torch's own schedulers: ``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts`` or ``ConstantLR``, after a
        ``LinearLR`` warm-up in a ``SequentialLR`` when ``warmup_epochs`` > 0.

    Raises:
        ValueError: for an unknown schedule or inconsistent lengths.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if max_epochs < 1 or warmup_epochs < 0 or cycle_epochs < 1 or not 0.0 <= min_factor <= 1.0:
        raise ValueError(
            f"invalid lengths: max_epochs={max_epochs}, warmup_epochs={warmup_epochs}, "
            f"cycle_epochs={cycle_epochs}, min_factor={min_factor}"
        )

    from torch.optim import lr_scheduler as lrs

    base = [g["lr"] for g in optimizer.param_groups]
    if schedule == "constant":
        main = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif schedule == "cyclic":
        main = lrs.CosineAnnealingWarmRestarts(optimizer, T_0=cycle_epochs, eta_min=min_factor * base[0])
    else:
        main = lrs.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup_epochs), eta_min=min_factor * base[0])
    if not warmup_epochs:
        return main
    w = int(warmup_epochs)  # (epoch + 1) / (w + 1) of the base rate in epochs 0..w-1
    warm = lrs.LinearLR(optimizer, start_factor=1 / (w + 1), end_factor=w / (w + 1), total_iters=max(1, w - 1))
    return lrs.SequentialLR(optimizer, [warm, main], milestones=[w])
