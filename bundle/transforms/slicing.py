"""Cut a 3D volume into resized axial slices (stage 1 and stage 2 both work on 2D slices)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Transform
from monai.utils import ensure_tuple_rep, look_up_option

from bundle.io.geometry import slice_axis_from_affine

__all__ = ["ExtractSlices", "ExtractSlicesd", "resolve_slice_axis"]

_MODES = ("bilinear", "nearest", "bicubic", "area", "nearest-exact")


def resolve_slice_axis(img: torch.Tensor | np.ndarray, slice_axis: int | None) -> int:
    """The spatial slice axis of a channel-first 3D image: ``slice_axis`` when given, else from its affine.

    Args:
        img: channel-first image ``(C, X, Y, Z)``; a MetaTensor carries the affine used when ``slice_axis`` is None.
        slice_axis: explicit spatial axis (0, 1 or 2; negative counts from the end) or None.

    Returns:
        the spatial axis index, 0, 1 or 2. An image without an affine falls back to the last axis.

    Raises:
        ValueError: when the image is not 3D channel-first or ``slice_axis`` is out of range.
    """
    if img.ndim != 4:
        raise ValueError(f"expected a channel-first 3D image (C, X, Y, Z), got shape {tuple(img.shape)}")
    if slice_axis is not None:
        if not -3 <= int(slice_axis) <= 2:
            raise ValueError(f"slice_axis must be in [-3, 2], got {slice_axis}")
        return int(slice_axis) % 3
    if isinstance(img, MetaTensor):
        return slice_axis_from_affine(img.affine.cpu().numpy())
    return 2


class ExtractSlices(Transform):
    """Cut a channel-first 3D volume into 2D slices along its slice axis and resize each slice.

    ``(C, X, Y, Z)`` becomes ``(S, C, h, w)``: the batch of ``S`` slices along ``slice_axis``, each resized to
    ``spatial_size`` (the paper's 128x128) with ``mode`` interpolation (linear for images, nearest for masks).
    The in-plane axes keep their order, so slice ``k`` of the output is ``volume[..., k]`` when the slice axis
    is the last one.

    Args:
        spatial_size: output in-plane size, an int or a pair.
        slice_axis: spatial axis to slice along (0, 1, 2); None reads it from the image affine (the voxel axis
            closest to the patient's superior-inferior direction).
        mode: interpolation mode of ``torch.nn.functional.interpolate``: "bilinear", "nearest", ...
        dtype: output dtype; None keeps float32 for interpolated images.
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        spatial_size: int | Sequence[int] = 128,
        slice_axis: int | None = None,
        mode: str = "bilinear",
        dtype: torch.dtype | None = None,
    ) -> None:
        size = ensure_tuple_rep(spatial_size, 2)
        if any(int(s) < 1 for s in size):
            raise ValueError(f"spatial_size must be positive, got {spatial_size}")
        if slice_axis is not None and not -3 <= int(slice_axis) <= 2:
            raise ValueError(f"slice_axis must be in [-3, 2] or None, got {slice_axis}")
        self.spatial_size = tuple(int(s) for s in size)
        self.slice_axis = slice_axis
        self.mode = look_up_option(mode, _MODES)
        self.dtype = dtype
        self._resize = Resize(spatial_size=self.spatial_size, mode=self.mode)

    def __call__(self, img: torch.Tensor | np.ndarray, slice_axis: int | None = None) -> torch.Tensor:
        """
        Args:
            img: channel-first 3D image.
            slice_axis: overrides the axis given at construction for this call.

        Returns:
            a plain tensor ``(S, C, h, w)``.
        """
        axis = resolve_slice_axis(img, self.slice_axis if slice_axis is None else slice_axis)
        t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
        c = t.shape[0]
        stack = t.movedim(1 + axis, 0)  # (S, C, a, b), in-plane axes keep their order
        s, a, b = stack.shape[0], stack.shape[2], stack.shape[3]
        if (a, b) != self.spatial_size:
            flat = stack.reshape(s * c, a, b).float()
            resized = self._resize(flat)  # MONAI's Resize returns a MetaTensor: drop it, as documented below
            resized = resized.as_tensor() if isinstance(resized, MetaTensor) else torch.as_tensor(resized)
            stack = resized.reshape(s, c, *self.spatial_size)
        out = stack.contiguous()
        if self.dtype is not None:
            out = out.to(self.dtype)
        elif not out.is_floating_point():
            out = out.float()
        return out


class ExtractSlicesd(MapTransform):
    """Dictionary wrapper of :class:`ExtractSlices`; all keys share one slice axis.

    When ``slice_axis`` is None the axis is read from the first key's affine and applied to every key, so an
    image and its mask are cut the same way. The axis used is stored under ``slice_axis_key``.

    Args:
        keys: keys of the channel-first 3D images to slice.
        spatial_size: output in-plane size.
        slice_axis: spatial axis, or None for the first key's geometry.
        mode: interpolation mode per key (a string or one per key).
        slice_axis_key: where the axis used is written in the output dict.
        allow_missing_keys: skip keys that are absent.
    """

    backend = ExtractSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int] = 128,
        slice_axis: int | None = None,
        mode: str | Sequence[str] = "bilinear",
        slice_axis_key: str = "slice_axis",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.slicers = [ExtractSlices(spatial_size, slice_axis, m) for m in self.mode]
        self.slice_axis = slice_axis
        self.slice_axis_key = slice_axis_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        axis = None
        for key, slicer in self.key_iterator(d, self.slicers):
            if axis is None:
                axis = resolve_slice_axis(d[key], self.slice_axis)
            d[key] = slicer(d[key], slice_axis=axis)
        if axis is not None:
            d[self.slice_axis_key] = axis
        return d
