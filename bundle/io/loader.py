"""``LoadImage`` that also reads DICOM series the way scanners export them (see :mod:`bundle.io.dicom`)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple

from bundle.io.dicom import MIN_SLICES, DicomSeriesReader, VolumeError

__all__ = ["LoadVolume", "LoadVolumed", "check_finite", "check_geometry"]


class LoadVolume(LoadImage):
    """MONAI's ``LoadImage`` with DICOM series read by :class:`~bundle.io.dicom.DicomSeriesReader`.

    NIfTI, NRRD and other files go through ``LoadImage``'s own reader selection, exactly as at training; DICOM input
    (the files of one series in any order, an enhanced multi-frame file, or a folder holding one volume series) is
    read with the frames sorted along the slice normal and a RAS affine consistent with MONAI's ``ITKReader``.
    Errors of the DICOM reader propagate unchanged (one line naming the file), rather than being buried under the
    attempts of every other reader.

    Args:
        min_slices: fewest frames a DICOM series needs to be a volume.
        spacing_tolerance: largest relative deviation of a DICOM slice gap from the median gap.
        image_only: return only the ``MetaTensor`` (True) or also the metadata dict.
        dtype: output data type.
        ensure_channel_first: add or move the channel dimension first.
        kwargs: further arguments of ``LoadImage`` (``simple_keys``, ``prune_meta_pattern``, ...).
    """

    def __init__(
        self,
        min_slices: int = MIN_SLICES,
        spacing_tolerance: float = 0.1,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            reader=None, image_only=image_only, dtype=dtype, ensure_channel_first=ensure_channel_first, **kwargs
        )
        self.dicom_reader = DicomSeriesReader(min_slices=min_slices, spacing_tolerance=spacing_tolerance)

    def __call__(self, filename: Sequence[str] | str, reader=None):
        """Load ``filename`` (a path, or the list of files of one DICOM series)."""
        names = [str(f) for f in ensure_tuple(filename)]
        if reader is None and self.dicom_reader.verify_suffix(names):
            reader = self.dicom_reader
        out = super().__call__(filename, reader)
        image = out[0] if isinstance(out, (tuple, list)) else out
        name = names[0] if len(names) == 1 else os.path.dirname(names[0])
        check_finite(image, name)
        check_geometry(image, name)
        return out


def _nifti_voxel_size(path: str) -> np.ndarray | None:
    """``pixdim[1:4]`` as written in a NIfTI-1 header (nibabel silently turns zeros into 1), or None if not NIfTI-1."""
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            header = f.read(348)
    except OSError:
        return None  # unreadable: the reader says why
    if len(header) < 348:
        return None
    for order in "<>":
        if np.frombuffer(header[:4], f"{order}i4")[0] == 348:
            return np.frombuffer(header[80:92], f"{order}f4").astype(np.float64)
    return None


def check_geometry(image, name: str) -> None:
    """Refuse an image without a usable voxel geometry (an affine with a zero or non-finite voxel size), naming it.

    Sizes in mm, volumes in ml and the detector's physical resampling all rest on the affine.

    Raises:
        VolumeError: ``<name>: no usable geometry ...``.
    """
    written = _nifti_voxel_size(name)
    if written is not None and (not np.all(np.isfinite(written)) or np.any(written <= 0)):
        raise VolumeError(
            f"{name}: no usable geometry: the header's voxel size (pixdim) is {tuple(float(v) for v in written)} mm"
        )
    affine = getattr(image, "affine", None)
    if affine is None:
        return
    a = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    spacing = np.sqrt((a[:3, :3] ** 2).sum(0))
    if not np.all(np.isfinite(a)) or np.any(spacing < 1e-6) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise VolumeError(
            f"{name}: no usable geometry (voxel size {tuple(round(float(v), 4) for v in spacing)} mm "
            "from its affine): the header's qform/sform or pixel spacing is missing or zero"
        )


def check_finite(image, name: str) -> None:
    """Refuse an image holding NaN or infinite voxels (a corrupt or wrongly converted file), naming it.

    Raises:
        VolumeError: ``<name>: <n> of <N> voxels are NaN or infinite ...``.
    """
    arr = torch.as_tensor(image)
    if arr.is_floating_point():
        bad = int((~torch.isfinite(arr)).sum())
        if bad:
            raise VolumeError(
                f"{name}: {bad} of {arr.numel()} voxels are NaN or infinite (a corrupt or wrongly converted image)"
            )


class LoadVolumed(LoadImaged):
    """Dictionary wrapper of :class:`LoadVolume` (a ``LoadImaged``, so tools that look for one find it).

    Args:
        keys: keys of the image paths to load.
        min_slices: fewest frames a DICOM series needs to be a volume.
        spacing_tolerance: largest relative deviation of a DICOM slice gap from the median gap.
        image_only: store only the ``MetaTensor``s.
        dtype: output data type.
        ensure_channel_first: add or move the channel dimension first.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_slices: int = MIN_SLICES,
        spacing_tolerance: float = 0.1,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            image_only=image_only,
            dtype=dtype,
            ensure_channel_first=ensure_channel_first,
            allow_missing_keys=allow_missing_keys,
        )
        self._loader = LoadVolume(
            min_slices=min_slices,
            spacing_tolerance=spacing_tolerance,
            image_only=image_only,
            dtype=dtype,
            ensure_channel_first=ensure_channel_first,
        )

    def __call__(self, data: Mapping[Hashable, object], reader=None) -> dict:
        return super().__call__(data, reader)
