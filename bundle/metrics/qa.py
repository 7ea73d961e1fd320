"""Stage-2 metrics: slice outputs for ignite metrics, per-scan aggregation (mode, mean probability), binary scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bundle.networks.qa import LABELS, qa_logits

__all__ = ["AGGREGATIONS", "QALabelOutput", "aggregate_scans", "binary_metrics", "mode_vote", "qa_mse_output",
           "qa_outputs", "seg_output"]  # fmt: skip

AGGREGATIONS = ("mode", "mean")


def qa_outputs(output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and binary targets ``(N, 4)`` from a QA engine's ``state.output`` (batched or decollated).

    The target is the engine's ``label``: the ``(N, 4)`` tensor, or the ``"qa"`` entry of the multi-task dict.
    """
    if isinstance(output, (list, tuple)):
        pred = torch.stack([qa_logits({k: v[None] for k, v in o["pred"].items()} if isinstance(o["pred"], dict)
                                      else o["pred"][None])[0] for o in output])  # fmt: skip
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
        label: a name of :data:`bundle.networks.LABELS` or its index.
        threshold: probability threshold.
    """

    def __init__(self, label: str | int = "fibrosis", threshold: float = 0.5) -> None:
        self.index = LABELS.index(label) if isinstance(label, str) else int(label)
        if not 0 <= self.index < len(LABELS):
            raise ValueError(f"label must be one of {LABELS} or an index, got {label!r}")
        self.threshold = float(threshold)

    def __call__(self, output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        prob, target = qa_outputs(output)
        i = self.index
        return (prob[:, i : i + 1] > self.threshold).float(), target[:, i : i + 1]


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
        threshold: slice and mean-probability threshold.

    Returns:
        ``{"volume": (s,) scan ids (sorted), "slices": (s,) slice counts, "mode": (s, labels) binary mode of the
        slices' predictions (ties: 0), "mean": (s, labels) mean probability, "mean_pred": (s, labels) binary mean
        at ``threshold``, "mode_score": (s, labels) share of the slices predicted 1}``.
    """
    volumes = np.asarray(volumes).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(volumes), -1)
    ids = np.unique(volumes)
    out = {"volume": ids, "slices": np.zeros(len(ids), int)}
    for k in ("mode", "mean", "mean_pred", "mode_score"):
        out[k] = np.zeros((len(ids), probs.shape[1]))
    for s, v in enumerate(ids):
        p = probs[volumes == v]
        binary = (p > threshold).astype(int)
        out["slices"][s] = len(p)
        out["mode"][s] = [mode_vote(binary[:, j]) for j in range(p.shape[1])]
        out["mode_score"][s] = binary.mean(0)
        out["mean"][s] = p.mean(0)
    out["mean_pred"] = (out["mean"] > threshold).astype(float)
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
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score,
                                 roc_auc_score)  # fmt: skip

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
