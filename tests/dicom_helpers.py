"""Write real DICOM files with pydicom, as scanners and PACS export them, for the tests."""

from __future__ import annotations

import os
import random

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)


def _base(
    sop_class,
    rows: int,
    cols: int,
    series_uid: str,
    study_uid: str,
    modality: str,
    description: str,
    series_number: int,
    patient_id: str,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = patient_id, "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame of reference"])  # one per series
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, series_number
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def series_geometry(shape, spacing=(0.7, 0.8, 1.5), origin=(-40.0, 30.0, 12.0), row=(1, 0, 0), col=(0, 1, 0)):
    """Positions of the slices of a volume of ``shape`` (columns, rows, slices) and its expected RAS affine."""
    row, col = np.asarray(row, float), np.asarray(col, float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = [np.asarray(origin, float) + k * spacing[2] * normal for k in range(shape[2])]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * spacing[0], col * spacing[1], normal * spacing[2], origin
    return positions, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, (row, col)


def write_series(
    folder: str,
    volume: np.ndarray,
    spacing=(0.7, 0.8, 1.5),
    origin=(-40.0, 30.0, 12.0),
    row=(1, 0, 0),
    col=(0, 1, 0),
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "MR",
    description: str = "LGE_3D",
    series_number: int = 7,
    patient_id: str = "P001",
    rle: bool = False,
    shuffle: bool = True,
    opaque_names: bool = True,
    prefix: str = "IM",
    slope: float = 1.0,
    intercept: float = 0.0,
    seed: int = 0,
) -> tuple[list[str], np.ndarray]:
    """Write ``volume`` (columns, rows, slices; uint16) as a classic single-frame series.

    File names are opaque (``IM0003``, no extension) and unrelated to the slice order when ``shuffle``; instance
    numbers are shuffled too, so only the positions give the order.

    Returns:
        the files and the expected RAS affine (voxel = column, row, slice in ascending position along the normal).
    """
    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    positions, affine, (r, c) = series_geometry(volume.shape, spacing, origin, row, col)
    order = list(range(volume.shape[2]))
    rng = random.Random(seed)
    names = list(range(volume.shape[2]))
    if shuffle:
        rng.shuffle(names)
    instance = list(range(1, volume.shape[2] + 1))
    if shuffle:
        rng.shuffle(instance)
    files = []
    sop = CTImageStorage if modality == "CT" else MRImageStorage
    for k in order:
        ds = _base(
            sop,
            volume.shape[1],
            volume.shape[0],
            series_uid,
            study_uid,
            modality,
            description,
            series_number,
            patient_id,
        )
        ds.InstanceNumber = instance[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*r, *c)]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows, between columns
        ds.SliceThickness = f"{spacing[2]:.6f}"
        if slope != 1 or intercept != 0:
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.uint16)).tobytes()
        if rle:
            ds.compress(RLELossless)
        name = f"{prefix}{names[k]:04d}" if opaque_names else f"slice_{k:03d}.dcm"
        path = os.path.join(folder, name)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, affine


def write_enhanced(
    path: str,
    volume: np.ndarray,
    spacing=(0.7, 0.8, 1.5),
    origin=(-40.0, 30.0, 12.0),
    row=(1, 0, 0),
    col=(0, 1, 0),
    series_uid: str | None = None,
    description: str = "LGE_3D_enhanced",
    series_number: int = 9,
    patient_id: str = "P001",
    slope: float = 1.0,
    intercept: float = 0.0,
    seed: int = 0,
) -> tuple[str, np.ndarray]:
    """Write ``volume`` as one Enhanced MR Image Storage file, frames in shuffled order, geometry in functional groups.

    Returns:
        the path and the expected RAS affine.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    positions, affine, (r, c) = series_geometry(volume.shape, spacing, origin, row, col)
    order = list(range(volume.shape[2]))
    random.Random(seed).shuffle(order)
    ds = _base(
        EnhancedMRImageStorage,
        volume.shape[1],
        volume.shape[0],
        series_uid or generate_uid(),
        generate_uid(),
        "MR",
        description,
        series_number,
        patient_id,
    )
    ds.InstanceNumber = 1
    ds.NumberOfFrames = volume.shape[2]
    shared = Dataset()
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    measures.SliceThickness = f"{spacing[2]:.6f}"
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in (*r, *c)]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = f"{slope}", f"{intercept}", "US"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        item, pos, content = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        content.InStackPositionNumber = k + 1
        item.PlanePositionSequence = Sequence([pos])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    frames = np.stack([volume[:, :, k].T for k in order]).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, affine


def phantom(shape=(40, 36, 24), seed: int = 0) -> np.ndarray:
    """A uint16 volume (columns, rows, slices) with a bright off-centre box on a noisy background."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(50, 150, shape).astype(np.uint16)
    vol[8:20, 10:26, 6:17] = 900
    return vol


def box_mask(shape=(40, 36, 24)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[8:20, 10:26, 6:17] = True
    return m


def write_junk(folder: str) -> list[str]:
    """Non-DICOM files as exports carry them: a text file, a binary blob without extension, a DICOMDIR-like name."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "README.TXT"), os.path.join(folder, "VERSION"), os.path.join(folder, "index.html")]
    open(paths[0], "w").write("Exported by PACS\n")
    open(paths[1], "wb").write(os.urandom(700))
    open(paths[2], "w").write("<html>viewer</html>")
    return paths


def write_corrupt_dicom(path: str) -> str:
    """A file with the DICOM preamble and prefix but a garbage header."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + os.urandom(64))
    return path


def truncate(path: str, keep: float = 0.6) -> str:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])
    return path


__all__ = [
    "box_mask",
    "phantom",
    "series_geometry",
    "truncate",
    "write_corrupt_dicom",
    "write_enhanced",
    "write_junk",
    "write_series",
]
