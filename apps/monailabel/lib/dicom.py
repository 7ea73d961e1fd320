"""DICOM series in a MONAI Label studies folder: each series folder becomes a NIfTI volume beside it.

MONAI Label's local datastore lists image files (NIfTI, NRRD, ...), not folders, and 3D Slicer downloads a study as
one file; a DICOM series folder is therefore converted once, by ITK (GDCM), into ``<studies>/<folder>.nii.gz`` with
the series' own geometry. Messy exports are handled as far as choosing the series: a folder may also hold other
series (e.g. a 3-slice localizer) and non-DICOM files; the series with the most slices is taken.
This module needs only itk, so it runs in either environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

__all__ = ["convert_series_folders", "series_to_nifti"]

logger = logging.getLogger(__name__)

SKIP = ("labels",)  # MONAI Label's own label folder


def series_to_nifti(folder: str, output: str) -> str:
    """Write the largest DICOM series of ``folder`` to ``output`` (NIfTI), keeping its geometry.

    Args:
        folder: a folder of DICOM files.
        output: the NIfTI file to write; must not exist.

    Returns:
        ``output``.

    Raises:
        FileExistsError: when ``output`` exists (it is never overwritten).
        ValueError: naming ``folder`` when it holds no readable DICOM series.
    """
    import itk

    if os.path.exists(output):
        raise FileExistsError(f"{output}: exists, not overwritten")
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.SetDirectory(folder)
    uids = list(names.GetSeriesUIDs())
    if not uids:
        raise ValueError(f"{folder}: no DICOM series found")
    files = max((list(names.GetFileNames(u)) for u in uids), key=len)
    try:
        image = itk.imread(files) if len(files) > 1 else itk.imread(files[0])
    except Exception as e:  # ITK raises RuntimeError subclasses with multi-line messages
        raise ValueError(f"{folder}: DICOM series unreadable ({str(e).strip().splitlines()[-1]})") from e
    with tempfile.TemporaryDirectory() as tmp:  # written aside first: a half-written file is never listed as a study
        itk.imwrite(image, os.path.join(tmp, "series.nii.gz"))
        shutil.move(os.path.join(tmp, "series.nii.gz"), output)
    logger.info(f"{folder}: DICOM series of {len(files)} files written to {output}")
    return output


def convert_series_folders(studies: str) -> list[str]:
    """Convert each DICOM series folder directly under ``studies`` to ``<studies>/<folder>.nii.gz``.

    Folders already converted (the NIfTI exists) are left alone; a folder that cannot be converted is logged on one
    line and skipped, the others are still converted.

    Args:
        studies: the MONAI Label studies folder.

    Returns:
        the NIfTI files written by this call.
    """
    written = []
    if not os.path.isdir(studies):
        return written
    for name in sorted(os.listdir(studies)):
        folder = os.path.join(studies, name)
        if name.startswith(".") or name in SKIP or not os.path.isdir(folder):
            continue
        output = os.path.join(studies, f"{name}.nii.gz")
        if os.path.exists(output):
            continue
        try:
            written.append(series_to_nifti(folder, output))
        except ValueError as e:
            logger.error(f"ERROR studies: {e}; skipped")
    return written
