"""DICOM as scanners and PACS export it: image frames from classic and enhanced files, a series' volume geometry,
and a MONAI ``ImageReader`` that turns one series into a volume with a RAS affine.

MONAI's own DICOM readers do not fit these exports: ``PydicomReader`` stacks the files of a folder in
``InstanceNumber`` order, mixes every series of the folder and gives enhanced multi-frame files an identity affine;
``ITKReader`` reads one series per flat folder and cannot say why a series is not a volume. So the geometry (which
frames form a volume, in which order, with which affine) is computed here from the headers, following the DICOM
standard (PS3.3 C.7.6.2.1.1) and what ITK/GDCM does for classic series (frames sorted by their position along the
slice normal); the pixels are decoded by pydicom, or by ITK (GDCM) for transfer syntaxes pydicom cannot decode here.
The voxel order and the affine are those MONAI's ``ITKReader`` gives for the same series (tested against it).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset

from bundle.errors import one_line

__all__ = [
    "MIN_SLICES",
    "VOLUME_SUFFIXES",
    "DicomSeriesReader",
    "DicomVolume",
    "DicomVolumeError",
    "VolumeError",
    "pixel_data_problem",
    "Frame",
    "NotAVolume",
    "frames_from_dataset",
    "is_dicom_file",
    "read_header",
    "volume_geometry",
]

logger = logging.getLogger(__name__)

MIN_SLICES = 10  # fewer frames: a localizer or scout, not a volume to assess
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")  # read by MONAI's NIfTI/ITK readers instead


class VolumeError(ValueError):
    """An image that should be a volume but cannot be used; the message is one line naming the file."""


class DicomVolumeError(VolumeError):
    """A DICOM series that should be a volume but cannot be read; the message is one line naming the file."""


class NotAVolume(ValueError):
    """A DICOM series that is not a 3D volume (a localizer, a single image, mixed geometry); the message says why."""


@dataclass
class Frame:
    """One 2D image of a series: a single-frame file or one frame of a multi-frame file.

    Attributes:
        path: file holding the frame.
        index: frame index in a multi-frame file (0-based), None for a single-frame file.
        position: ImagePositionPatient (LPS, mm) of the first transmitted pixel, or None when absent.
        orientation: ImageOrientationPatient (row and column direction cosines), or None when absent.
        spacing: PixelSpacing (between rows, between columns) in mm, or None when absent.
        shape: (Rows, Columns).
        slope: modality rescale slope.
        intercept: modality rescale intercept.
    """

    path: str
    index: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing: tuple[float, float] | None
    shape: tuple[int, int]
    slope: float = 1.0
    intercept: float = 0.0


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` is a DICOM part-10 file (the ``DICM`` prefix after the 128-byte preamble)."""
    try:
        return os.path.isfile(path) and pydicom.misc.is_dicom(path)
    except OSError:
        return False


def read_header(path: str, force: bool = False) -> Dataset:
    """The header of a DICOM file, without its pixel data.

    Args:
        path: the file.
        force: also read files without the part-10 preamble (old or raw exports).

    Raises:
        DicomVolumeError: naming the file when its header cannot be parsed.
    """
    try:
        with warnings.catch_warnings():  # exports often carry slightly invalid values; only what is used matters
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except Exception as e:  # pydicom raises many types for corrupt headers
        raise DicomVolumeError(f"{path}: unreadable DICOM header ({one_line(e)})") from e
    if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:  # pydicom parses garbage without complaint
        raise DicomVolumeError(f"{path}: unreadable DICOM header (no SOP Class UID or Series Instance UID: corrupt)")
    return ds


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    seq = getattr(ds, sequence, None) if ds is not None else None
    return seq[0] if seq else None


def frames_from_dataset(ds: Dataset, path: str) -> list[Frame]:
    """The image frames of one DICOM file, classic (one frame) or enhanced multi-frame.

    Enhanced files carry the geometry of each frame in the per-frame functional groups (plane position) and the
    shared ones (plane orientation, pixel measures, pixel value transformation), either of which may hold any of them.

    Args:
        ds: the file's dataset (the header is enough).
        path: the file's path.

    Returns:
        one :class:`Frame` per image frame; missing geometry is None (the series check reports it).
    """
    shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is None:
        spacing = _floats(ds.get("PixelSpacing"), 2)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        frame = Frame(
            path,
            None if n_frames == 1 else 0,
            _floats(ds.get("ImagePositionPatient"), 3),
            _floats(ds.get("ImageOrientationPatient"), 6),
            None if spacing is None else tuple(spacing),
            shape,
            slope,
            intercept,
        )
        if n_frames == 1:
            return [frame]
        # a multi-frame file without functional groups (e.g. old multi-frame MR): frames stacked along the normal
        # by SpacingBetweenSlices, as DICOM leaves nothing else to go by
        step = float(ds.get("SpacingBetweenSlices", 0) or 0)
        frames = []
        for i in range(n_frames):
            pos = None
            if frame.position is not None and frame.orientation is not None and step > 0:
                pos = frame.position + i * step * np.cross(frame.orientation[:3], frame.orientation[3:])
            frames.append(Frame(path, i, pos, frame.orientation, frame.spacing, shape, frame.slope, frame.intercept))
        return frames
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for i in range(n_frames):
        groups = per_frame[i] if i < len(per_frame) else None

        def attr(sequence: str, name: str, _groups=groups):
            for g in (_groups, shared):
                item = _item(g, sequence)
                if item is not None and name in item:
                    return item.get(name)
            return None

        spacing = _floats(attr("PixelMeasuresSequence", "PixelSpacing"), 2)
        slope = attr("PixelValueTransformationSequence", "RescaleSlope")
        intercept = attr("PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            Frame(
                path,
                i,
                _floats(attr("PlanePositionSequence", "ImagePositionPatient"), 3),
                _floats(attr("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                None if spacing is None else tuple(spacing),
                shape,
                float(slope) if slope not in (None, "") else 1.0,
                float(intercept) if intercept not in (None, "") else 0.0,
            )
        )
    return frames


def volume_geometry(
    frames: Sequence[Frame], min_slices: int = 2, spacing_tolerance: float = 0.1
) -> tuple[list[Frame], np.ndarray]:
    """Check that frames form one 3D volume; sort them along the slice normal and compute the volume's affine.

    The slice normal is the cross product of the row and column directions (ImageOrientationPatient); frames are
    sorted by their position (ImagePositionPatient) projected on it, ascending, as ITK/GDCM does. Voxel ``(i, j, k)``
    is column ``i``, row ``j`` of the ``k``-th frame in that order.

    Args:
        frames: the frames of one series.
        min_slices: fewest frames that make a volume (fewer: a localizer or scout).
        spacing_tolerance: largest relative deviation of a slice gap from the median gap.

    Returns:
        the sorted frames and the 4x4 voxel-to-world affine in RAS (MONAI's convention).

    Raises:
        NotAVolume: saying why the frames are not one volume.
    """
    n = len(frames)
    if n == 0:
        raise NotAVolume("no image frames")
    if n == 1:
        raise NotAVolume("a single 2D image, not a volume")
    for tag, attr in (
        ("ImagePositionPatient", "position"),
        ("ImageOrientationPatient", "orientation"),
        ("PixelSpacing", "spacing"),
    ):
        bad = [f for f in frames if getattr(f, attr) is None]
        if bad:
            raise NotAVolume(
                f"{len(bad)} of {n} frames without a valid {tag} (e.g. {os.path.basename(bad[0].path)}): "
                "no volume geometry"
            )
    orient = frames[0].orientation
    n_orient = len({tuple(np.round(f.orientation, 3)) for f in frames})
    if n_orient > 1 or any(not np.allclose(f.orientation, orient, atol=1e-3) for f in frames):
        raise NotAVolume(f"mixed slice orientations ({n_orient} different) in {n} frames: a multi-plane localizer?")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise NotAVolume(f"mixed image sizes {sorted(shapes)}")
    if any(not np.allclose(f.spacing, frames[0].spacing, rtol=1e-3) for f in frames):
        raise NotAVolume(f"mixed pixel spacings {sorted({tuple(round(s, 4) for s in f.spacing) for f in frames})}")
    row, col = orient[:3], orient[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise NotAVolume(f"invalid ImageOrientationPatient {list(orient)}")
    dist = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    gaps = np.diff(dist)
    n_pos = int(1 + np.sum(gaps > 1e-3))
    if n_pos < n:
        raise NotAVolume(
            f"{n} frames at {n_pos} distinct positions: several echoes, phases or acquisitions in one series"
        )
    if n < min_slices:
        raise NotAVolume(f"only {n} slices (a localizer or scout?); a volume needs at least {min_slices}")
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - median)) > spacing_tolerance * median:
        raise NotAVolume(
            f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): missing or overlapping slices"
        )
    ordered = [frames[i] for i in order]
    first, last = ordered[0].position, ordered[-1].position
    row_spacing, col_spacing = ordered[0].spacing
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing  # voxel axis 0 runs along a row (column index)
    affine[:3, 1] = col * row_spacing  # voxel axis 1 runs down a column (row index)
    affine[:3, 2] = (last - first) / (n - 1)
    affine[:3, 3] = first
    return ordered, LPS_TO_RAS @ affine


@dataclass
class DicomVolume:
    """A DICOM series read by :class:`DicomSeriesReader`: its sorted frames, datasets and geometry."""

    frames: list[Frame]
    affine: np.ndarray
    datasets: dict[str, Dataset] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # files of the series left out: file -> why

    @property
    def first(self) -> Dataset:
        return self.datasets[self.frames[0].path]


def _series_files(path: str) -> list[str]:
    """The DICOM files of a folder (recursively), by content."""
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if is_dicom_file(os.path.join(root, f))]
    return out


class DicomSeriesReader(ImageReader):
    """Read one DICOM series into a volume for MONAI's ``LoadImage``.

    Accepts the files of one series (any order, any names), a single enhanced multi-frame file, or a folder whose
    DICOM files (searched recursively) hold exactly one series that forms a volume. Frames are sorted along the
    slice normal (:func:`volume_geometry`); the array is ``(columns, rows, slices)`` with the RAS affine, as MONAI's
    ``ITKReader`` gives it; intensities have the modality rescale applied.

    Args:
        min_slices: fewest frames that make a volume.
        spacing_tolerance: largest relative deviation of a slice gap from the median gap.

    Raises (from ``read``/``get_data``):
        DicomVolumeError: one line naming the file that cannot be read or decoded.
        NotAVolume: the series does not form a volume.
    """

    def __init__(self, min_slices: int = MIN_SLICES, spacing_tolerance: float = 0.1) -> None:
        super().__init__()
        if int(min_slices) < 2:
            raise ValueError(f"min_slices must be >= 2, got {min_slices}")
        if not 0 < float(spacing_tolerance) < 1:
            raise ValueError(f"spacing_tolerance must be in (0, 1), got {spacing_tolerance}")
        self.min_slices = int(min_slices)
        self.spacing_tolerance = float(spacing_tolerance)

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """True for DICOM files or a folder holding some; NIfTI/NRRD/MetaImage files go to MONAI's readers."""
        names = [str(f) for f in ensure_tuple(filename)]
        if not names or is_supported_format(names, [s[1:] for s in VOLUME_SUFFIXES]):
            return False
        first = names[0]
        return os.path.isdir(first) or is_dicom_file(first)

    def read(self, data: Sequence[str] | str, **kwargs) -> DicomVolume:
        """Read the headers and pixel data of one series and check that it forms a volume.

        Args:
            data: the series' files, one multi-frame file, or a folder holding one volume series.
        """
        names = [str(f) for f in ensure_tuple(data)]
        if len(names) == 1 and os.path.isdir(names[0]):
            names = self._pick_series(names[0])
        datasets: dict[str, Dataset] = {}
        bad: dict[str, str] = {}
        for name in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(name)
            except Exception as e:
                bad[name] = f"unreadable DICOM file ({one_line(e)})"
                continue
            problem = pixel_data_problem(ds)
            if problem:
                bad[name] = problem
            else:
                datasets[name] = ds
        if bad and (len(names) == 1 or not datasets):
            name = next(iter(bad))
            raise DicomVolumeError(f"{name}: {bad[name]}")
        uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets.values()}
        if len(uids) > 1:
            raise DicomVolumeError(f"{names[0]}: the files hold {len(uids)} series, pass the files of one")
        frames = [fr for name, ds in datasets.items() for fr in frames_from_dataset(ds, name)]
        try:
            ordered, affine = volume_geometry(frames, self.min_slices, self.spacing_tolerance)
        except NotAVolume as e:
            if bad:  # the series is a volume only with the files that cannot be read: name the first of them
                name = next(iter(bad))
                more = f" (and {len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
                raise DicomVolumeError(
                    f"{name}: {bad[name]}{more}; the series is not a volume without it ({e})"
                ) from None
            raise NotAVolume(f"{names[0]}: {e}") from None
        if bad:  # at an end of the series: the others still form a volume, assessed without them
            logger.warning(
                f"{os.path.dirname(names[0])}: left out {len(bad)} unreadable file(s): "
                + "; ".join(f"{os.path.basename(f)} ({why})" for f, why in bad.items())
            )
        return DicomVolume(ordered, affine, datasets, bad)

    def _pick_series(self, folder: str) -> list[str]:
        groups: dict[str, list[str]] = {}
        for f in _series_files(folder):
            try:
                groups.setdefault(str(read_header(f).get("SeriesInstanceUID", "")), []).append(f)
            except DicomVolumeError as e:
                logger.warning(str(e))
        volumes = []
        for files in groups.values():
            try:
                frames = [fr for f in files for fr in frames_from_dataset(read_header(f), f)]
                volume_geometry(frames, self.min_slices, self.spacing_tolerance)
                volumes.append(files)
            except NotAVolume:
                continue
        if len(volumes) != 1:
            raise DicomVolumeError(
                f"{folder}: holds {len(volumes)} DICOM series that form a volume, expected "
                "one (the bundle's input discovery reads them all)"
            )
        return volumes[0]

    def get_data(self, img: DicomVolume) -> tuple[np.ndarray, dict]:
        """The volume ``(columns, rows, slices)`` as float32 and its metadata (RAS affine, spatial shape)."""
        decoded: dict[str, np.ndarray] = {}
        rows, cols = img.frames[0].shape
        out = np.empty((cols, rows, len(img.frames)), dtype=np.float32)
        for k, fr in enumerate(img.frames):
            if fr.path not in decoded:
                decoded[fr.path] = _decode(img.datasets[fr.path], fr.path)
            pixels = decoded[fr.path]
            plane = pixels if fr.index is None else pixels[fr.index]
            if plane.shape != (rows, cols):
                raise DicomVolumeError(f"{fr.path}: pixel data of shape {plane.shape}, expected {(rows, cols)}")
            out[:, :, k] = plane.T * np.float32(fr.slope) + np.float32(fr.intercept)
        ds = img.first
        meta = {
            MetaKeys.AFFINE: img.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(out.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": np.sqrt((img.affine[:3, :3] ** 2).sum(0)),
            "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "modality": str(ds.get("Modality", "")),
            "series_description": str(ds.get("SeriesDescription", "")),
        }
        if img.dropped:  # one line, so that it survives collation: the report appends it to the scan's message
            meta["dropped_files"] = "; ".join(f"{os.path.basename(f)} ({why})" for f, why in img.dropped.items())
        return out, meta


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why a file's pixel data cannot be decoded, when the header alone tells (missing, or shorter than its size)."""
    if "PixelData" not in ds:  # pydicom drops a pixel data element cut short by the end of the file
        return "truncated or missing pixel data"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        return None
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return None  # decoding will say what is wrong
    have = len(ds.PixelData)
    return f"truncated pixel data ({have} of {expected} bytes)" if have < expected else None


def _decode(ds: Dataset, path: str) -> np.ndarray:
    """Pixel data of one file as ``(rows, cols)`` or ``(frames, rows, cols)``: pydicom, else ITK (GDCM).

    ITK is used only for transfer syntaxes none of pydicom's installed decoders handles (e.g. JPEG Lossless without
    pylibjpeg or python-gdcm); it applies the modality rescale itself, so it is undone here to keep one convention.
    """
    if "PixelData" not in ds:
        raise DicomVolumeError(f"{path}: truncated or missing pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    use_itk = False
    if syntax is not None and syntax.is_compressed:
        try:
            use_itk = not pydicom.pixels.get_decoder(syntax).is_available
        except NotImplementedError:
            use_itk = True
    if not use_itk:
        try:
            return np.asarray(ds.pixel_array)
        except Exception as e:
            raise DicomVolumeError(f"{path}: cannot decode pixel data ({one_line(e)})") from e
    try:
        import itk

        arr = np.asarray(itk.GetArrayFromImage(itk.imread(path)), dtype=np.float64)
    except Exception as e:
        name = getattr(syntax, "name", syntax)
        raise DicomVolumeError(
            f"{path}: cannot decode pixel data ({name}: neither pydicom nor ITK could: {one_line(e)})"
        ) from e
    first = frames_from_dataset(ds, path)[0]  # GDCM rescales with the file's (or first frame's) values
    if first.slope != 1 or first.intercept != 0:
        arr = (arr - first.intercept) / first.slope
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = (int(ds.Rows), int(ds.Columns))
    return arr.reshape((n_frames, *shape) if n_frames > 1 else shape)
