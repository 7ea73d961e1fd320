"""The per-slice loader pipelines of the training workflows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai.transforms import Compose, EnsureTyped

from bundle.transforms.intensity import DecodeSliced

__all__ = ["slice_pipeline"]


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
