"""Pictures of what the network sees: the first augmented training batch, the first validation predictions."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["BatchSnapshot", "save_slice_grid"]

logger = logging.getLogger(__name__)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def save_slice_grid(
    images: np.ndarray,
    path: str,
    labels: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    titles: list[str] | None = None,
    suptitle: str | None = None,
    ncols: int = 4,
) -> str:
    """Save a grid of 2D slices with the LA contours: ground truth in green, prediction in red.

    Args:
        images: ``(n, h, w)`` slices.
        path: PNG path.
        labels: optional ``(n, h, w)`` binary masks.
        preds: optional ``(n, h, w)`` binary masks.
        titles: optional caption per slice.
        suptitle: figure title.
        ncols: grid columns.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].T, cmap="gray", origin="lower")
        for masks, color in ((labels, "lime"), (preds, "red")):
            if masks is not None and masks[i].any() and not masks[i].all():
                ax.contour(masks[i].T, levels=[0.5], colors=color, linewidths=0.8, origin="lower")
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class BatchSnapshot:
    """Save the first batch an engine processes as a PNG grid (list it in the MLflow handler's ``artifacts``).

    For a trainer this shows the augmented inputs with their masks; for an evaluator the inputs with the ground
    truth (green) and the thresholded prediction (red) contours. Slices holding LA are preferred.

    Args:
        output_file: PNG path.
        max_images: slices in the grid.
        show_pred: draw the prediction contour (its ``pred`` thresholded at ``threshold``).
        threshold: threshold of ``pred``; the evaluator's postprocessing already binarises it.
        title: figure title.
    """

    def __init__(
        self,
        output_file: str,
        max_images: int = 16,
        show_pred: bool = True,
        threshold: float = 0.5,
        title: str | None = None,
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.output_file = output_file
        self.max_images = max_images
        self.show_pred = show_pred
        self.threshold = threshold
        self.title = title
        self._done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self._done:
            return
        self._done = True
        out = engine.state.output
        items = out if isinstance(out, list) else [dict(zip(out, v)) for v in zip(*out.values())]
        images = np.stack([_to_numpy(d["image"])[0] for d in items])
        labels = np.stack([_to_numpy(d["label"])[0] > 0.5 for d in items]) if "label" in items[0] else None
        preds = None
        if self.show_pred and "pred" in items[0]:
            preds = np.stack([_to_numpy(d["pred"])[0] > self.threshold for d in items])
        has = np.zeros(len(images), bool)
        for m in (labels, preds):
            if m is not None:
                has |= m.reshape(len(m), -1).any(1)
        pool = np.flatnonzero(has) if has.sum() >= min(self.max_images, len(images)) else np.arange(len(images))
        pick = pool[np.linspace(0, len(pool) - 1, min(self.max_images, len(pool))).round().astype(int)]
        batch = engine.state.batch
        names = None
        if isinstance(batch, list) and "volume" in batch[0]:
            names = [f"vol {int(batch[i]['volume'])} slice {int(batch[i]['slice'])}" for i in pick]
        save_slice_grid(images[pick], self.output_file, None if labels is None else labels[pick],
                        None if preds is None else preds[pick], names, self.title)  # fmt: skip
