"""Stage-2 metrics: slice outputs for ignite metrics, per-scan aggregation (mode, mean probability), binary scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bundle.data.datalist import SCORE_KEYS
from bundle.networks.qa import qa_logits

__all__ = [
    "AGGREGATIONS",
    "VERDICT_RULES",
    "QALabelOutput",
    "aggregate_scans",
    "binary_metrics",
    "is_diagnostic",
    "mode_vote",
    "qa_mse_output",
    "qa_outputs",
    "scan_verdict",
    "seg_output",
]

AGGREGATIONS = ("mode", "mean")
VERDICT_RULES = ("mode", "mean", "mean_logit")  # how a scan's slice probabilities become its verdict
_EPS = 1e-6


def is_diagnostic(p: float | np.ndarray, threshold: float = 0.5) -> np.ndarray | int:
    """The bundle's one threshold rule: a probability **at or above** ``threshold`` reads diagnostic (1)."""
    out = np.asarray(p, dtype=np.float64) >= float(threshold)
    return int(out) if out.ndim == 0 else out.astype(int)


def scan_verdict(
    slice_probs: Sequence[float] | np.ndarray, threshold: float = 0.5, rule: str = "mode"
) -> tuple[float, int]:
    """The bundle's one verdict rule: a scan's probability and verdict from the probabilities of its LA slices.

    Training's validation, evaluation, inference and MONAI Label all call this (through :func:`aggregate_scans` and
    :func:`bundle.inference.qa_verdict`), so their figures describe what the deployed model says.

    - ``"mode"`` (the paper's): each slice votes by :func:`is_diagnostic`; the majority wins; **a tie gives 0**
      (non-diagnostic: a scan whose slices split evenly gets a second look). The probability is the slices' mean.
    - ``"mean"``: the mean slice probability, by :func:`is_diagnostic`.
    - ``"mean_logit"``: the sigmoid of the mean slice logit (a geometric pooling that a few confident slices do not
      swamp), by :func:`is_diagnostic`. Temperature scaling of the slice logits commutes with it.

    Args:
        slice_probs: ``(S,)`` probabilities of one output.
        threshold: see :func:`is_diagnostic`.
        rule: one of :data:`VERDICT_RULES`.

    Returns:
        ``(probability, verdict)``.

    Raises:
        ValueError: for an unknown rule or no slice.
    """
    if rule not in VERDICT_RULES:
        raise ValueError(f"rule must be one of {VERDICT_RULES}, got {rule!r}")
    p = np.asarray(slice_probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("scan_verdict needs at least one slice probability")
    if rule == "mode":
        return float(p.mean()), mode_vote(is_diagnostic(p, threshold))
    if rule == "mean":
        prob = float(p.mean())
    else:
        z = np.log(np.clip(p, _EPS, 1 - _EPS) / np.clip(1 - p, _EPS, 1)).mean()
        prob = float(1.0 / (1.0 + np.exp(-z)))
    return prob, is_diagnostic(prob, threshold)


def qa_outputs(output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and binary targets ``(N, 4)`` from a QA engine's ``state.output`` (batched or decollated).

    The target is the engine's ``label``: the ``(N, 4)`` tensor, or the ``"qa"`` entry of the multi-task dict.
    """
    if isinstance(output, (list, tuple)):
        pred = torch.stack(
            [
                qa_logits(
                    {k: v[None] for k, v in o["pred"].items()} if isinstance(o["pred"], dict) else o["pred"][None]
                )[0]
                for o in output
            ]
        )
        labels = [o["label"]["qa"] if isinstance(o["label"], dict) else o["label"] for o in output]
        label = torch.stack([torch.as_tensor(x) for x in labels])
    else:
        pred, label = qa_logits(output["pred"]), output["label"]
        label = label["qa"] if isinstance(label, dict) else label
    return torch.sigmoid(pred.float()), torch.as_tensor(label).float()


def qa_mse_output(output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output transform for ignite's ``MeanSquaredError``: the mean over slices and the four labels of the squared
    difference between probability and target (the paper's validation "MSE across slices")."""
    prob, target = qa_outputs(output)
    return prob.flatten(), target.flatten()


class QALabelOutput:
    """Output transform for MONAI's ``ConfusionMatrix`` handler: one label's slice predictions at ``threshold``.

    Args:
        label: a name of :data:`bundle.networks.SCORE_KEYS` or its index.
        threshold: probability threshold.
    """

    def __init__(self, label: str | int = "fibrosis", threshold: float = 0.5) -> None:
        self.index = SCORE_KEYS.index(label) if isinstance(label, str) else int(label)
        if not 0 <= self.index < len(SCORE_KEYS):
            raise ValueError(f"label must be one of {SCORE_KEYS} or an index, got {label!r}")
        self.threshold = float(threshold)

    def __call__(self, output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        prob, target = qa_outputs(output)
        i = self.index
        return (prob[:, i : i + 1] >= self.threshold).float(), target[:, i : i + 1]  # is_diagnostic's rule


def mode_vote(predictions: Sequence[int] | np.ndarray) -> int:
    """The most frequent binary prediction of a scan's slices; a tie gives 0 (non-diagnostic).

    The tie rule is ``scipy.stats.mode``'s (the smallest most frequent value), and it is the cautious verdict: a
    scan whose slices split evenly is flagged for a second look.

    Raises:
        ValueError: for an empty sequence or a non-binary value.
    """
    p = np.asarray(predictions).astype(int).reshape(-1)
    if p.size == 0:
        raise ValueError("mode_vote needs at least one slice prediction")
    if not np.isin(p, (0, 1)).all():
        raise ValueError(f"mode_vote takes binary predictions, got values {sorted(set(p.tolist()))}")
    return int(2 * p.sum() > p.size)


def aggregate_scans(
    volumes: Sequence[int] | np.ndarray, probs: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Per-scan verdicts from slice probabilities.

    Args:
        volumes: scan id of each slice ``(n,)``.
        probs: slice probabilities ``(n, labels)``.
        threshold: slice and mean-probability threshold (:func:`is_diagnostic`: at or above is diagnostic).

    Returns:
        ``{"volume": (s,) scan ids (sorted), "slices": (s,) slice counts, "mode": (s, labels) verdict by
        :func:`scan_verdict`'s ``"mode"`` (ties: 0), "mean": (s, labels) mean probability, "mean_pred": (s, labels)
        verdict by its ``"mean"``, "mode_score": (s, labels) share of the slices voting 1}``.
    """
    volumes = np.asarray(volumes).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(volumes), -1)
    ids = np.unique(volumes)
    out = {"volume": ids, "slices": np.zeros(len(ids), int)}
    for k in ("mode", "mean", "mean_pred", "mode_score"):
        out[k] = np.zeros((len(ids), probs.shape[1]))
    for s, v in enumerate(ids):
        p = probs[volumes == v]
        out["slices"][s] = len(p)
        out["mode"][s] = [scan_verdict(p[:, j], threshold, "mode")[1] for j in range(p.shape[1])]
        out["mode_score"][s] = is_diagnostic(p, threshold).mean(0)
        out["mean"][s] = p.mean(0)
    out["mean_pred"] = is_diagnostic(out["mean"], threshold)  # scan_verdict's "mean" rule, all scans at once
    out["mode"] = out["mode"].astype(int)
    out["mean_pred"] = out["mean_pred"].astype(int)
    return out


def binary_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], y_score: Sequence[float] | None = None
) -> dict[str, float]:
    """Precision, recall, F1, specificity, balanced accuracy and AUROC of a binary task (scikit-learn).

    The positive class is 1 (diagnostic). Precision and F1 are 0 when nothing is predicted positive; recall,
    specificity, balanced accuracy and AUROC are NaN where ``y_true`` lacks the class they need (or no score is
    given, for AUROC).

    Returns:
        ``{"precision", "recall", "f1", "specificity", "balanced_accuracy", "auroc", "accuracy", "n"}``.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    t = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(y_pred).astype(int).reshape(-1)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred need the same non-zero length, got {t.size} and {p.size}")
    both = len(np.unique(t)) == 2
    out = {
        "precision": float(precision_score(t, p, zero_division=0)),
        "recall": float(recall_score(t, p, zero_division=np.nan)),
        "f1": float(f1_score(t, p, zero_division=0)),
        "specificity": float(recall_score(t, p, pos_label=0, zero_division=np.nan)) if (t == 0).any() else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(t, p)) if both else float("nan"),
        "accuracy": float(accuracy_score(t, p)),
        "auroc": float("nan"),
        "n": float(t.size),
    }
    if both and y_score is not None:
        out["auroc"] = float(roc_auc_score(t, np.asarray(y_score, dtype=float).reshape(-1)))
    return out


def seg_output(output: dict, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Output transform for MONAI's ``MeanDice`` handler on a batched multi-task output: the LA prediction at
    ``threshold`` (on the sigmoid) and the mask, each ``(N, 1, H, W)``."""
    pred, label = output["pred"]["seg"], output["label"]["seg"]
    return (torch.sigmoid(pred.float()) > threshold).float(), label.float()
