"""Write a small, real DICOM MR series with pydicom (tests only): a volume and the geometry it should read back as."""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(
    folder: str,
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (1.25, 1.5, 2.5),
    origin: tuple[float, float, float] = (-40.0, -30.0, 12.0),
    description: str = "LGE",
    names: str = "slice_{:03d}.dcm",
) -> np.ndarray:
    """Write ``volume`` (X columns, Y rows, Z slices; uint16) as an axial series; return its RAS affine.

    Rows run along patient +y (posterior), columns along +x (left), slices along +z (superior), in DICOM's LPS
    frame; the returned affine is that geometry in the RAS convention NIfTI readers use.
    """
    os.makedirs(folder, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    nx, ny, nz = volume.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.Modality = "TEST01", "Test^Phantom", "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows, along y), column spacing (along x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.uint16)).tobytes()  # rows of the image
        pydicom.dcmwrite(os.path.join(folder, names.format(k)), ds, enforce_file_format=True)
    lps = np.diag([*spacing, 1.0])
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
