"""Pictures of what the network sees: the first augmented training batch, the first validation predictions."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.utils import save_figure

__all__ = ["CONTENTS", "BatchSnapshot", "save_slice_grid"]

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
    return save_figure(fig, path, dpi=80)


def _split_batch(batch: dict) -> list[dict]:
    """A collated (batched) dict as a list of per-item dicts; entries without a batch dimension are dropped and a
    nested dict (the multi-task prediction) is split alike."""
    nested = {k: _split_batch(v) for k, v in batch.items() if isinstance(v, dict)}
    sizes = [len(v) for v in batch.values() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0]
    n = sizes[0] if sizes else max((len(v) for v in nested.values()), default=0)
    items: list[dict] = [{} for _ in range(n)]
    for k, v in batch.items():
        if k in nested:
            for i, sub in enumerate(nested[k][:n]):
                items[i][k] = sub
        elif (isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0 or isinstance(v, list)) and len(v) == n:
            for i in range(n):
                items[i][k] = v[i]
    return items


def _caption(values) -> str:
    v = _to_numpy(values).reshape(-1)
    return " ".join(f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}" for x in v)


CONTENTS = ("segmentation", "qa", "multitask", "views")


class BatchSnapshot:
    """Save the first batch an engine processes as a PNG grid (list it in the MLflow handler's ``artifacts``).

    What the batch holds is said, not guessed (``content``):

    - ``"segmentation"``: slices ``image`` ``(C, h, w)`` (channel 0 drawn) with the LA mask ``label`` (green) and the
      LA prediction ``pred`` ``(1, h, w)`` thresholded at ``threshold`` (red);
    - ``"qa"``: slices with their LA mask, the prediction QA logits ``(4,)``, captioned as probabilities;
    - ``"multitask"``: the prediction a ``{"qa", "seg"}`` dict: the sigmoid of ``seg`` at ``threshold`` drawn, the QA
      probabilities captioned;
    - ``"views"``: each item ``(V, 1, h, w)`` views of one slice (contrastive pretraining), shown side by side.

    For a trainer this shows the augmented inputs with their masks; for an evaluator also the prediction. Slices
    holding LA are preferred.

    Args:
        output_file: PNG path.
        max_images: slices in the grid.
        show_pred: draw (or caption) the prediction.
        threshold: threshold of the LA prediction; the evaluator's postprocessing already binarises it.
        title: figure title.
        source: ``"output"`` (the engine's output, decollated or batched) or ``"batch"`` (the loader's batch) for the
            images and masks; the prediction always comes from the output.
        caption_key: batch key whose values are added to each slice's caption (e.g. ``"target"``).
        content: one of :data:`CONTENTS`.

    Raises:
        ValueError: for a bad option; when drawing, for a batch that does not hold what ``content`` says.
    """

    def __init__(
        self,
        output_file: str,
        max_images: int = 16,
        show_pred: bool = True,
        threshold: float = 0.5,
        title: str | None = None,
        source: str = "output",
        caption_key: str | None = None,
        content: str = "segmentation",
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if source not in ("output", "batch"):
            raise ValueError(f"source must be 'output' or 'batch', got {source!r}")
        if content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
        self.output_file = output_file
        self.max_images = max_images
        self.show_pred = show_pred
        self.threshold = threshold
        self.title = title
        self.source = source
        self.caption_key = caption_key
        self.content = content
        self._done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @staticmethod
    def _as_items(x) -> list[dict]:
        return x if isinstance(x, list) else _split_batch(x)

    def _expect(self, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"BatchSnapshot(content={self.content!r}): {what}")

    def _predictions(self, pred: list) -> tuple[np.ndarray | None, list[str]]:
        """The drawn LA masks (or None) and the captions of the predictions, by ``content``."""
        captions = [""] * len(pred)
        if self.content == "multitask":
            self._expect(isinstance(pred[0], dict) and {"qa", "seg"} <= set(pred[0]), "pred is not a {qa, seg} dict")
            captions = [f"p {_caption(torch.sigmoid(torch.as_tensor(p['qa'])))}" for p in pred]
            return np.stack(
                [_to_numpy(torch.sigmoid(torch.as_tensor(p["seg"])))[0] > self.threshold for p in pred]
            ), captions
        arrays = [_to_numpy(p) for p in pred]
        if self.content == "qa":
            self._expect(arrays[0].ndim == 1, f"pred of shape {arrays[0].shape} is not a vector of QA logits")
            return None, [f"p {_caption(torch.sigmoid(torch.as_tensor(a)))}" for a in arrays]
        self._expect(arrays[0].ndim == 3, f"pred of shape {arrays[0].shape} is not an LA map (1, h, w)")
        return np.stack([a[0] > self.threshold for a in arrays]), captions

    def __call__(self, engine: Engine) -> None:
        if self._done:
            return
        self._done = True
        out = self._as_items(engine.state.output)
        batch = engine.state.batch
        bitems = self._as_items(batch) if isinstance(batch, (list, dict)) else None
        items = bitems if self.source == "batch" else out
        first = _to_numpy(items[0]["image"])
        views = first.shape[0] if self.content == "views" else 1
        self._expect((first.ndim == 4) == (self.content == "views"), f"image of shape {first.shape}")
        per_view = lambda x: _to_numpy(x) if self.content == "views" else [_to_numpy(x)]  # noqa: E731
        images = np.stack([v[0] for d in items for v in per_view(d["image"])])
        labels = None
        if "label" in items[0] and _to_numpy(items[0]["label"]).shape[-2:] == first.shape[-2:]:  # the LA mask
            labels = np.stack([v[0] > 0.5 for d in items for v in per_view(d["label"])])
        preds, captions = None, [""] * len(items)
        if self.show_pred and self.content != "views" and len(out) == len(items) and "pred" in out[0]:
            preds, captions = self._predictions([d["pred"] for d in out])
        n = min(self.max_images, len(images))
        if views > 1:
            pick = np.arange(n - n % views or n)  # whole groups of views
        else:
            has = np.zeros(len(images), bool)
            for m in (labels, preds):
                if m is not None:
                    has |= m.reshape(len(m), -1).any(1)
            pool = np.flatnonzero(has) if has.sum() >= n else np.arange(len(images))
            pick = pool[np.linspace(0, len(pool) - 1, n).round().astype(int)]
        names = None
        if bitems is not None and len(bitems) == len(items) and "volume" in bitems[0]:
            names = []
            for i in pick:
                b = bitems[i // views]
                name = f"vol {int(b['volume'])} slice {int(b['slice'])}" + (
                    f" view {i % views + 1}" if views > 1 else ""
                )
                if self.caption_key and self.caption_key in b:
                    name += f"\ny {_caption(b[self.caption_key])} {captions[i // views]}".rstrip()
                names.append(name)
        save_slice_grid(
            images[pick],
            self.output_file,
            None if labels is None else labels[pick],
            None if preds is None else preds[pick],
            names,
            self.title,
        )
