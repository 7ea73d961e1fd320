"""Stage-2 data: the LA slices of the quality list, their binary targets, and the batches the QA engines see.

Slices are selected once per run (not per epoch): by the trained LA detector as inference selects them
(``mode="detector"``), or by the ground-truth mask (``mode="mask"``, e.g. before a detector exists). Each slice
inherits its volume's scores, made binary (score >= 3 is diagnostic, 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch

from bundle.data.datalist import SCORE_KEYS, entry_name, to_binary
from bundle.data.prepare import DataSplit, cached_slices
from bundle.data.slices import SliceCache, _fingerprint
from bundle.errors import ConfigError, DataError, WeightsError

__all__ = ["DETECTOR_HINT", "PrepareQABatch", "QASlices", "detect_la", "qa_slices"]

logger = logging.getLogger(__name__)

SELECTION_MODES = ("detector", "mask")
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


def detect_la(
    cache: SliceCache, detector_ckpt: str, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 on every volume of ``cache``, exactly as inference runs it, mapped onto the cache's slices.

    The detector and its settings come from its checkpoint and plan (:func:`bundle.inference.load_detector`); each
    volume is read and normalised as inference reads it and goes through :func:`bundle.inference.segment_la` (LA
    mask in the volume's grid, largest component, minimum LA area per slice): the slices it selects are the slices
    inference would hand to stage 2.

    Args:
        cache: the QA slice cache (its entries, slice axis and slice size).
        detector_ckpt: the detector's checkpoint (its plan beside it).
        device: where the detector runs.

    Returns:
        ``(selected (n,) bool per cache slice, LA masks (n, 1, h, w) uint8 at the cache's slice size)``.

    Raises:
        WeightsError: one line, when the checkpoint or its plan is missing or does not fit.
    """
    from bundle.inference.detector import load_detector, load_volume, segment_la
    from bundle.inference.weights import detector_plan
    from bundle.transforms.slicing import ExtractSlices

    detector_plan(detector_ckpt)  # a missing checkpoint or plan: one line
    network, plan = load_detector(detector_ckpt, device)
    selected = np.zeros(len(cache), bool)
    masks = np.zeros((len(cache), 1, cache.spatial_size, cache.spatial_size), np.uint8)
    resize = ExtractSlices(spatial_size=cache.spatial_size, mode="nearest")
    for v, entry in enumerate(cache.entries):
        rows = np.flatnonzero(cache.volume == v)
        la = segment_la(network, plan, load_volume(entry["image"]))
        if la["axis"] != cache.slice_axes[v]:
            raise DataError(
                f"qa_slices=detector: {entry['image']}: the detector sliced along axis {la['axis']}, "
                f"the QA slices along {cache.slice_axes[v]} (set slice_axis alike)"
            )
        chosen = set(la["selected"].tolist())
        selected[rows] = [int(cache.slice[r]) in chosen for r in rows]
        masks[rows] = resize(la["mask"], slice_axis=la["axis"]).to(torch.uint8).numpy()[cache.slice[rows]]
    return selected, masks


def qa_slices(
    data: DataSplit,
    part: str,
    mode: str = "detector",
    spatial_size: int = 128,
    slice_axis: int | None = None,
    cache_dir: str | None = None,
    detector_ckpt: str | None = None,
    step: int = 1,
    device: str | torch.device = "cpu",
) -> QASlices:
    """The LA slices of the quality list's ``part``, selected once: the config entry point of stage-2 data.

    In ``detector`` mode the LA slices are those inference would select (:func:`detect_la`: the checkpoint's plan
    decides threshold, largest component and minimum LA area); the selection and, for volumes without a datalist
    mask, the detector's masks are kept under ``cache_dir`` keyed by the checkpoint's, its plan's and the volumes'
    identities, so later runs skip the forward passes.

    Args:
        data: the output of :func:`bundle.data.prepare_data`.
        part: "train", "val" or "test".
        mode: "detector" (the paper) or "mask" (ground-truth masks).
        spatial_size: size of the QA slices.
        slice_axis: slice axis (None: from the geometry).
        cache_dir: the slice cache folder.
        detector_ckpt: the LA detector's checkpoint, its plan beside it (``models/detector.pt``).
        step: keep every ``step``-th selected slice per volume.
        device: where the detector runs.

    Raises:
        ConfigError, WeightsError: one line, when the mode is unknown or the detector checkpoint is missing or does
            not fit.
    """
    if mode not in SELECTION_MODES:
        raise ConfigError(f"qa_slices must be one of {SELECTION_MODES}, got {mode!r}")
    cache = cached_slices(data, "quality", part, spatial_size=spatial_size, slice_axis=slice_axis, cache_dir=cache_dir)
    if mode == "mask":
        return QASlices(cache, cache.has_la, step=step, source="mask")
    if not detector_ckpt or not os.path.isfile(detector_ckpt):
        raise WeightsError(f"qa_slices=detector: no LA detector checkpoint at {detector_ckpt}; {DETECTOR_HINT}")
    from bundle.networks.plan import plan_path

    no_mask = ~cache.has_mask
    plan = plan_path(detector_ckpt)
    key = hashlib.sha1(
        json.dumps(
            [
                _fingerprint(detector_ckpt),
                _fingerprint(plan) if os.path.isfile(plan) else None,
                [cache._key(e) for e in cache.entries],
                no_mask.tolist(),
            ],
            default=str,
        ).encode()
    ).hexdigest()[:20]
    path = os.path.join(cache_dir, f"la_selection_{key}.npz") if cache_dir else None
    if path and os.path.isfile(path):
        with np.load(path) as z:
            selected, pred = z["selected"], z["masks"]
        logger.info(f"LA slice selection read from {path}")
    else:
        selected, pred = detect_la(cache, detector_ckpt, device)
        pred = pred[no_mask]
        if path:
            np.savez(path + ".tmp.npz", selected=selected, masks=pred)
            os.replace(path + ".tmp.npz", path)
    masks = cache.labels.copy()
    if no_mask.any():
        masks[no_mask] = pred
    source = f"detector {os.path.basename(detector_ckpt)} (its plan's rule, as inference)"
    return QASlices(cache, selected.astype(bool), masks=masks, step=step, source=source)


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
