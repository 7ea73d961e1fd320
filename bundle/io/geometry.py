"""Image geometry: header-only reads and the axial slice axis."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from monai.transforms import LoadImage

__all__ = ["Geometry", "read_geometry", "same_geometry", "slice_axis_from_affine"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class Geometry(NamedTuple):
    """Spatial shape and RAS voxel-to-world affine of an image."""

    shape: tuple[int, ...]
    affine: np.ndarray


def read_geometry(path: str) -> Geometry:
    """Read the spatial shape and RAS affine of an image, from the header alone where the format allows.

    NIfTI headers are read by nibabel without touching the voxels; every other format (NRRD, DICOM series
    folders, ...) goes through MONAI's ``LoadImage`` so the affine convention (RAS) is the one the
    training pipeline sees.

    Args:
        path: an image file or a DICOM series folder.

    Returns:
        the image's spatial shape (channels dropped) and its 4x4 RAS affine.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when no reader can read ``path``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found")
    if str(path).endswith(_NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            img = nib.load(path)
        except Exception as e:  # nibabel raises several types for corrupt headers
            raise ValueError(f"{path}: unreadable NIfTI header ({e})") from e
        return Geometry(tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64))
    try:
        img = LoadImage(image_only=True)(path)
    except Exception as e:
        raise ValueError(f"{path}: unreadable image ({e})") from e
    affine = np.asarray(img.affine, dtype=np.float64)
    return Geometry(tuple(int(s) for s in img.shape[:3]), affine)


def same_geometry(a: Geometry, b: Geometry, atol: float = 1e-3) -> bool:
    """Whether two geometries share the shape and, within ``atol`` mm, the affine."""
    return tuple(a.shape) == tuple(b.shape) and bool(np.allclose(a.affine, b.affine, atol=atol))


def slice_axis_from_affine(affine: np.ndarray) -> int:
    """The voxel axis along which axial slices are stacked.

    Axial slices are perpendicular to the patient's superior-inferior (world z) axis, so the slice axis is
    the voxel axis whose direction has the largest z component.

    Args:
        affine: 4x4 (or 3x3 direction-and-spacing) voxel-to-world matrix.

    Returns:
        the spatial axis index, 0, 1 or 2.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    return int(np.argmax(np.abs(a[2] / norms)))
