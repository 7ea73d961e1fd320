"""The QA loss (eq. 1: BCE over the three attributes and QA) and the multi-task loss (eq. 3: plus Dice)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn

from bundle.data.datalist import SCORE_KEYS
from bundle.networks.qa import qa_logits

__all__ = ["MultiTaskLoss", "OrdinalBCE", "QALoss", "balanced_pos_weight", "resolve_pos_weight"]


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
            if w is not None and (len(w) != len(SCORE_KEYS) or any(float(v) < 0 for v in w)):
                raise ValueError(f"{name} needs {len(SCORE_KEYS)} non-negative values, got {list(w)}")
        pw = None if pos_weight is None else torch.as_tensor([float(v) for v in pos_weight])
        lw = (
            torch.ones(len(SCORE_KEYS)) if label_weights is None else torch.as_tensor([float(v) for v in label_weights])
        )
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
            raise ValueError(f"pos_weight must be null, 'balanced' or {len(SCORE_KEYS)} numbers, got {spec!r}")
        if slices is None or len(slices) == 0:
            raise ValueError("pos_weight 'balanced' needs the training slices")
        return balanced_pos_weight(slices.slice_targets())
    return [float(w) for w in spec]


class OrdinalBCE(nn.Module):
    """Cumulative-link (ordinal) binary cross-entropy on 1..5 scores with one logit per label.

    For each label the logit ``z`` models ``P(score >= k) = sigmoid(z - b_k)``, ``k = 2, 3, 4, 5``; the cut-points
    are learned and kept ordered (``b_2 = -softplus(a_2)``, ``b_3 = 0``, ``b_4 = softplus(a_4)``,
    ``b_5 = b_4 + softplus(a_5)``), so ``z`` itself is the "diagnostic" (score >= 3, the paper's binarisation)
    logit and nothing changes downstream. Training on the whole score instead of its binarisation tells the network
    that a 2 is closer to diagnostic than a 1, which with a few dozen scans is much of the information there is.
    The decision level's term carries ``pos_weight`` (class balance); the loss is the mean over levels and labels.

    Args:
        labels: outputs (4).
        pos_weight: ``(labels,)`` weights of the positives of the score >= 3 term; None: 1.
    """

    LEVELS = (2, 3, 4, 5)

    def __init__(self, labels: int = 4, pos_weight: torch.Tensor | Sequence[float] | None = None) -> None:
        super().__init__()
        if int(labels) < 1:
            raise ValueError(f"labels must be >= 1, got {labels}")
        init = torch.tensor([1.5, 1.5, 1.0]).expm1().log()  # softplus^-1 of (1.5, 1.5, 1.0)
        self.raw = nn.Parameter(init.repeat(int(labels), 1))
        pw = torch.ones(int(labels)) if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        if pw.shape != (int(labels),) or (pw <= 0).any():
            raise ValueError(f"pos_weight needs {labels} positive values, got {pos_weight}")
        self.register_buffer("pos_weight", pw)

    def cutpoints(self) -> torch.Tensor:
        """``(labels, 4)`` cut-points ``b_2 < b_3 = 0 < b_4 < b_5``."""
        sp = nn.functional.softplus(self.raw)
        zero = torch.zeros_like(sp[:, 0])
        return torch.stack([-sp[:, 0], zero, sp[:, 1], sp[:, 1] + sp[:, 2]], dim=1)

    def forward(self, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(N, labels)``, ``scores`` ``(N, labels)`` in 1..5."""
        if logits.shape != scores.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and scores {tuple(scores.shape)} differ")
        b = self.cutpoints()
        terms = []
        for i, k in enumerate(self.LEVELS):
            target = (scores >= k).float()
            pw = self.pos_weight if k == 3 else None
            terms.append(nn.functional.binary_cross_entropy_with_logits(logits - b[:, i], target, pos_weight=pw))
        return torch.stack(terms).mean()
