"""Stage-2 data: the LA slices of the quality list, their binary targets, and the batches the QA engines see.

Slices are selected once per run (not per epoch): by the trained LA detector at threshold ``t`` as the paper
(``mode="detector"``), or by the ground-truth mask (``mode="mask"``, e.g. before a detector exists). Each slice
inherits its volume's scores, made binary (score >= 3 is diagnostic, 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.data.datalist import SCORE_KEYS, entry_name, to_binary
from bundle.data.prepare import DataSplit, cached_slices
from bundle.data.slices import SliceCache, _fingerprint

__all__ = ["DETECTOR_HINT", "PrepareQABatch", "QASlices", "detect_la", "qa_slices"]

logger = logging.getLogger(__name__)

SELECTION_MODES = ("detector", "mask")
DETECTOR_HINT = ("train it with: python -m monai.bundle run training --config_file "
                 "\"['configs/common.yaml','configs/train.yaml']\" (with this run's --dataset_dir/--datalist/--ckpt_dir),"
                 " or pass --qa_slices mask to select slices by the ground-truth masks")  # fmt: skip


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
        logger.info(f"QA slices ({source}): {len(idx)} of {len(cache)} slices from "
                    f"{int((counts > 0).sum())} of {len(cache.entries)} volumes")  # fmt: skip

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
            {"image": c.images[n], "label": self.masks[n], "target": self.targets[c.volume[n]],
             "volume": int(c.volume[n]), "slice": int(c.slice[n]),
             "patient": str(c.entries[c.volume[n]].get("patient", ""))}  # fmt: skip
            for n in self.indices
        ]


@torch.no_grad()
def detect_la(
    detector: torch.nn.Module, images: np.ndarray, threshold: float = 0.5, batch_size: int = 64, device="cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run the LA detector on slices.

    Args:
        detector: network giving one LA logit per pixel.
        images: ``(n, 1, h, w)`` slices.
        threshold: ``t`` on the sigmoid.
        batch_size: slices per forward pass.
        device: where to run.

    Returns:
        ``(max probability per slice (n,), predicted masks (n, 1, h, w) uint8)``; a slice holds the LA when its
        maximum exceeds ``threshold``.
    """
    detector = detector.to(device).eval()
    peaks, masks = [], []
    for i in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[i : i + batch_size], dtype=np.float32), device=device)
        prob = torch.sigmoid(detector(x))
        peaks.append(prob.flatten(1).amax(1).cpu().numpy())
        masks.append((prob > threshold).to(torch.uint8).cpu().numpy())
    if not peaks:
        return np.zeros(0, np.float32), np.zeros((0, 1, *images.shape[2:]), np.uint8)
    return np.concatenate(peaks).astype(np.float32), np.concatenate(masks)


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    out = F.interpolate(torch.as_tensor(masks, dtype=torch.float32), size=(size, size), mode="nearest")
    return out.to(torch.uint8).numpy()


def qa_slices(
    data: DataSplit,
    part: str,
    mode: str = "detector",
    spatial_size: int = 128,
    slice_axis: int | None = None,
    cache_dir: str | None = None,
    la_threshold: float = 0.5,
    detector_ckpt: str | None = None,
    detector_config: str | Sequence[str] | None = None,
    detector_size: int = 128,
    step: int = 1,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> QASlices:
    """The LA slices of the quality list's ``part``, selected once: the config entry point of stage-2 data.

    In ``detector`` mode the detector runs on slices of ``detector_size`` (the size it was trained at); its
    per-slice maxima and, for volumes without a datalist mask, its masks are kept under ``cache_dir`` keyed by
    the checkpoint's and the volumes' identities, so later runs skip the forward passes.

    Args:
        data: the output of :func:`bundle.data.prepare_data`.
        part: "train", "val" or "test".
        mode: "detector" (the paper) or "mask" (ground-truth masks).
        spatial_size: size of the QA slices.
        slice_axis: slice axis (None: from the geometry).
        cache_dir: the slice cache folder.
        la_threshold: ``t``.
        detector_ckpt: the LA detector's state dict (``models/model.pt``).
        detector_config: config file(s) holding the detector's ``network_def`` (``configs/common.yaml``, or a
            detector run's ``config.json``).
        detector_size: slice size the detector was trained at.
        step: keep every ``step``-th selected slice per volume.
        device: where the detector runs.
        batch_size: detector batch size.

    Raises:
        SystemExit: one line, when the mode is unknown or the detector checkpoint is missing or does not fit.
    """
    if mode not in SELECTION_MODES:
        raise SystemExit(f"ERROR: qa_slices must be one of {SELECTION_MODES}, got {mode!r}")
    cache = cached_slices(data, "quality", part, spatial_size=spatial_size, slice_axis=slice_axis, cache_dir=cache_dir)
    if mode == "mask":
        return QASlices(cache, cache.has_la, step=step, source="mask")
    if not detector_ckpt or not os.path.isfile(detector_ckpt):
        raise SystemExit(f"ERROR qa_slices=detector: no LA detector checkpoint at {detector_ckpt}; {DETECTOR_HINT}")
    det_cache = cache if int(detector_size) == cache.spatial_size else cached_slices(
        data, "quality", part, spatial_size=detector_size, slice_axis=slice_axis, cache_dir=cache_dir)  # fmt: skip
    no_mask = ~det_cache.has_mask
    key = hashlib.sha1(json.dumps([_fingerprint(detector_ckpt), [det_cache._key(e) for e in det_cache.entries],
                                   float(la_threshold), no_mask.tolist()], default=str).encode()).hexdigest()[:20]  # fmt: skip
    path = os.path.join(cache_dir, f"la_selection_{key}.npz") if cache_dir else None
    if path and os.path.isfile(path):
        with np.load(path) as z:
            peaks, pred = z["peaks"], z["masks"]
        logger.info(f"LA slice selection read from {path}")
    else:
        from bundle.networks.loading import load_network

        detector = load_network(detector_config, detector_ckpt, device=device, hint=DETECTOR_HINT)
        peaks, pred = detect_la(detector, det_cache.images, la_threshold, batch_size, device)
        pred = pred[no_mask]
        if path:
            np.savez(path + ".tmp.npz", peaks=peaks, masks=pred)
            os.replace(path + ".tmp.npz", path)
    selected = peaks > la_threshold
    masks = cache.labels.copy()
    if no_mask.any():
        masks[no_mask] = _resize_masks(pred, cache.spatial_size)
    source = f"detector {os.path.basename(detector_ckpt)} t={la_threshold}"
    return QASlices(cache, selected, masks=masks, step=step, source=source)


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
