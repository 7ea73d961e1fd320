"""The non-deep reference: intensity and sharpness statistics of the LA region with logistic regression.

The floor every network must clearly beat. Each LA slice gives a few numbers computed from the slice (intensities
normalised per volume to 0..1) and its LA mask (the datalist's, or the detector's prediction where a scan has none):

- ``la_mean``, ``la_std``: blood-pool brightness and its spread (enhancement, noise);
- ``wall_mean``: mean of a 3-pixel ring around the LA (wall and myocardium: nulling);
- ``la_wall_contrast``: ``(la_mean - wall_mean) / (la_mean + wall_mean)``;
- ``background_mean``, ``la_background_contrast``: the slice outside a 10-pixel margin around the LA;
- ``edge_gradient``: mean gradient magnitude (Sobel) on the LA border over ``la_mean`` (sharpness);
- ``laplacian_var``: variance of the Laplacian in the LA's bounding box (sharpness and noise).

A logistic regression per label (scikit-learn: median imputation, standardisation, ``LogisticRegression``) is fitted
on the training slices; test slices are scored and aggregated per scan as the networks' predictions are.
"""

from __future__ import annotations

import logging

import numpy as np

from bundle.transforms.region import (
    REGION_FEATURES,
    region_features,
)  # the reference's statistics, also the QA network's scan prior

__all__ = [
    "FEATURES",
    "REGION_FEATURES",
    "attribute_ceiling",
    "fit_predict_reference",
    "fit_predict_region_reference",
    "region_features",
    "slice_features",
]

logger = logging.getLogger(__name__)

FEATURES = (
    "la_mean",
    "la_std",
    "wall_mean",
    "la_wall_contrast",
    "background_mean",
    "la_background_contrast",
    "edge_gradient",
    "laplacian_var",
)


def slice_features(image: np.ndarray, mask: np.ndarray, ring: int = 3, margin: int = 10) -> np.ndarray:
    """The :data:`FEATURES` of one slice; NaN where the mask (or a region) is empty.

    Args:
        image: ``(h, w)`` (or ``(1, h, w)``) slice, intensities 0..1.
        mask: LA mask of the same shape.
        ring: width in pixels of the wall ring around the LA.
        margin: pixels around the LA excluded from the background.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64).squeeze()
    m = np.asarray(mask).squeeze() > 0
    if img.shape != m.shape or img.ndim != 2:
        raise ValueError(f"image and mask must be 2D of one shape, got {img.shape} and {m.shape}")
    out = np.full(len(FEATURES), np.nan)
    if not m.any():
        return out
    eps = 1e-6
    la = img[m]
    wall = img[ndimage.binary_dilation(m, iterations=ring) & ~m]
    outside = ~ndimage.binary_dilation(m, iterations=margin)
    background = img[outside]
    border = m & ~ndimage.binary_erosion(m)
    grad = np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    box = img[max(rows[0] - ring, 0) : rows[-1] + ring + 1, max(cols[0] - ring, 0) : cols[-1] + ring + 1]
    out[0], out[1] = la.mean(), la.std()
    if wall.size:
        out[2] = wall.mean()
        out[3] = (out[0] - out[2]) / (out[0] + out[2] + eps)
    if background.size:
        out[4] = background.mean()
        out[5] = (out[0] - out[4]) / (out[0] + out[4] + eps)
    out[6] = grad[border].mean() / (out[0] + eps)
    out[7] = ndimage.laplace(box).var() if min(box.shape) >= 3 else np.nan
    return out


def _features(slices) -> np.ndarray:
    c = slices.cache
    if not len(slices):
        return np.zeros((0, len(FEATURES)))
    return np.stack([slice_features(c.images[n], slices.masks[n]) for n in slices.indices])


def fit_predict_reference(train, test, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit the reference on the training slices and predict the test slices.

    Args:
        train: training :class:`bundle.data.QASlices`.
        test: test :class:`bundle.data.QASlices`.
        seed: random state of the solver.

    Returns:
        ``(probabilities (n_test, 4), scan id per test slice (n_test,), binary targets (n_test, 4))``.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = _features(train), _features(test)
    y_train, y_test = train.slice_targets().astype(int), test.slice_targets().astype(int)
    probs = np.zeros((len(x_test), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        classes = np.unique(y_train[:, j])
        if len(classes) < 2:  # one class only in training: predict it
            probs[:, j] = float(classes[0]) if len(classes) else 0.5
            continue
        model = make_pipeline(
            SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
        model.fit(x_train, y_train[:, j])
        probs[:, j] = model.predict_proba(x_test)[:, 1] if len(x_test) else probs[:, j]
    logger.info(f"reference: logistic regression on {len(FEATURES)} LA statistics, {len(x_train)} training slices")
    return probs, test.cache.volume[test.indices], y_test


def fit_predict_region_reference(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """Class-balanced logistic regression per label (scikit-learn: median imputation, standardisation) on scan
    features; returns the test logits ``(n_test, labels)`` (decision at 0, as the networks').

    A label with one class in training predicts it (logit +-10)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train).astype(int)
    out = np.zeros((len(x_test), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        classes = np.unique(y_train[:, j])
        if len(classes) < 2:
            out[:, j] = 10.0 if len(classes) and classes[0] == 1 else -10.0
            continue
        model = make_pipeline(
            SimpleImputer(strategy="median"),
            StandardScaler(),
            LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed),
        )
        model.fit(x_train, y_train[:, j])
        if len(x_test):
            out[:, j] = model.decision_function(x_test)
    return out


def attribute_ceiling(entries: list[dict], folds: list[dict], seed: int = 0) -> dict[str, dict[str, float]]:
    """How well the experts' own attribute scores predict their fibrosis verdict, out of fold: the ceiling of any
    model that reaches the verdict through the three attributes.

    Two rules, scored on each fold's held-out scans and on all of them pooled:

    - ``mean_rule``: diagnostic when the mean of the three attribute scores is >= 3 (nothing fitted);
    - ``logistic``: a class-balanced logistic regression on the three scores
      (:func:`fit_predict_region_reference`), fitted on the fold's training and validation scans.

    Args:
        entries: the datalist's ``quality`` entries (``patient`` and the four 1..5 scores).
        folds: ``{"train", "val", "test"}`` patient lists per fold (:func:`bundle.evaluation.crossval.load_folds`).
        seed: the logistic regression's seed.

    Returns:
        ``{rule: {"balanced_accuracy", "auroc", "balanced_accuracy_std", "auroc_std", "pooled_balanced_accuracy",
        "pooled_auroc"}}`` (std over folds; a fold with one class has a NaN AUROC, left out of the mean).

    Raises:
        DataError: for entries without the scores or a patient in no fold's test part.
    """
    from bundle.data.datalist import ATTRIBUTES, to_binary
    from bundle.errors import DataError
    from bundle.metrics.qa import binary_metrics

    missing = [e.get("image", "?") for e in entries if any(k not in e for k in (*ATTRIBUTES, "fibrosis", "patient"))]
    if missing:
        raise DataError(f"quality entries without the patient or the four scores: {missing[:3]}")
    tested = {p for f in folds for p in f["test"]}
    outside = sorted({e["patient"] for e in entries} - tested)
    if outside:
        raise DataError(f"patients in no fold's test part: {outside[:3]}; the folds do not cover this datalist")
    x = np.array([[float(e[k]) for k in ATTRIBUTES] for e in entries])
    y = np.array([to_binary(e["fibrosis"]) for e in entries])
    patients = np.array([e["patient"] for e in entries])
    scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"mean_rule": [], "logistic": []}
    for fold in folds:
        test = np.isin(patients, fold["test"])
        fit = np.isin(patients, [*fold["train"], *fold["val"]])
        scores["mean_rule"].append((y[test], x[test].mean(1) - 3.0))
        logits = fit_predict_region_reference(x[fit], y[fit, None], x[test], seed)[:, 0]
        scores["logistic"].append((y[test], logits))
    out = {}
    for rule, parts in scores.items():
        per_fold = [binary_metrics(t, s >= 0, s) for t, s in parts]  # NaN where a fold's test part has one class
        t_all, s_all = np.concatenate([t for t, _ in parts]), np.concatenate([s for _, s in parts])
        pooled = binary_metrics(t_all, s_all >= 0, s_all)
        out[rule] = {"pooled_balanced_accuracy": pooled["balanced_accuracy"], "pooled_auroc": pooled["auroc"]}
        for m in ("balanced_accuracy", "auroc"):
            values = [f[m] for f in per_fold]
            out[rule][m], out[rule][f"{m}_std"] = float(np.nanmean(values)), float(np.nanstd(values))
    return out
