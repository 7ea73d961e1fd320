"""The hostile inputs of the robustness suite, each built on generated data, with the outcome it must have.

Every case is a function writing its input under a folder and returning the path to pass to ``scripts/assess.py``;
:data:`INPUT_CASES` pairs it with the report row it must get (status and a fragment of the message). The catalogue in
``docs/robustness.md`` lists the same cases by name (``tests/robustness/test_catalogue.py`` checks that).
"""

from __future__ import annotations

import gzip
import os
import shutil
from typing import NamedTuple

import nibabel as nib
import numpy as np

from tests.dicom_helpers import phantom, truncate, write_corrupt_dicom, write_series

SHAPE = (40, 36, 24)  # the phantoms' box spans voxels 8..19, 10..25, 6..16: the known detector's "LA"


def _nifti(path: str, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def good_nifti(root: str) -> str:
    return _nifti(os.path.join(root, "good", "scan.nii.gz"), phantom(SHAPE).astype(np.int16))


def good_dicom(root: str) -> str:
    write_series(os.path.join(root, "good_dicom", "S1"), phantom(SHAPE), series_uid="1.2.826.9.1")
    return os.path.join(root, "good_dicom")


def truncated_middle(root: str) -> str:
    files, _ = write_series(os.path.join(root, "trunc_mid"), phantom(SHAPE), series_uid="1.2.826.9.2")
    truncate(files[12], keep=0.6)  # files are in slice order
    return os.path.join(root, "trunc_mid")


def truncated_end(root: str) -> str:
    files, _ = write_series(os.path.join(root, "trunc_end"), phantom(SHAPE), series_uid="1.2.826.9.3")
    truncate(files[-1], keep=0.6)
    return os.path.join(root, "trunc_end")


def garbage_header(root: str) -> str:
    return write_corrupt_dicom(os.path.join(root, "garbage", "IM0001"))


def not_dicom(root: str) -> str:
    path = os.path.join(root, "notes", "scan.dat")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(2000))
    return path


def localizer(root: str) -> str:
    write_series(
        os.path.join(root, "localizer"),
        phantom((16, 16, 3)),
        spacing=(2, 2, 8),
        series_uid="1.2.826.9.4",
        description="localizer",
        series_number=1,
    )
    return os.path.join(root, "localizer")


def duplicates(root: str) -> str:
    """A copied file and the whole series exported twice into one folder: each instance counted once."""
    folder = os.path.join(root, "dupes")
    files, _ = write_series(os.path.join(folder, "A"), phantom(SHAPE), series_uid="1.2.826.9.5")
    shutil.copy(files[3], os.path.join(folder, "A", "copy_of_IM"))
    shutil.copytree(os.path.join(folder, "A"), os.path.join(folder, "A_again"))
    return folder


def missing_slices(root: str) -> str:
    files, _ = write_series(os.path.join(root, "gap"), phantom(SHAPE), series_uid="1.2.826.9.6")
    for f in files[10:12]:
        os.remove(f)
    return os.path.join(root, "gap")


def empty_folder(root: str) -> str:
    path = os.path.join(root, "empty")
    os.makedirs(path, exist_ok=True)
    return path


def image_2d(root: str) -> str:
    path = os.path.join(root, "photo", "slice.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    return path


def ct_series(root: str) -> str:
    write_series(os.path.join(root, "ct"), phantom((20, 18, 12)), modality="CT", series_uid="1.2.826.9.7")
    return os.path.join(root, "ct")


def nifti_2d(root: str) -> str:
    return _nifti(os.path.join(root, "n2d", "flat.nii.gz"), phantom((40, 36, 1)).astype(np.int16))


def nifti_4d(root: str) -> str:
    return _nifti(os.path.join(root, "n4d", "cine.nii.gz"), np.stack([phantom(SHAPE)] * 3, -1).astype(np.int16))


def nifti_nan(root: str) -> str:
    vol = phantom(SHAPE).astype(np.float32)
    vol[5, 5, 5], vol[6, 6, 6] = np.nan, np.inf
    return _nifti(os.path.join(root, "nan", "nan.nii.gz"), vol)


def nifti_zero(root: str) -> str:
    return _nifti(os.path.join(root, "zero", "zero.nii.gz"), np.zeros(SHAPE, np.int16))


def nifti_zero_affine(root: str) -> str:
    """No usable geometry: qform and sform unset, voxel sizes 0 (patched into the header bytes: nibabel would not)."""
    path = _nifti(os.path.join(root, "zaff", "zaff.nii.gz"), phantom(SHAPE).astype(np.int16))
    data = bytearray(gzip.decompress(open(path, "rb").read()))
    data[76:108] = np.zeros(8, "<f4").tobytes()  # pixdim[0..7]
    data[252:256] = np.zeros(2, "<i2").tobytes()  # qform_code, sform_code
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes(data)))
    return path


def nifti_truncated(root: str) -> str:
    path = _nifti(os.path.join(root, "ntrunc", "cut.nii.gz"), phantom(SHAPE).astype(np.int16))
    data = gzip.decompress(open(path, "rb").read())
    with open(path, "wb") as f:
        f.write(gzip.compress(data[: len(data) // 3]))
    return path


def odd_path(root: str) -> str:
    return _nifti(os.path.join(root, "my scans", "Ünïcödé scan (1).nii.gz"), phantom(SHAPE).astype(np.int16))


def hostile_tags(root: str) -> str:
    """Tag values that try to climb out of the output folder and inject markup."""
    write_series(
        os.path.join(root, "tags"),
        phantom(SHAPE),
        series_uid="1.2.826.9.8",
        patient_id="../../evil",
        description="<script>alert(1)</script>/../../x",
    )
    return os.path.join(root, "tags")


def symlink_loop(root: str) -> str:
    folder = os.path.join(root, "loop")
    write_series(os.path.join(folder, "S"), phantom(SHAPE), series_uid="1.2.826.9.9")
    os.symlink(folder, os.path.join(folder, "S", "back"))
    return folder


def missing_path(root: str) -> str:
    return os.path.join(root, "does_not_exist")


class Case(NamedTuple):
    name: str  # as in docs/robustness.md
    build: object  # root -> input path
    status: str  # the report row's status
    message: str  # a fragment of its message ("" when any)


INPUT_CASES = (
    Case("good NIfTI volume", good_nifti, "ok", ""),
    Case("good DICOM series", good_dicom, "ok", ""),
    Case("truncated DICOM file inside a series", truncated_middle, "error", "IM"),
    Case("truncated DICOM file at the end of a series", truncated_end, "ok", "left out unreadable file(s)"),
    Case("garbage DICOM header", garbage_header, "error", "unreadable DICOM header"),
    Case("non-DICOM file", not_dicom, "error", "not a DICOM, NIfTI or NRRD image"),
    Case("localizer (3 slices)", localizer, "skipped", "a localizer or scout"),
    Case("duplicate files, series exported twice", duplicates, "ok", ""),
    Case("missing slices", missing_slices, "skipped", "uneven slice spacing"),
    Case("empty folder", empty_folder, "error", "empty folder"),
    Case("single 2D image", image_2d, "skipped", "a single 2D image"),
    Case("CT series", ct_series, "skipped", "only MR is assessed"),
    Case("2D NIfTI", nifti_2d, "skipped", "not a volume"),
    Case("4D NIfTI", nifti_4d, "skipped", "not a single 3D volume"),
    Case("NaN and infinite voxels", nifti_nan, "error", "voxels are NaN or infinite"),
    Case("all-zero volume", nifti_zero, "no_left_atrium", "no slice with an LA"),
    Case("zero affine (voxel size 0)", nifti_zero_affine, "error", "no usable geometry"),
    Case("truncated NIfTI", nifti_truncated, "error", "cut.nii.gz"),
    Case("spaces and non-ASCII in the path", odd_path, "ok", ""),
    Case("../../ and <script> in DICOM tags", hostile_tags, "ok", ""),
    Case("symlink loop", symlink_loop, "ok", ""),
    Case("missing path", missing_path, "error", "not found"),
)
