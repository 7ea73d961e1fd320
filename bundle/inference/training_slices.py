"""The LA slices QA trains and is evaluated on, selected as inference selects them.

Stage 2's training data is chosen by stage 1: the trained LA detector runs on every quality scan exactly as the
two-stage inference runs it (:func:`bundle.inference.segment_la`: the checkpoint's plan decides the threshold, the
largest component and the minimum LA area), so the slices QA learns from are the slices it will be shown. Running a
network is inference's job, which is why this selection lives here and not in ``bundle.data`` (whose
:class:`bundle.data.QASlices` holds the result). ``mode="mask"`` selects by the datalist's LA masks instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch

from bundle.data.prepare import DataSplit, cached_slices
from bundle.data.qa import DETECTOR_HINT, SELECTION_MODES, QASlices
from bundle.data.slices import SliceCache, file_fingerprint
from bundle.errors import ConfigError, DataError, WeightsError

__all__ = ["detect_la", "select_qa_slices"]

logger = logging.getLogger(__name__)


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


def select_qa_slices(
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
                file_fingerprint(detector_ckpt),
                file_fingerprint(plan) if os.path.isfile(plan) else None,
                [cache.entry_key(e) for e in cache.entries],
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
