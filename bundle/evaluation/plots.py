"""Pictures of a QA evaluation: confusion matrices and 2D projections of slice embeddings (t-SNE or UMAP)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from bundle.utils import save_figure

__all__ = ["plot_confusion_matrices", "plot_embeddings", "project_embeddings"]

logger = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrices(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], path: str, title: str | None = None
) -> str:
    """One confusion matrix per label (columns of ``y_true``/``y_pred``), side by side, as a PNG.

    Classes are 0 (non-diagnostic) and 1 (diagnostic); rows are the truth, columns the prediction.
    """
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    plt = _plt()
    y_true, y_pred = np.asarray(y_true).reshape(len(y_true), -1), np.asarray(y_pred).reshape(len(y_pred), -1)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 3.2), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], labels)):
        cm = confusion_matrix(y_true[:, j], y_pred[:, j], labels=[0, 1])
        ConfusionMatrixDisplay(cm, display_labels=["non-diag.", "diag."]).plot(ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


def project_embeddings(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str]:
    """Project ``(n, d)`` embeddings to 2D.

    Args:
        embeddings: one row per slice.
        method: ``"tsne"`` (scikit-learn) or ``"umap"`` (used where ``umap-learn`` is installed, else t-SNE).
        seed: random state.

    Returns:
        ``(points (n, 2), the method used)``.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"need at least 3 embeddings to project, got {len(x)}")
    if method == "umap":
        try:
            import umap  # optional: not a requirement of the bundle

            return umap.UMAP(random_state=seed).fit_transform(x), "umap"
        except ImportError:
            logger.info("umap-learn is not installed: using t-SNE")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "tsne"


def plot_embeddings(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str, method: str = "t-SNE", label_name: str = "fibrosis"
) -> str:
    """Scatter plots of 2D points, one panel per ``(title, points (n, 2), binary labels (n,))``, coloured by label."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.0), squeeze=False)
    for ax, (title, pts, lab) in zip(axes[0], panels):
        lab = np.asarray(lab).astype(int)
        for value, color, name in ((0, "tab:red", "non-diagnostic"), (1, "tab:blue", "diagnostic")):
            sel = lab == value
            ax.scatter(pts[sel, 0], pts[sel, 1], s=6, c=color, alpha=0.7, label=f"{name} ({int(sel.sum())})")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{method} of the encoder's slice embeddings, coloured by {label_name} quality", fontsize=9)
    return save_figure(fig, path, dpi=90)
