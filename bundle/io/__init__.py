"""Reading images: geometry helpers, DICOM series as exported, input discovery, the volume loader."""

from bundle.io.dicom import MIN_SLICES, DicomSeriesReader, DicomVolumeError, NotAVolume, volume_geometry
from bundle.io.discover import Discovery, Source, discover_inputs
from bundle.io.geometry import Geometry, read_geometry, same_geometry, slice_axis_from_affine
from bundle.io.loader import LoadVolume, LoadVolumed
