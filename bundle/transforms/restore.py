"""Put 2D slice predictions back on the grid of the 3D volume they were cut from (the inverse of ExtractSlices)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Transform
from monai.utils import ensure_tuple_rep, look_up_option

from bundle.transforms.slicing import _MODES, resolve_slice_axis

__all__ = ["RestoreSlices", "RestoreSlicesd"]


class RestoreSlices(Transform):
    """Stack 2D slices back into the channel-first volume they were cut from, on that volume's own grid.

    ``(S, C, h, w)`` becomes ``(C, X, Y, Z)``: each slice is resized back to the volume's in-plane shape with
    ``mode`` interpolation and the slices are stacked along the volume's slice axis, so that
    ``RestoreSlices()(ExtractSlices()(vol), vol)`` has ``vol``'s shape (and equals it where no resizing happened).
    The reference volume gives the target shape and, when it is a ``MetaTensor``, the geometry (affine and meta
    data) of the output; its voxels are not used.

    Args:
        slice_axis: spatial axis the slices were cut along (0, 1, 2); None reads it from the reference's affine,
            by the rule :class:`ExtractSlices` uses.
        mode: interpolation mode of ``torch.nn.functional.interpolate``: "bilinear" for probabilities, "nearest"
            for masks.
        dtype: output dtype; None keeps the interpolated float32.
        chunk: voxels resized at a time: the slices are written into the output a few at a time, so a whole-chest
            scan never holds a second full-size copy.
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        slice_axis: int | None = None,
        mode: str = "bilinear",
        dtype: torch.dtype | None = None,
        chunk: int = 8_000_000,
    ) -> None:
        if slice_axis is not None and not -3 <= int(slice_axis) <= 2:
            raise ValueError(f"slice_axis must be in [-3, 2] or None, got {slice_axis}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)
        self.slice_axis = slice_axis
        self.mode = look_up_option(mode, _MODES)
        self.dtype = dtype

    def __call__(
        self, img: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, slice_axis: int | None = None
    ) -> torch.Tensor:
        """
        Args:
            img: slices ``(S, C, h, w)``, in the order :class:`ExtractSlices` produced them.
            ref: the channel-first volume ``(C', X, Y, Z)`` the slices were cut from.
            slice_axis: overrides the axis given at construction for this call.

        Returns:
            ``(C, X, Y, Z)``: a ``MetaTensor`` carrying the reference's affine and meta data when the reference is
            one, else a plain tensor.

        Raises:
            ValueError: when ``img`` is not a 4D stack or its slice count does not match the reference.
        """
        if img.ndim != 4:
            raise ValueError(f"expected slices (S, C, h, w), got shape {tuple(img.shape)}")
        axis = resolve_slice_axis(ref, self.slice_axis if slice_axis is None else slice_axis)
        spatial = tuple(int(s) for s in ref.shape[1:])
        if img.shape[0] != spatial[axis]:
            raise ValueError(f"{img.shape[0]} slices do not fit a volume of shape {spatial} sliced along axis {axis}")
        in_plane = tuple(s for i, s in enumerate(spatial) if i != axis)
        t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
        s, c, h, w = t.shape
        resize = Resize(spatial_size=in_plane, mode=self.mode) if (h, w) != in_plane else None
        dtype = self.dtype or (t.dtype if t.is_floating_point() and resize is None else torch.float32)
        out = torch.empty((c, *spatial), dtype=dtype, device=t.device)
        target = out.movedim(1 + axis, 0)  # a view (S, C, a, b): undoes ExtractSlices' movedim(1 + axis, 0)
        step = max(1, self.chunk // max(1, c * in_plane[0] * in_plane[1]))  # slices per resize: bounded memory
        for i in range(0, s, step):
            part = t[i : i + step]
            if resize is not None:
                n = part.shape[0]
                resized = resize(part.reshape(n * c, h, w).float())
                part = torch.as_tensor(resized.as_tensor() if isinstance(resized, MetaTensor) else resized)
                part = part.reshape(n, c, *in_plane)
            target[i : i + step] = part
        if isinstance(ref, MetaTensor):
            return MetaTensor(out, affine=ref.affine.clone(), meta={k: v for k, v in ref.meta.items() if k != "affine"})
        return out


class RestoreSlicesd(MapTransform):
    """Dictionary wrapper of :class:`RestoreSlices`.

    The slice axis is, in order of precedence: ``slice_axis`` when given, the axis :class:`ExtractSlicesd` recorded
    under ``slice_axis_key``, else the reference's geometry.

    Args:
        keys: keys of the slice stacks to restore.
        ref_key: key of the volume the slices were cut from (e.g. a copy of the loaded image made before slicing).
        slice_axis: spatial axis, or None (see above).
        mode: interpolation mode per key (a string or one per key).
        slice_axis_key: where :class:`ExtractSlicesd` wrote the axis it used.
        dtype: output dtype; None keeps float32.
        allow_missing_keys: skip keys that are absent.
    """

    backend = RestoreSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str,
        slice_axis: int | None = None,
        mode: str | list[str] = "bilinear",
        slice_axis_key: str = "slice_axis",
        dtype: torch.dtype | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not ref_key:
            raise ValueError("ref_key must name the volume the slices were cut from")
        self.ref_key = ref_key
        self.slice_axis = slice_axis
        self.slice_axis_key = slice_axis_key
        self.restorers = [RestoreSlices(slice_axis, m, dtype) for m in ensure_tuple_rep(mode, len(self.keys))]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.ref_key not in d:
            raise KeyError(f"RestoreSlicesd: reference volume '{self.ref_key}' not in the data ({sorted(map(str, d))})")
        axis = self.slice_axis if self.slice_axis is not None else d.get(self.slice_axis_key)
        for key, restorer in self.key_iterator(d, self.restorers):
            d[key] = restorer(d[key], d[self.ref_key], slice_axis=None if axis is None else int(axis))
        return d
