"""Axial slices of every volume, extracted once and cached, so no volume is re-read per sample per epoch."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from monai.transforms import Compose, LoadImaged

from bundle.data.datalist import SCORE_KEYS, DatalistError, entry_name
from bundle.transforms.intensity import ScaleForegroundPercentilesd
from bundle.transforms.slicing import ExtractSlicesd

__all__ = ["SliceCache", "volume_transform"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
_DTYPES = {"float16": np.float16, "uint8": np.uint8}


def _encode(images: np.ndarray, dtype: str) -> np.ndarray:
    """Images in 0..1 stored as ``dtype``: float16 as is, uint8 as round(255 x)."""
    if dtype == "uint8":
        return np.round(images.astype(np.float32) * 255).astype(np.uint8)
    return images.astype(np.float16, copy=False)


def volume_transform(
    spatial_size: int = 128,
    slice_axis: int | None = None,
    lower: float = 0.5,
    upper: float = 99.5,
    with_label: bool = True,
    pixel_mm: float | None = None,
    context: int = 0,
    context_mm: float | None = None,
) -> Compose:
    """Read a volume (and its mask), normalise intensities per volume, cut and resize its axial slices.

    Intensities are mapped from the ``lower``..``upper`` percentiles of the volume's non-zero voxels to 0..1
    (clipped, :class:`~bundle.transforms.ScaleForegroundPercentiles`, as inference does); slices are resized (or,
    with ``pixel_mm``, resampled to that pixel size and centred on a ``spatial_size`` canvas) with linear
    interpolation, masks with nearest; with ``context`` the image slices carry their neighbours as channels.

    Args:
        spatial_size: in-plane size of the slices.
        slice_axis: spatial axis to slice along; None reads it from the image geometry.
        lower: lower intensity percentile mapped to 0.
        upper: upper intensity percentile mapped to 1.
        with_label: also read and slice the ``label`` key.
        pixel_mm: in-plane pixel size to resample to (None: resize to ``spatial_size``).
        context: neighbouring slices on each side added to the image as channels (2.5D).
        context_mm: distance between those neighbours (None: adjacent slices).

    Returns:
        a transform from ``{"image": path[, "label": path]}`` to ``{"image": (S, 1, h, w)[, "label": ...]}``.
    """
    keys = ["image", "label"] if with_label else ["image"]
    return Compose(
        [
            LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
            ScaleForegroundPercentilesd(keys="image", lower=lower, upper=upper),
            ExtractSlicesd(
                keys=keys,
                spatial_size=spatial_size,
                slice_axis=slice_axis,
                mode=["bilinear", "nearest"][: len(keys)],
                pixel_mm=pixel_mm,
                context=[context, 0][: len(keys)],
                context_mm=context_mm,
            ),
        ]
    )


def file_fingerprint(path: str) -> list:
    """Identity of a file or folder's content for cache keys: names, sizes and modification times."""
    if os.path.isdir(path):
        return sorted(
            (f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns)
            for f in os.listdir(path)
        )
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


class SliceCache:
    """The 2D slices of a list of volumes, held in memory as compact arrays and kept on disk between runs.

    Each volume is read once (:func:`volume_transform`); its slices are stored as float16 (or uint8: 0..1 in steps
    of 1/255, lossless for 8-bit scans) images and uint8 masks in ``cache_dir`` under a key of the file's identity
    and the preprocessing settings, so later runs skip the read. With ``mmap`` the whole set is also written as
    one array file and memory-mapped: loader workers then share the operating system's page cache instead of
    each holding the slices, and a later run opens the set without assembling it. :meth:`records` gives per-slice
    dicts for a MONAI ``Dataset`` (decode the images with :class:`bundle.transforms.DecodeSliced`).

    Args:
        entries: datalist entries (absolute ``image``, optional ``label``, ``patient``, optional scores).
        spatial_size: in-plane size of the slices.
        slice_axis: spatial axis to slice along; None reads it from each image's geometry.
        cache_dir: folder of the on-disk cache; None keeps the slices in memory only.
        lower: lower intensity percentile of the per-volume normalisation.
        upper: upper intensity percentile of the per-volume normalisation.
        num_workers: threads reading volumes in parallel (0: in this thread).
        dtype: storage of the images, "float16" or "uint8".
        mmap: memory-map the assembled set from ``cache_dir`` (needs ``cache_dir``).
        pixel_mm: in-plane pixel size to resample to; ``spatial_size`` is then the canvas (None: resize).
        context: neighbouring slices on each side stored as extra image channels (2.5D).
        context_mm: distance between those neighbours (None: adjacent slices).

    Raises:
        DatalistError: naming the entry whose image or mask cannot be read or does not match.
    """

    def __init__(
        self,
        entries: Sequence[dict],
        spatial_size: int = 128,
        slice_axis: int | None = None,
        cache_dir: str | None = None,
        lower: float = 0.5,
        upper: float = 99.5,
        num_workers: int = 0,
        dtype: str = "float16",
        mmap: bool = False,
        pixel_mm: float | None = None,
        context: int = 0,
        context_mm: float | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if mmap and not cache_dir:
            raise ValueError("mmap needs a cache_dir")
        if int(spatial_size) < 8:
            raise ValueError(f"spatial_size must be >= 8, got {spatial_size}")
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.entries = list(entries)
        self.spatial_size = int(spatial_size)
        self.slice_axis = slice_axis
        self.cache_dir = cache_dir
        self.lower, self.upper = float(lower), float(upper)
        self.dtype = dtype
        self.pixel_mm = None if pixel_mm is None else float(pixel_mm)
        self.context = int(context)
        self.context_mm = None if context_mm is None else float(context_mm)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
        self._transforms: dict[bool, Compose] = {}  # built on the first read: a fully cached set reads nothing
        set_path = self._set_path() if mmap else None
        if set_path and os.path.isfile(set_path + "_index.npz"):
            n_read = 0
            self._open_set(set_path)
        else:
            if num_workers > 0 and len(self.entries) > 1:
                with ThreadPoolExecutor(num_workers) as pool:
                    volumes = list(pool.map(self._volume, self.entries))
            else:
                volumes = [self._volume(e) for e in self.entries]
            n_read = sum(v[3] for v in volumes)
            counts = [len(v[0]) for v in volumes]
            channels = 2 * self.context + 1
            empty = np.zeros((0, channels, self.spatial_size, self.spatial_size))
            self.images = np.concatenate([_encode(v[0], dtype) for v in volumes] or [_encode(empty, dtype)])
            self.labels = np.concatenate([v[1] for v in volumes] or [empty[:, :1].astype(np.uint8)])
            self.volume = np.repeat(np.arange(len(volumes)), counts)
            self.slice = np.concatenate([np.arange(c) for c in counts] or [np.zeros(0, int)])
            self.slice_axes = [v[2] for v in volumes]
            if set_path:
                self._write_set(set_path)
                self._open_set(set_path)
        self.has_mask = np.array([bool(self.entries[v].get("label")) for v in self.volume], dtype=bool)
        self.has_la = self.labels.any(axis=(1, 2, 3)) & self.has_mask
        logger.info(
            f"slice cache: {len(self.entries)} volumes, {len(self)} slices ({int(self.has_la.sum())} with LA); "
            f"{n_read} volumes read, {len(self.entries) - n_read} from {cache_dir}"
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        """Memory held by the slice arrays."""
        return int(self.images.nbytes + self.labels.nbytes)

    def _set_path(self) -> str:
        key = hashlib.sha1(json.dumps([self.entry_key(e) for e in self.entries] + [self.dtype]).encode()).hexdigest()[
            :20
        ]
        return os.path.join(self.cache_dir, f"set_{key}")

    def _write_set(self, path: str) -> None:
        for name, arr in (("images", self.images), ("labels", self.labels)):
            tmp = f"{path}_{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, f"{path}_{name}.npy")
        tmp = f"{path}_index.{os.getpid()}.tmp.npz"
        np.savez(tmp, volume=self.volume, slice=self.slice, axes=np.asarray(self.slice_axes, int))
        os.replace(tmp, f"{path}_index.npz")  # written last: its presence marks a complete set

    def _open_set(self, path: str) -> None:
        self.images = np.load(f"{path}_images.npy", mmap_mode="r")
        self.labels = np.load(f"{path}_labels.npy", mmap_mode="r")
        with np.load(f"{path}_index.npz") as z:
            self.volume, self.slice, self.slice_axes = z["volume"], z["slice"], z["axes"].tolist()

    def entry_key(self, entry: dict) -> str:
        """The cache key of one volume's slices: its files' identities and the preprocessing settings."""
        ident = [
            CACHE_VERSION,
            file_fingerprint(entry["image"]),
            file_fingerprint(entry["label"]) if entry.get("label") else None,
            self.spatial_size,
            self.slice_axis,
            self.lower,
            self.upper,
            self.pixel_mm,
            self.context,
            self.context_mm,
        ]
        return hashlib.sha1(json.dumps(ident, default=str).encode()).hexdigest()[:20]

    def _volume(self, entry: dict) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """(images (S, C, h, w) float16, masks (S, 1, h, w) uint8, slice axis, whether the volume was read now)."""
        with_label = bool(entry.get("label"))
        path = os.path.join(self.cache_dir, f"slices_{self.entry_key(entry)}.npz") if self.cache_dir else None
        if path and os.path.isfile(path):
            try:
                with np.load(path) as z:
                    return z["image"], z["label"], int(z["axis"]), False
            except (OSError, ValueError, KeyError):
                logger.warning(f"{path}: unreadable cache file, re-reading {entry['image']}")
        if with_label not in self._transforms:
            self._transforms[with_label] = volume_transform(
                self.spatial_size,
                self.slice_axis,
                self.lower,
                self.upper,
                with_label,
                self.pixel_mm,
                self.context,
                self.context_mm,
            )
        try:
            d = self._transforms[with_label](
                {"image": entry["image"], "label": entry["label"]} if with_label else {"image": entry["image"]}
            )
        except Exception as e:  # readers raise many types; the message must name the entry
            cause = e.__cause__ or e
            raise DatalistError(f"{entry_name(entry)}: cannot read and slice {entry['image']} ({cause})") from e
        img = d["image"].numpy().astype(np.float16)
        if with_label:
            lab_shape, img_shape = tuple(d["label"].shape), tuple(d["image"].shape)
            if lab_shape[0] != img_shape[0] or lab_shape[2:] != img_shape[2:] or lab_shape[1] != 1:
                raise DatalistError(
                    f"{entry_name(entry)}: mask slices {lab_shape} do not match image slices {img_shape}"
                )
            lab = (d["label"].numpy() > 0).astype(np.uint8)
        else:
            lab = np.zeros((img.shape[0], 1, *img.shape[2:]), np.uint8)
        axis = int(d["slice_axis"])
        if path:
            tmp = f"{path}.{os.getpid()}.tmp.npz"  # unique per process: ranks may fill the cache at once
            np.savez(tmp, image=img, label=lab, axis=axis)
            os.replace(tmp, path)
        return img, lab, axis, True

    def records(self, indices: Sequence[int] | np.ndarray | None = None) -> list[dict]:
        """Per-slice dicts for a MONAI ``Dataset``.

        Each holds ``image`` (C, h, w) float16 and ``label`` (1, h, w) uint8 as views of the cache, ``volume``
        (index in ``entries``), ``slice``, ``has_la``, and the entry's ``patient`` and scores where present.

        Args:
            indices: slice indices to include; None for all, a boolean mask is accepted.
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        extra = [{k: e[k] for k in ("patient", *SCORE_KEYS) if k in e} for e in self.entries]
        return [
            {
                "image": self.images[n],
                "label": self.labels[n],
                "volume": int(self.volume[n]),
                "slice": int(self.slice[n]),
                "has_la": bool(self.has_la[n]),
                **extra[self.volume[n]],
            }
            for n in idx
        ]
