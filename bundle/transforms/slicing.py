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

__all__ = [
    "ExtractSlices",
    "ExtractSlicesd",
    "in_plane_spacing",
    "resolve_slice_axis",
    "slice_spacing",
    "voxel_spacing",
]

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


def voxel_spacing(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of the 3 spatial axes from a MetaTensor's affine; 1 mm where there is none."""
    if isinstance(img, MetaTensor):
        affine = img.affine.cpu().numpy().astype(float)
        return np.linalg.norm(affine[:3, :3], axis=0)
    return np.ones(3)


def in_plane_spacing(img: torch.Tensor | np.ndarray, axis: int) -> tuple[float, float]:
    """The in-plane pixel size (mm) of a channel-first 3D image's slices along spatial ``axis``."""
    sp = voxel_spacing(img)
    return tuple(float(sp[i]) for i in range(3) if i != axis)  # type: ignore[return-value]


def slice_spacing(img: torch.Tensor | np.ndarray, axis: int) -> float:
    """The distance (mm) between a channel-first 3D image's slices along spatial ``axis``."""
    return float(voxel_spacing(img)[axis])


class ExtractSlices(Transform):
    """Cut a channel-first 3D volume into 2D slices along its slice axis and resize each slice.

    ``(C, X, Y, Z)`` becomes ``(S, C, h, w)``: the batch of ``S`` slices along ``slice_axis``, each resized to
    ``spatial_size`` (the paper's 128x128) with ``mode`` interpolation (linear for images, nearest for masks).
    The in-plane axes keep their order, so slice ``k`` of the output is ``volume[..., k]`` when the slice axis
    is the last one.

    With ``pixel_mm`` the slices are instead resampled to that physical pixel size (from the affine), so the same
    anatomy gives the same pixels whatever the field of view; ``spatial_size`` is then the canvas each slice is
    centre-padded (zeros) or centre-cropped to, or None to keep the resampled size (inference: a sliding window
    covers any size). With ``context`` > 0 each output slice also carries its ``context`` neighbours on each side
    as channels (2.5D; ``(S, C * (2 context + 1), h, w)``, the slice itself in the middle), ``context_mm`` apart
    (rounded to whole slices, at least one; edge slices repeat).

    Args:
        spatial_size: output in-plane size, an int or a pair (the canvas with ``pixel_mm``; None: no canvas).
        slice_axis: spatial axis to slice along (0, 1, 2); None reads it from the image affine (the voxel axis
            closest to the patient's superior-inferior direction).
        mode: interpolation mode of ``torch.nn.functional.interpolate``: "bilinear", "nearest", ...
        dtype: output dtype; None keeps float32 for interpolated images.
        pixel_mm: in-plane pixel size (mm) to resample to; None resizes to ``spatial_size`` (the paper's way).
        context: neighbouring slices on each side added as channels (0: plain 2D).
        context_mm: distance between those neighbours in mm; None: adjacent slices.
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        spatial_size: int | Sequence[int] | None = 128,
        slice_axis: int | None = None,
        mode: str = "bilinear",
        dtype: torch.dtype | None = None,
        pixel_mm: float | None = None,
        context: int = 0,
        context_mm: float | None = None,
    ) -> None:
        if spatial_size is None and pixel_mm is None:
            raise ValueError("spatial_size may be None only with pixel_mm")
        size = None if spatial_size is None else ensure_tuple_rep(spatial_size, 2)
        if size is not None and any(int(s) < 1 for s in size):
            raise ValueError(f"spatial_size must be positive, got {spatial_size}")
        if slice_axis is not None and not -3 <= int(slice_axis) <= 2:
            raise ValueError(f"slice_axis must be in [-3, 2] or None, got {slice_axis}")
        if pixel_mm is not None and not float(pixel_mm) > 0:
            raise ValueError(f"pixel_mm must be > 0 or None, got {pixel_mm}")
        if int(context) < 0 or (context_mm is not None and not float(context_mm) > 0):
            raise ValueError(f"context must be >= 0 and context_mm > 0 or None, got {context}, {context_mm}")
        self.spatial_size = None if size is None else tuple(int(s) for s in size)
        self.slice_axis = slice_axis
        self.mode = look_up_option(mode, _MODES)
        self.dtype = dtype
        self.pixel_mm = None if pixel_mm is None else float(pixel_mm)
        self.context = int(context)
        self.context_mm = None if context_mm is None else float(context_mm)
        self._resize = None if self.pixel_mm is not None else Resize(spatial_size=self.spatial_size, mode=self.mode)

    def target_size(self, img: torch.Tensor | np.ndarray, axis: int) -> tuple[int, int]:
        """The in-plane size the slices of ``img`` are interpolated to (before any canvas)."""
        in_plane = tuple(int(s) for i, s in enumerate(img.shape[1:]) if i != axis)
        if self.pixel_mm is None:
            return self.spatial_size  # type: ignore[return-value]
        sp = in_plane_spacing(img, axis)
        return tuple(max(1, int(round(n * d / self.pixel_mm))) for n, d in zip(in_plane, sp))  # type: ignore

    def _context(self, stack: torch.Tensor, step: int) -> torch.Tensor:
        """``(S, C, a, b)`` -> ``(S, C * (2 context + 1), a, b)``: each slice with its neighbours, edges repeated."""
        s = stack.shape[0]
        offsets = [k * step for k in range(-self.context, self.context + 1)]
        idx = [torch.clamp(torch.arange(s) + o, 0, s - 1) for o in offsets]
        return torch.cat([stack[i] for i in idx], dim=1)

    def __call__(self, img: torch.Tensor | np.ndarray, slice_axis: int | None = None) -> torch.Tensor:
        """
        Args:
            img: channel-first 3D image.
            slice_axis: overrides the axis given at construction for this call.

        Returns:
            a plain tensor ``(S, C, h, w)``.
        """
        axis = resolve_slice_axis(img, self.slice_axis if slice_axis is None else slice_axis)
        size = self.target_size(img, axis)
        step = 1
        if self.context and self.context_mm is not None:
            step = max(1, int(round(self.context_mm / slice_spacing(img, axis))))
        t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
        c = t.shape[0]
        stack = t.movedim(1 + axis, 0)  # (S, C, a, b), in-plane axes keep their order
        s, a, b = stack.shape[0], stack.shape[2], stack.shape[3]
        if (a, b) != size:
            flat = stack.reshape(s * c, a, b).float()
            resize = self._resize or Resize(spatial_size=size, mode=self.mode)
            resized = resize(flat)  # MONAI's Resize returns a MetaTensor: drop it, as documented below
            resized = resized.as_tensor() if isinstance(resized, MetaTensor) else torch.as_tensor(resized)
            stack = resized.reshape(s, c, *size)
        if self.pixel_mm is not None and self.spatial_size is not None and size != self.spatial_size:
            stack = _pad_or_crop(stack, self.spatial_size)
        if self.context:
            stack = self._context(stack, step)
        out = stack.contiguous()
        if self.dtype is not None:
            out = out.to(self.dtype)
        elif not out.is_floating_point():
            out = out.float()
        return out


def _pad_or_crop(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-pad (zeros) or centre-crop the last two axes of ``(S, C, a, b)`` to ``size``, centred as MONAI's
    ``SlidingWindowInferer`` pads (``diff // 2`` before), so a canvas slice is what inference's window sees."""
    out = stack
    for dim, n in zip((2, 3), size):
        cur = out.shape[dim]
        if cur > n:
            start = (cur - n) // 2
            out = out.narrow(dim, start, n)
        elif cur < n:
            before = (n - cur) // 2
            pad = [0, 0, 0, 0]
            pad[(3 - dim) * 2 : (3 - dim) * 2 + 2] = [before, n - cur - before]
            out = torch.nn.functional.pad(out, pad)
    return out


class ExtractSlicesd(MapTransform):
    """Dictionary wrapper of :class:`ExtractSlices`; all keys share one slice axis.

    When ``slice_axis`` is None the axis is read from the first key's affine and applied to every key, so an
    image and its mask are cut the same way. The axis used is stored under ``slice_axis_key``.

    Args:
        keys: keys of the channel-first 3D images to slice.
        spatial_size: output in-plane size (the canvas with ``pixel_mm``).
        slice_axis: spatial axis, or None for the first key's geometry.
        mode: interpolation mode per key (a string or one per key).
        slice_axis_key: where the axis used is written in the output dict.
        allow_missing_keys: skip keys that are absent.
        pixel_mm: in-plane pixel size to resample to (None: resize to ``spatial_size``).
        context: neighbouring slices on each side as channels, per key (e.g. ``[1, 0]``: the image 2.5D, its
            mask not).
        context_mm: distance between those neighbours in mm (None: adjacent slices).
    """

    backend = ExtractSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int] | None = 128,
        slice_axis: int | None = None,
        mode: str | Sequence[str] = "bilinear",
        slice_axis_key: str = "slice_axis",
        allow_missing_keys: bool = False,
        pixel_mm: float | None = None,
        context: int | Sequence[int] = 0,
        context_mm: float | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        contexts = ensure_tuple_rep(context, len(self.keys))
        self.slicers = [
            ExtractSlices(spatial_size, slice_axis, m, pixel_mm=pixel_mm, context=c, context_mm=context_mm)
            for m, c in zip(self.mode, contexts)
        ]
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
