"""Per-scan LA-region stacks for the LA-region QA network and the reference: cut once, kept on disk, reused by folds.

Each quality entry of a datalist becomes one ``.npz`` file holding its LA-region slices (float16, the inference
preprocessing's 0..1 intensities), the LA mask cut the same way, the slice indices and the four binary targets. The
LA mask is the entry's ``label`` (the expert's) unless ``mask_dir`` holds a predicted mask of the same file name.
The cut is :func:`bundle.transforms.region.la_region_slices`, the one inference uses, and the slice selection is
:func:`bundle.transforms.selection.la_slices`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bundle.data.datalist import SCORE_KEYS, DatalistError, entry_name, to_binary
from bundle.io.dicom import VOLUME_SUFFIXES

__all__ = ["RegionScan", "load_region_scans", "region_cache", "region_scans", "scan_name"]

logger = logging.getLogger(__name__)


@dataclass
class RegionScan:
    """One scan's LA region: ``images`` ``(S, size, size)`` float16 0..1, ``masks`` ``(S, size, size)`` bool,
    ``slices`` (indices in the scan), ``target`` ``(4,)`` binary (nulling, sharpness, enhancement, fibrosis),
    ``scores`` ``(4,)`` 1..5, ``name``, ``patient``."""

    name: str
    patient: str
    images: np.ndarray
    masks: np.ndarray
    slices: np.ndarray
    target: np.ndarray
    scores: np.ndarray


def scan_name(path: str) -> str:
    """A scan's name from its file: the base name without the volume suffix, characters outside ``[A-Za-z0-9._-]``
    replaced (it becomes a file name)."""
    base = os.path.basename(os.path.normpath(path))
    suffix = next((s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if base.lower().endswith(s)), "")
    base = base[: len(base) - len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base) or "scan"


def _preprocess():
    from monai.transforms import Compose

    from bundle.io import LoadVolumed
    from bundle.transforms import ScaleForegroundPercentilesd

    return Compose(
        [
            LoadVolumed(keys=("image", "label"), ensure_channel_first=True),
            ScaleForegroundPercentilesd(keys="image", lower=0.5, upper=99.5),
        ]
    )  # (as inference)


def _cut(entry: dict, pixel_mm: float, size: int, min_la_area_mm2: float, mask_path: str | None) -> dict:
    from bundle.transforms.region import la_region_slices
    from bundle.transforms.selection import la_slices
    from bundle.transforms.slicing import in_plane_spacing, resolve_slice_axis

    data = _preprocess()({"image": entry["image"], "label": mask_path or entry["label"]})
    image, mask = data["image"], (data["label"] > 0.5).float()
    if tuple(image.shape) != tuple(mask.shape):
        raise DatalistError(f"{entry['image']}: image {tuple(image.shape)} and LA mask {tuple(mask.shape)} differ")
    axis = resolve_slice_axis(image, None)
    sp = in_plane_spacing(image, axis)
    _, selected = la_slices(mask, axis, sp[0] * sp[1], min_la_area_mm2)
    if not len(selected):
        raise DatalistError(f"{mask_path or entry['label']}: no LA slice in the mask")
    both = torch.cat([image.as_tensor(), mask.as_tensor()])
    crops = la_region_slices(both[:1], mask, axis, selected, pixel_mm, size, spacing=sp)
    mcrops = la_region_slices(both[1:], mask, axis, selected, pixel_mm, size, spacing=sp)
    return {
        "images": crops[:, 0].numpy().astype(np.float16),
        "masks": mcrops[:, 0].numpy() > 0.5,
        "slices": selected.astype(np.int32),
    }


def region_cache(
    entries: Sequence[dict],
    cache_dir: str,
    pixel_mm: float = 0.625,
    size: int = 96,
    min_la_area_mm2: float = 0.0,
    mask_dir: str | None = None,
    require_scores: bool = True,
) -> list[str]:
    """Cut (or find already cut) the LA region of every quality entry; returns the ``.npz`` paths in entry order.

    The cache key holds the image path, the mask used and the cut's settings, so another setting is another file.

    Args:
        entries: quality entries with absolute ``image`` and ``label`` paths, ``patient`` and the four scores.
        cache_dir: where the ``.npz`` files go.
        pixel_mm, size: :func:`~bundle.transforms.region.la_region_slices`.
        min_la_area_mm2: :func:`~bundle.transforms.selection.la_slices`.
        mask_dir: predicted LA masks named as the images (e.g. a cross-validation's ``oof_masks``); None: labels.
        require_scores: refuse an entry without the four scores (False: clean scans, scores stored as NaN).

    Raises:
        DatalistError: naming the entry, for a missing score, an empty mask or mismatched shapes.
    """
    os.makedirs(cache_dir, exist_ok=True)
    paths = []
    for e in entries:
        missing = [k for k in SCORE_KEYS if e.get(k) is None]
        if missing and require_scores:
            raise DatalistError(f"{entry_name(e)}: quality entry without {missing}")
        mask_path = None
        if mask_dir:
            mask_path = os.path.join(mask_dir, os.path.basename(str(e["image"])))
            if not os.path.isfile(mask_path):
                raise DatalistError(f"{mask_path}: no predicted LA mask for {e['image']}")
        key = json.dumps(
            [
                os.path.abspath(str(e["image"])),
                os.path.abspath(mask_path or str(e["label"])),
                float(pixel_mm),
                int(size),
                float(min_la_area_mm2),
            ]
        )
        name = scan_name(str(e["image"]))
        path = os.path.join(cache_dir, f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz")
        if not os.path.isfile(path):
            cut = _cut(e, pixel_mm, size, min_la_area_mm2, mask_path)
            scores = np.array([float(e[k]) if e.get(k) is not None else np.nan for k in SCORE_KEYS], np.float32)
            tmp = path[:-4] + ".tmp.npz"
            np.savez_compressed(tmp, **cut, scores=scores, name=name, patient=str(e["patient"]))
            os.replace(tmp, path)
        paths.append(path)
    return paths


def load_region_scans(paths: Sequence[str], threshold: int = 3) -> list[RegionScan]:
    """The :class:`RegionScan` of each cache file (targets binarised at ``threshold``, the paper's >= 3)."""
    out = []
    for p in paths:
        with np.load(p) as z:
            scores = z["scores"].astype(np.float32)
            out.append(
                RegionScan(
                    name=str(z["name"]),
                    patient=str(z["patient"]),
                    images=z["images"],
                    masks=z["masks"],
                    slices=z["slices"],
                    scores=scores,
                    target=np.array([to_binary(s, threshold) if s == s else np.nan for s in scores], np.float32),
                )
            )
    return out


def region_scans(
    entries: Sequence[dict], cache_dir: str, recipe: dict, mask_dir: str | None = None, require_scores: bool = True
) -> list[RegionScan]:
    """The scans of a QA recipe (``pixel_mm``, ``size`` plus a ``margin`` each side, ``normalise``): cut or found in
    ``cache_dir`` (:func:`region_cache`), loaded, each stack scaled by
    :func:`bundle.transforms.region.normalise_region` when ``normalise`` is set, by the median of the central
    ``size`` pixels: the window inference cuts and scales the same way."""
    from bundle.transforms.region import normalise_region

    paths = region_cache(
        entries,
        cache_dir,
        recipe["pixel_mm"],
        recipe["size"] + 2 * recipe["margin"],
        mask_dir=mask_dir,
        require_scores=require_scores,
    )
    scans = load_region_scans(paths)
    if recipe.get("normalise"):
        for s in scans:
            # scaled by the median of the window's centre, which is what inference cuts and scales
            images = normalise_region(s.images.astype(np.float32), recipe["normalise"], center=recipe["size"])
            s.images = images.astype(np.float16)
    return scans
