"""Calibration of the QA probabilities: temperature scaling, expected calibration error, reliability curve.

scikit-learn has the reliability curve (``calibration_curve``) and isotonic or Platt calibration, but not
temperature scaling (one parameter, which keeps the ranking and the decision at logit 0 and so suits a validation
part of a handful of scans) nor the expected calibration error; both are a few lines, written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["apply_temperature", "expected_calibration_error", "fit_temperature", "reliability_curve"]

# Temperatures searched by fit_temperature. A validation part of a handful of scans that the network already
# separates at logit 0 has no finite optimum (the likelihood keeps rising as T -> 0); the lower bound then *is* the
# fit, and 0.05 (logits x 20) turned such a fold's held-out probabilities into 0s and 1s (docs/qa_crossval.md,
# calibration). At most a four-fold sharpening or softening is what a few validation scans can support.
T_RANGE = (0.25, 4.0)


def apply_temperature(logits: np.ndarray | Sequence[float], temperature: float | Sequence[float]) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)`` (a temperature per column broadcasts)."""
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def fit_temperature(
    logits: np.ndarray | Sequence[float],
    targets: np.ndarray | Sequence[float],
    t_range: Sequence[float] = T_RANGE,
) -> float:
    """The temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logits / T)`` against ``targets``.

    A bounded scalar search over ``log T`` (scipy), within ``t_range``; 1.0 (no change) when the targets hold
    one class only, where the likelihood has no finite optimum worth trusting.

    Args:
        logits: ``(n,)`` logits of one binary output.
        targets: ``(n,)`` 0/1.
        t_range: ``(lowest, highest)`` temperature, ``0 < lowest <= 1 <= highest`` (default :data:`T_RANGE`).

    Raises:
        ValueError: for mismatched or empty inputs, or a range that is not positive around 1.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if z.shape != y.shape or z.size == 0:
        raise ValueError(f"logits and targets need the same non-zero length, got {z.size} and {y.size}")
    lo, hi = (float(t) for t in t_range)
    if not 0 < lo <= 1 <= hi:
        raise ValueError(f"t_range needs 0 < lowest <= 1 <= highest, got {tuple(t_range)}")
    if len(np.unique(y)) < 2:
        return 1.0
    if lo == hi:
        return lo

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # -log-likelihood of sigmoid(s), stable

    res = minimize_scalar(nll, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def _bins(probs: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each probability in ``n_bins`` equal-width bins of [0, 1] (1.0 in the last)."""
    return np.minimum((probs * n_bins).astype(int), n_bins - 1)


def expected_calibration_error(
    probs: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[float], n_bins: int = 10
) -> float:
    """ECE: the mean over equal-width probability bins, weighted by their share of samples, of
    ``|mean target - mean probability|``.

    Raises:
        ValueError: for mismatched or empty inputs or ``n_bins < 1``.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0 or int(n_bins) < 1:
        raise ValueError(
            f"need probs and targets of one non-zero length and n_bins >= 1, got {p.size}, {y.size}, {n_bins}"
        )
    b = _bins(p, int(n_bins))
    ece = 0.0
    for k in np.unique(b):
        m = b == k
        ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def reliability_curve(
    probs: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[float], n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Per non-empty bin (as :func:`expected_calibration_error`): ``mean_prob``, ``frac_pos`` and ``count``."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    b = _bins(p, int(n_bins))
    ks = np.unique(b)
    return {
        "mean_prob": np.array([p[b == k].mean() for k in ks]),
        "frac_pos": np.array([y[b == k].mean() for k in ks]),
        "count": np.array([(b == k).sum() for k in ks]),
    }
