"""Stage-2 data: the LA slices of the quality list, their binary targets, and the batches the QA engines see.

Slices are selected once per run (not per epoch), by :func:`bundle.inference.select_qa_slices`: by the trained LA
detector as inference selects them (``mode="detector"``), or by the ground-truth mask (``mode="mask"``, e.g. before a
detector exists); that selection lives with inference since it runs stage 1. Each slice inherits its volume's
scores, made binary (score >= 3 is diagnostic, 1).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from bundle.data.datalist import SCORE_KEYS, entry_name, to_binary
from bundle.data.slices import SliceCache

__all__ = ["DETECTOR_HINT", "SELECTION_MODES", "PrepareQABatch", "QASlices"]

logger = logging.getLogger(__name__)

SELECTION_MODES = ("detector", "mask")  # how the QA slices are chosen (the configs' ``qa_slices``)
DETECTOR_HINT = (
    "the bundle ships models/detector.pt; or train one with: python -m monai.bundle run training "
    "--config_file \"['configs/common.yaml','configs/train.yaml']\" (writes models/model.pt and its plan) and "
    "pass --detector_ckpt models/model.pt, or pass --qa_slices mask to select slices by the ground-truth "
    "masks"
)


class QASlices:
    """The LA slices of one part of the quality list, with the mask and the binary targets of each.

    Args:
        cache: the part's :class:`bundle.data.SliceCache` (all slices of its volumes).
        selected: boolean per cache slice: the slice holds the LA.
        masks: LA mask per cache slice ``(n, 1, h, w)`` used by the multi-task decoder and the reference features
            (the datalist's mask where the entry has one, else the detector's prediction); None: the cache's masks.
        step: keep every ``step``-th selected slice of each volume (a reduced training budget; 1 keeps all).
            Then the slices an entry lists under ``exclude_slices`` (a curated datalist's) are left out.
        source: how the slices were selected (recorded with the run).
    """

    def __init__(
        self,
        cache: SliceCache,
        selected: np.ndarray,
        masks: np.ndarray | None = None,
        step: int = 1,
        source: str = "mask",
    ) -> None:
        if int(step) < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        selected = np.asarray(selected, dtype=bool)
        if selected.shape != (len(cache),):
            raise ValueError(f"selected must have one entry per slice ({len(cache)}), got shape {selected.shape}")
        if masks is not None and masks.shape != cache.labels.shape:
            raise ValueError(f"masks must have shape {cache.labels.shape}, got {masks.shape}")
        self.cache = cache
        self.masks = cache.labels if masks is None else masks
        self.step = int(step)
        self.source = source
        idx = np.flatnonzero(selected)
        if self.step > 1:  # every step-th selected slice per volume, starting from the first
            rank = np.zeros(len(idx), int)
            for v in np.unique(cache.volume[idx]):
                sel = cache.volume[idx] == v
                rank[sel] = np.arange(sel.sum())
            idx = idx[rank % self.step == 0]
        idx = idx[~self._excluded(idx)]  # after the step: a curated budget is a subset of the full one
        self.indices = idx
        targets = [[to_binary(e[k]) for k in SCORE_KEYS] for e in cache.entries]
        self.targets = np.array(targets, np.float32).reshape(-1, len(SCORE_KEYS))
        counts = np.bincount(cache.volume[idx], minlength=len(cache.entries))
        for v in np.flatnonzero(counts == 0):
            logger.warning(f"{entry_name(cache.entries[v])}: no LA slice selected ({source}); the scan is left out")
        logger.info(
            f"QA slices ({source}): {len(idx)} of {len(cache)} slices from "
            f"{int((counts > 0).sum())} of {len(cache.entries)} volumes"
        )

    def _excluded(self, idx: np.ndarray) -> np.ndarray:
        """Which of the cache slices ``idx`` their datalist entry lists under ``exclude_slices`` (slice indices
        along the slice axis, written by the curation workflow with ``drop_slices``)."""
        out = np.zeros(len(idx), dtype=bool)
        for v, e in enumerate(self.cache.entries):
            drop = e.get("exclude_slices")
            if drop:
                sel = self.cache.volume[idx] == v
                out[sel] = np.isin(self.cache.slice[idx][sel], np.asarray(drop, dtype=int))
        if out.any():
            logger.info(f"QA slices: {int(out.sum())} slices left out by the datalist's exclude_slices")
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def scan_names(self, root: str | None = None) -> list[str]:
        """A name per volume of the cache: its image path (relative to ``root`` when given)."""
        return [os.path.relpath(e["image"], root) if root else e["image"] for e in self.cache.entries]

    def slice_targets(self) -> np.ndarray:
        """Binary targets ``(n, 4)`` of the kept slices."""
        return self.targets[self.cache.volume[self.indices]]

    def records(self) -> list[dict]:
        """Per-slice dicts for a MONAI ``Dataset``: ``image`` (1, h, w) float16, ``label`` (the LA mask, 1, h, w),
        ``target`` (4,) float32 binary ``(nulling, sharpness, enhancement, fibrosis)``, ``volume``, ``slice``,
        ``patient``."""
        c = self.cache
        return [
            {
                "image": c.images[n],
                "label": self.masks[n],
                "target": self.targets[c.volume[n]],
                "volume": int(c.volume[n]),
                "slice": int(c.slice[n]),
                "patient": str(c.entries[c.volume[n]].get("patient", "")),
            }
            for n in self.indices
        ]


class PrepareQABatch:
    """``prepare_batch`` of the QA engines: what the network gets and what the loss compares it with.

    Args:
        mode: ``"qa"``: ``(image, target)``; ``"multitask"``: ``(image, {"qa": target, "seg": label})``;
            ``"views"``: ``(views (N, V, 1, H, W), target)`` for contrastive pretraining.
        image_key, target_key, mask_key: batch keys of the image, the (N, 4) binary targets and the LA mask.
    """

    def __init__(
        self, mode: str = "qa", image_key: str = "image", target_key: str = "target", mask_key: str = "label"
    ) -> None:
        if mode not in ("qa", "multitask", "views"):
            raise ValueError(f"mode must be 'qa', 'multitask' or 'views', got {mode!r}")
        self.mode, self.image_key, self.target_key, self.mask_key = mode, image_key, target_key, mask_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        to = lambda x: torch.as_tensor(x).to(device=device, non_blocking=non_blocking, **kwargs)  # noqa: E731
        image, target = to(batchdata[self.image_key]).float(), to(batchdata[self.target_key]).float()
        if self.mode == "multitask":
            return image, {"qa": target, "seg": to(batchdata[self.mask_key]).float()}
        return image, target
