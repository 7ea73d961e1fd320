"""Decode cached slices (float16, or uint8 holding 255 x intensity) to float32 tensors."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

__all__ = ["DecodeSlice", "DecodeSliced", "ScaleForegroundPercentiles", "ScaleForegroundPercentilesd"]


class DecodeSlice(Transform):
    """A cached slice as a float32 tensor: uint8 images are divided by 255, anything else is cast.

    The slice cache may store images as uint8 (``bundle.data.SliceCache(dtype="uint8")``), half the memory of
    float16; this makes both storages look the same to the rest of the pipeline. The result is always a new
    tensor, so a read-only memory-mapped cache is never written to.

    Args:
        scale_uint8: divide uint8 input by 255 (images); False keeps the values (masks).
    """

    backend = [torch.Tensor]

    def __init__(self, scale_uint8: bool = True) -> None:
        self.scale_uint8 = bool(scale_uint8)

    def __call__(self, img: np.ndarray | torch.Tensor) -> torch.Tensor:
        is_uint8 = img.dtype in (np.uint8, torch.uint8)
        out = img.float() if isinstance(img, torch.Tensor) else torch.from_numpy(np.asarray(img, dtype=np.float32))
        return out / 255.0 if is_uint8 and self.scale_uint8 else out


class DecodeSliced(MapTransform):
    """Dictionary wrapper of :class:`DecodeSlice`.

    Args:
        keys: keys to decode.
        scale_uint8: per key (or one for all): divide uint8 by 255 (images) or not (masks).
        allow_missing_keys: skip keys that are absent.
    """

    backend = DecodeSlice.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        scale_uint8: bool | Sequence[bool] = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoders = [DecodeSlice(s) for s in ensure_tuple_rep(scale_uint8, len(self.keys))]

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, decoder in self.key_iterator(d, self.decoders):
            d[key] = decoder(d[key])
        return d


class ScaleForegroundPercentiles(Transform):
    """Map the ``lower``..``upper`` intensity percentiles of an image's non-zero voxels to 0..1 (clipped).

    MONAI's ``ScaleIntensityRangePercentiles`` takes the percentiles over every voxel, so the zero-filled margin of
    a wider field of view (or of a padded export) moves them and the same anatomy gets other intensities. Taking
    them over the voxels above 0 keeps the mapping of the same scan inside a larger, dark field of view; an image
    with no voxel above 0 uses all voxels, and a constant foreground maps from the image's minimum.

    Args:
        lower: percentile mapped to 0.
        upper: percentile mapped to 1.
        max_samples: percentiles are estimated on at most this many voxels (an even subsample), for speed.
    """

    backend = [torch.Tensor]

    def __init__(self, lower: float = 0.5, upper: float = 99.5, max_samples: int = 2_000_000) -> None:
        if not 0 <= float(lower) < float(upper) <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper = float(lower), float(upper)
        self.max_samples = int(max_samples)

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        values = t.as_tensor() if isinstance(t, MetaTensor) else t
        values = values.float().flatten()
        fg = values[values > 0]
        if fg.numel() == 0:
            fg = values
        if fg.numel() > self.max_samples:
            fg = fg[:: int(np.ceil(fg.numel() / self.max_samples))]
        lo, hi = np.percentile(fg.cpu().numpy(), [self.lower, self.upper]) if fg.numel() else (0.0, 1.0)
        if hi <= lo:  # a constant foreground (e.g. a binary phantom): map the whole range up to it instead
            lo = float(values.min()) if values.numel() else 0.0
        scale = float(hi - lo) if hi > lo else 1.0
        out = t.float() - float(lo)  # one new volume, scaled and clipped in place
        return out.div_(scale).clamp_(0.0, 1.0)


class ScaleForegroundPercentilesd(MapTransform):
    """Dictionary wrapper of :class:`ScaleForegroundPercentiles`."""

    backend = ScaleForegroundPercentiles.backend

    def __init__(
        self, keys: KeysCollection = "image", lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleForegroundPercentiles(lower, upper)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
