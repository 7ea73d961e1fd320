"""The per-slice loader pipelines of the training workflows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Compose, EnsureTyped, RandSpatialCropd

from bundle.transforms.intensity import DecodeSliced

__all__ = ["random_crop", "slice_pipeline"]


def slice_pipeline(
    augment: Sequence | None = None, in_loader: bool = True, keys: Sequence[str] = ("image", "label")
) -> Compose:
    """Decode a cached slice to float32 tensors and, when ``in_loader``, apply ``augment`` per slice.

    With ``in_loader=False`` the augmentation is left to the training device (``bundle.engines.SlicePrepareBatch``
    with a :class:`bundle.transforms.BatchRandSliceAffine`).

    Args:
        augment: dictionary transforms for ``keys`` (e.g. the configs' ``augment`` list); None for validation.
        in_loader: apply ``augment`` here.
        keys: image and mask keys.

    Returns:
        a ``Compose`` producing plain tensors (no metadata), ready for default collation.
    """
    to_tensor = EnsureTyped(keys=list(keys), dtype=torch.float32, track_meta=False, allow_missing_keys=True)
    steps = [DecodeSliced(keys=list(keys), scale_uint8=[True] + [False] * (len(keys) - 1), allow_missing_keys=True)]
    if augment and in_loader:
        steps += [*augment, to_tensor]  # the augmentation returns MetaTensors: back to plain tensors
    return Compose(steps)


def random_crop(size: int | None, pixel_mm: float | None, keys: Sequence[str] = ("image", "label")) -> list:
    """The detector's training crop: ``[RandSpatialCropd(size)]`` with spacing-based slices, else nothing.

    With ``pixel_mm`` the cached slices are a canvas around the resampled slice and inference slides a window over
    slices of any size; training on random ``size`` crops of the canvas shows the network every position of the
    anatomy in its window. Resized slices (``pixel_mm`` None) are trained whole, as the paper does.

    Args:
        size: crop side in pixels; None: no crop.
        pixel_mm: the detector's pixel size (None: resized slices).
        keys: image and mask keys, cropped alike.
    """
    if size is None or pixel_mm is None:
        return []
    return [RandSpatialCropd(keys=list(keys), roi_size=int(size), random_size=False)]
