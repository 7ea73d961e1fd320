"""Stage 1's decisions, one function each: the LA mask, the LA slices, whether the LA found is plausible.

Inference (:class:`~bundle.inference.TwoStageStep`), the inference workflow's ``postprocessing`` (:class:`LAMaskd`,
also MONAI Label's LA task), QA training's slice selection (``bundle.inference.training_slices``) and the
cross-validation's evaluation (``bundle.evaluation.crossval``) all call these, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "LABounds",
    "LAMask",
    "LAMaskd",
    "implausible_la",
    "la_mask",
    "la_slices",
    "largest_component",
    "voxel_volume_mm3",
]


def voxel_volume_mm3(img: torch.Tensor) -> float:
    """The volume of one voxel (mm^3) of a channel-first 3D image, from its affine (1 without one)."""
    if isinstance(img, MetaTensor):
        return float(abs(np.linalg.det(img.affine.cpu().numpy().astype(float)[:3, :3])))
    return 1.0


def la_mask(logits: torch.Tensor, threshold: float = 0.5, keep_largest: bool = True) -> tuple[torch.Tensor, float]:
    """The LA mask from the detector's logits in a volume's grid, and the share of it the kept component holds.

    A voxel is LA when its sigmoid probability is at or above ``threshold``; with ``keep_largest`` only the largest
    3D connected component (MONAI's ``KeepLargestConnectedComponent``, face, edge and corner neighbours) is kept.

    Args:
        logits: ``(1, X, Y, Z)`` logits (a MetaTensor keeps its metadata).
        threshold: ``t``, in (0, 1).
        keep_largest: keep the largest connected component only.

    Returns:
        ``(mask, kept)``: the uint8 mask with ``logits``' shape and metadata, and the fraction of the thresholded
        voxels the mask keeps (1.0 when nothing was removed or nothing was found).

    Raises:
        ValueError: when ``threshold`` is outside (0, 1).
    """
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    plain = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
    # sigmoid(x) >= t  <=>  x >= logit(t): no probability volume in memory (a 576x576x88 scan: 117 MB saved)
    mask = (plain >= math.log(float(threshold) / (1.0 - float(threshold)))).to(torch.uint8)
    n_raw = int(mask.sum())
    if keep_largest and n_raw:
        mask = largest_component(mask)
    kept = float(mask.sum()) / n_raw if n_raw else 1.0
    if isinstance(logits, MetaTensor):
        mask = MetaTensor(mask, meta=logits.meta)
    return mask, kept


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 3D connected component (face, edge and corner neighbours) of a binary ``(1, X, Y, Z)`` mask.

    The same result as MONAI's ``KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)`` (ties: the
    component met first in C order), labelled with ``scipy.ndimage.label`` into 32-bit labels where MONAI's
    scikit-image path holds 64-bit ones: half the memory on a whole-chest scan.
    """
    from scipy import ndimage

    arr = mask.detach().cpu().numpy()[0].astype(bool, copy=False)
    box = ndimage.find_objects(arr.view(np.uint8) if arr.dtype == bool else arr)  # labelled inside the mask's box
    if not box or box[0] is None:
        return mask.to(torch.uint8)
    inner = arr[box[0]]
    labels, n = ndimage.label(inner, structure=np.ones((3, 3, 3), bool), output=np.int32)
    if n <= 1:
        return mask.to(torch.uint8)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    out = np.zeros((1, *arr.shape), dtype=np.uint8)
    out[0][box[0]] = labels == int(np.argmax(counts))
    return torch.from_numpy(out).to(mask.device)


def la_slices(
    mask: torch.Tensor | np.ndarray, axis: int, pixel_area_mm2: float = 1.0, min_area_mm2: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Which slices hold the LA: those whose mask covers at least ``min_area_mm2`` (and at least one pixel).

    ``min_area_mm2=0`` is the paper's rule (a slice holds the LA when any pixel is LA); a positive area ignores
    specks at the LA's ends, where the detector is least sure.

    Args:
        mask: the LA mask ``(1, X, Y, Z)`` (or ``(X, Y, Z)``) in the volume's grid.
        axis: the spatial slice axis.
        pixel_area_mm2: the in-plane area of one pixel.
        min_area_mm2: the smallest LA area that selects a slice.

    Returns:
        ``(areas, selected)``: each slice's LA area in mm^2, and the sorted indices of the selected slices.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 4:
        m = m[0]
    other = tuple(i for i in range(3) if i != int(axis))
    areas = (m > 0).sum(axis=other).astype(float) * float(pixel_area_mm2)
    selected = np.flatnonzero((areas > 0) & (areas >= float(min_area_mm2)))
    return areas, selected


@dataclass
class LABounds:
    """What an LA found by the detector may look like before it is trusted (checked on la2018: docs/model_card.md).

    Attributes:
        min_ml: smallest LA blood-pool volume.
        max_ml: largest LA blood-pool volume.
        min_extent_mm: fewest millimetres along the slice axis the LA spans.
        max_extent_mm: most millimetres along the slice axis.
        min_kept: smallest share of the thresholded voxels that the largest connected component holds (a detector
            that finds several LA-sized pieces is not sure where the LA is).
    """

    min_ml: float = 15.0
    max_ml: float = 250.0
    min_extent_mm: float = 15.0
    max_extent_mm: float = 120.0
    min_kept: float = 0.75

    def __post_init__(self) -> None:
        if not (
            0 <= self.min_ml < self.max_ml and 0 <= self.min_extent_mm < self.max_extent_mm and 0 <= self.min_kept <= 1
        ):
            raise ValueError(f"inconsistent LA bounds {self}")


def implausible_la(volume_ml: float, extent_mm: float, kept: float, bounds: LABounds | None = None) -> list[str]:
    """Why a detected LA is not plausible (empty when it is): each reason one short phrase.

    Args:
        volume_ml: the mask's volume.
        extent_mm: the distance along the slice axis from the first to the last selected slice.
        kept: the share of the thresholded voxels in the kept component (:func:`la_mask`).
        bounds: the limits; None: :class:`LABounds` defaults.
    """
    b = bounds or LABounds()
    reasons = []
    if volume_ml < b.min_ml or volume_ml > b.max_ml:
        reasons.append(f"LA volume {volume_ml:.1f} ml outside {b.min_ml:g}-{b.max_ml:g} ml")
    if extent_mm < b.min_extent_mm or extent_mm > b.max_extent_mm:
        reasons.append(
            f"LA extent {extent_mm:.1f} mm along the slice axis outside {b.min_extent_mm:g}-{b.max_extent_mm:g} mm"
        )
    if kept < b.min_kept:
        reasons.append(f"only {100 * kept:.0f}% of the detected LA is one connected piece (< {100 * b.min_kept:.0f}%)")
    return reasons


class LAMask(Transform):
    """:func:`la_mask` as a transform: logits ``(1, X, Y, Z)`` in, the uint8 LA mask out.

    Args:
        threshold: ``t``.
        keep_largest: keep the largest 3D connected component only.
    """

    backend = [torch.Tensor]

    def __init__(self, threshold: float = 0.5, keep_largest: bool = True) -> None:
        if not 0 < float(threshold) < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.keep_largest = bool(keep_largest)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return la_mask(logits, self.threshold, self.keep_largest)[0]


class LAMaskd(MapTransform):
    """Dictionary wrapper of :class:`LAMask` (the inference workflow's and MONAI Label's postprocessing)."""

    backend = LAMask.backend

    def __init__(
        self,
        keys: KeysCollection = "pred",
        threshold: float = 0.5,
        keep_largest: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.masker = LAMask(threshold, keep_largest)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key])
        return d
