"""The QA loss (eq. 1: BCE over the three attributes and QA) and the multi-task loss (eq. 3: plus Dice)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from monai.losses import DiceLoss

from bundle.networks.qa import LABELS, qa_logits

__all__ = ["MultiTaskLoss", "QALoss", "balanced_pos_weight", "resolve_pos_weight"]


def balanced_pos_weight(targets: np.ndarray | Sequence[Sequence[float]], max_weight: float = 10.0) -> list[float]:
    """Per-label positive-class weights ``negatives / positives`` that balance BCE over a training set.

    Args:
        targets: binary targets ``(n, labels)``.
        max_weight: cap (and value for a label without positives).

    Returns:
        one weight per label.
    """
    t = np.asarray(targets, dtype=np.float64)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError(f"targets must be a non-empty (n, labels) array, got shape {t.shape}")
    pos = t.sum(0)
    return [float(min(max_weight, (len(t) - p) / p)) if p > 0 else float(max_weight) for p in pos]


class QALoss(nn.Module):
    """Binary cross-entropy over the three attributes and the QA output together (the paper's eq. 1).

    Args:
        pos_weight: optional positive-class weight per label ``(nulling, sharpness, enhancement, fibrosis)``
            (e.g. :func:`balanced_pos_weight` of the training targets; the data are about 70% diagnostic).
        label_weights: optional weight of each label's term (default: equal).

    ``forward(output, target)``: ``output`` the network's logits ``(N, 4)`` or a dict holding them under
    ``"qa"``; ``target`` binary ``(N, 4)`` or a dict holding it under ``"qa"``. Returns the mean over slices and
    labels.
    """

    def __init__(self, pos_weight: Sequence[float] | None = None, label_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        for name, w in (("pos_weight", pos_weight), ("label_weights", label_weights)):
            if w is not None and (len(w) != len(LABELS) or any(float(v) < 0 for v in w)):
                raise ValueError(f"{name} needs {len(LABELS)} non-negative values, got {list(w)}")
        pw = None if pos_weight is None else torch.as_tensor([float(v) for v in pos_weight])
        lw = torch.ones(len(LABELS)) if label_weights is None else torch.as_tensor([float(v) for v in label_weights])
        self.register_buffer("pos_weight", pw)
        self.register_buffer("label_weights", lw / lw.mean())

    @property
    def pos_weight_values(self) -> list[float] | None:
        """The positive-class weights as a list (None when unweighted)."""
        return None if self.pos_weight is None else [round(float(v), 4) for v in self.pos_weight]

    def forward(self, output: torch.Tensor | dict, target: torch.Tensor | dict) -> torch.Tensor:
        logits = qa_logits(output)
        target = target["qa"] if isinstance(target, dict) else target
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, target.to(logits.dtype), pos_weight=self.pos_weight, reduction="none"
        )
        return (loss * self.label_weights).mean()


class MultiTaskLoss(nn.Module):
    """QA loss plus the Dice loss of the LA segmentation (the paper's eqs. 2-3): ``L = L_qa + seg_weight * L_seg``.

    Args:
        qa_loss: the QA term (default :class:`QALoss`).
        seg_loss: the segmentation term (default MONAI ``DiceLoss(sigmoid=True, batch=True)``: Dice over the batch,
            so slices whose mask is empty still count).
        seg_weight: weight of the segmentation term.

    ``forward(output, target)``: ``output`` ``{"qa": (N, 4), "seg": (N, 1, H, W)}`` logits, ``target``
    ``{"qa": (N, 4), "seg": (N, 1, H, W)}`` binary.
    """

    def __init__(
        self, qa_loss: nn.Module | None = None, seg_loss: nn.Module | None = None, seg_weight: float = 1.0
    ) -> None:
        super().__init__()
        if seg_weight < 0:
            raise ValueError(f"seg_weight must be >= 0, got {seg_weight}")
        self.qa_loss = qa_loss if qa_loss is not None else QALoss()
        self.seg_loss = seg_loss if seg_loss is not None else DiceLoss(sigmoid=True, batch=True)
        self.seg_weight = float(seg_weight)

    def forward(self, output: dict, target: dict) -> torch.Tensor:
        if not isinstance(output, dict) or not isinstance(target, dict):
            raise ValueError("MultiTaskLoss needs dict output and target with keys 'qa' and 'seg'")
        seg = self.seg_loss(output["seg"], target["seg"].to(output["seg"].dtype))
        return self.qa_loss(output, target) + self.seg_weight * seg


def resolve_pos_weight(spec: str | Sequence[float] | None, slices=None) -> list[float] | None:
    """The ``pos_weight`` of :class:`QALoss` from a config value.

    Args:
        spec: None (no weighting), ``"balanced"`` (:func:`balanced_pos_weight` of the training slices' targets) or
            one weight per label.
        slices: the training :class:`bundle.data.QASlices` (for ``"balanced"``).

    Raises:
        ValueError: for anything else.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"pos_weight must be null, 'balanced' or {len(LABELS)} numbers, got {spec!r}")
        if slices is None or len(slices) == 0:
            raise ValueError("pos_weight 'balanced' needs the training slices")
        return balanced_pos_weight(slices.slice_targets())
    return [float(w) for w in spec]
