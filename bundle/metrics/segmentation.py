"""Stage-1 metrics: per-volume (3D) Dice from slice predictions, and slice-level LA presence."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.handlers import from_engine
from monai.utils import evenly_divisible_all_gather

_PRED_LABEL = from_engine(["pred", "label"])  # the default output transform: one callable, built once

__all__ = ["VolumeDice", "la_presence", "mask_metrics", "volume_dice"]


def _as_tensor(x) -> torch.Tensor:
    return torch.stack([torch.as_tensor(i) for i in x]) if isinstance(x, (list, tuple)) else torch.as_tensor(x)


def la_presence(output: Sequence[dict] | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice-level LA presence from an evaluator's (decollated) output, for MONAI's ``ConfusionMatrix`` handler.

    A slice contains the LA when any pixel of its binarised prediction (the postprocessing thresholds the
    sigmoid at ``t``) is set: the paper's slice selection rule.

    Args:
        output: ``engine.state.output``, a list of per-slice dicts (or one batched dict) with ``pred`` and
            ``label`` of shape ``(1, h, w)``.

    Returns:
        predicted and true presence, each of shape ``(batch, 1)``.
    """
    pred, label = from_engine(["pred", "label"])(output)
    pred, label = _as_tensor(pred), _as_tensor(label)
    return (pred.flatten(1) > 0.5).any(1, keepdim=True).float(), (label.flatten(1) > 0.5).any(1, keepdim=True).float()


def volume_dice(intersection: float, pred_sum: float, label_sum: float) -> float:
    """Dice of one volume from its summed intersection and sizes; NaN when both are empty."""
    total = pred_sum + label_sum
    return float("nan") if total == 0 else 2.0 * intersection / total


class VolumeDice(Metric):
    """3D Dice per volume, averaged over volumes, from binarised per-slice predictions.

    MONAI's ``DiceMetric`` scores each item of a batch on its own; here the items are slices and a volume's
    slices are spread over batches, so intersections and sizes are summed per volume id (read from the
    engine's batch) and the Dice is taken once per volume at the end of the epoch. Volumes without LA in both
    prediction and label are left out of the mean.

    Args:
        output_transform: maps ``engine.state.output`` to ``(pred, label)``.
        volume_key: key of the volume id in the engine's batch items.
    """

    def __init__(self, output_transform: Callable = _PRED_LABEL, volume_key: str = "volume") -> None:
        self.volume_key = volume_key
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(3))

    def update(self, output: tuple) -> None:
        """``output``: ``(pred, label, volume_ids)`` with pred and label ``(batch, 1, h, w)`` binary."""
        pred, label, volumes = output
        pred, label = _as_tensor(pred).flatten(1) > 0.5, _as_tensor(label).flatten(1) > 0.5
        inter, ps, ls = (pred & label).sum(1), pred.sum(1), label.sum(1)
        for v, i, p, g in zip(volumes, inter.tolist(), ps.tolist(), ls.tolist()):
            self._sums[int(v)] += (i, p, g)

    def _gathered_sums(self) -> dict[int, np.ndarray]:
        """Per-volume sums over all ranks: in a distributed run a volume's slices may be spread over ranks."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self._sums
        rows = torch.tensor([[v, *s] for v, s in self._sums.items()], dtype=torch.float64).reshape(-1, 4)
        if dist.get_backend() == "nccl":
            rows = rows.cuda()
        merged: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(3))
        for v, *s in evenly_divisible_all_gather(rows, concat=True).cpu().tolist():
            merged[int(v)] += s
        return merged

    def compute(self) -> float:
        scores = [volume_dice(*s) for s in self._gathered_sums().values()]
        scores = [s for s in scores if not np.isnan(s)]
        return float(np.mean(scores)) if scores else float("nan")

    def iteration_completed(self, engine: Engine) -> None:
        pred, label = self._output_transform(engine.state.output)
        batch = engine.state.batch
        volumes = [b[self.volume_key] for b in batch] if isinstance(batch, list) else list(batch[self.volume_key])
        self.update((pred, label, [int(v) for v in volumes]))


def mask_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    axis: int,
    selected: Sequence[int] | None = None,
) -> dict[str, float]:
    """Stage 1 scored in a scan's own grid: 3D Dice, HD95 and average surface distance (mm), LA slices, volume.

    HD95 and the (symmetric) average surface distance are MONAI's ``compute_hausdorff_distance`` (95th percentile)
    and ``compute_average_surface_distance`` with the voxel ``spacing``; they are NaN when either mask is empty.
    Slice presence compares the slices the pipeline selected (``selected``; default: those where ``pred`` has any
    voxel) with those where ``label`` has any.

    Args:
        pred: the predicted mask ``(X, Y, Z)`` (or ``(1, X, Y, Z)``), in the label's grid.
        label: the reference mask.
        spacing: voxel size (mm) along the 3 axes.
        axis: the slice axis.
        selected: indices of the slices the pipeline selected as LA slices.

    Returns:
        ``dice``, ``hd95_mm``, ``asd_mm``, ``slice_precision``, ``slice_recall``, ``slice_f1``, ``volume_ml``,
        ``label_volume_ml``, ``volume_error_ml`` (predicted minus reference) and ``abs_volume_error_ml``.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred) > 0
    g = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label) > 0
    p, g = (p[0] if p.ndim == 4 else p), (g[0] if g.ndim == 4 else g)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and label {g.shape} are not on one grid")
    sp = [float(x) for x in spacing]
    inter, ps, gs = float((p & g).sum()), float(p.sum()), float(g.sum())
    out = {"dice": volume_dice(inter, ps, gs)}
    if ps and gs:
        pt, gt = (torch.as_tensor(x[None, None].astype(np.float32)) for x in (p, g))
        out["hd95_mm"] = float(compute_hausdorff_distance(pt, gt, include_background=True, percentile=95, spacing=sp))
        out["asd_mm"] = float(
            compute_average_surface_distance(pt, gt, include_background=True, symmetric=True, spacing=sp)
        )
    else:
        out["hd95_mm"] = out["asd_mm"] = float("nan")
    other = tuple(i for i in range(3) if i != int(axis))
    truth = g.any(axis=other)
    chosen = np.zeros_like(truth)
    chosen[np.asarray(list(selected) if selected is not None else np.flatnonzero(p.any(axis=other)), int)] = True
    tp, fp, fn = float((chosen & truth).sum()), float((chosen & ~truth).sum()), float((~chosen & truth).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    out.update(
        slice_precision=prec, slice_recall=rec, slice_f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    )
    voxel_ml = float(np.prod(sp)) / 1000.0
    out.update(
        volume_ml=ps * voxel_ml,
        label_volume_ml=gs * voxel_ml,
        volume_error_ml=(ps - gs) * voxel_ml,
        abs_volume_error_ml=abs(ps - gs) * voxel_ml,
    )
    return out
