"""Scan-level QA from per-slice probabilities: the paper's mode over the LA slices, with the vote's spread.

Pure torch, so it is tested in the main environment. When issue 4's two-stage inference lands with its own scan
summary, the QA task should call that one instead, so that 3D Slicer and the command line give the same verdict.
"""

from __future__ import annotations

import torch

__all__ = ["LABELS", "summarise_scan"]

LABELS = ("nulling", "sharpness", "enhancement", "fibrosis")  # the QA network's 4 outputs, in this order; fibrosis = QA


def summarise_scan(probs: torch.Tensor, threshold: float = 0.5) -> dict:
    """Per-label scan verdicts from the per-slice probabilities of the LA slices.

    Each slice votes diagnostic for a label when its probability is at least ``threshold``; the scan's verdict is
    the majority (the mode, as in the paper), a tie going to the mean probability. The uncertainty of a label is the
    share of slices whose vote disagrees with the verdict: 0 when they all agree, 0.5 at an even split.

    Args:
        probs: ``(n_slices, 4)`` sigmoid outputs ordered as :data:`LABELS`.
        threshold: probability from which a slice votes diagnostic.

    Returns:
        ``{"probabilities": {label: mean probability}, "diagnostic": {label: bool}, "uncertainties": {label: share},
        "verdict": "diagnostic" | "non-diagnostic" (the fibrosis label), "uncertainty": its uncertainty,
        "n_slices": n}``.

    Raises:
        ValueError: for an empty or wrongly shaped input, or probabilities outside [0, 1].
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[1] != len(LABELS) or p.shape[0] == 0:
        raise ValueError(f"expected probabilities of shape (n_slices >= 1, {len(LABELS)}), got {tuple(p.shape)}")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("probabilities must lie in [0, 1]")
    mean = p.mean(0)
    share = (p >= threshold).double().mean(0)  # share of slices voting diagnostic
    diagnostic = torch.where(share == 0.5, mean >= threshold, share > 0.5)
    disagree = torch.where(diagnostic, 1.0 - share, share)
    out = {
        "probabilities": {k: float(v) for k, v in zip(LABELS, mean)},
        "diagnostic": {k: bool(v) for k, v in zip(LABELS, diagnostic)},
        "uncertainties": {k: float(v) for k, v in zip(LABELS, disagree)},
        "n_slices": int(p.shape[0]),
    }
    out["verdict"] = "diagnostic" if out["diagnostic"]["fibrosis"] else "non-diagnostic"
    out["uncertainty"] = out["uncertainties"]["fibrosis"]
    return out
