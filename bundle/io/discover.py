"""Find the volumes to assess in whatever the user points at: a DICOM export, NIfTI/NRRD files, folders, a datalist.

Only headers are read here. Every DICOM image series becomes either a volume to read (its files, to
:class:`~bundle.io.loader.LoadVolume`) or a report row saying why it is skipped; every input that yields nothing
(missing, empty, corrupt, not an image) becomes one error row naming it. Nothing raises for bad input.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bundle.io.dicom import (
    MIN_SLICES,
    VOLUME_SUFFIXES,
    DicomVolumeError,
    NotAVolume,
    frames_from_dataset,
    is_dicom_file,
    read_header,
    volume_geometry,
)

__all__ = ["Discovery", "Source", "discover_inputs", "volume_name"]

logger = logging.getLogger(__name__)

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
NOT_DICOM_SUFFIXES = (
    ".txt",
    ".xml",
    ".json",
    ".html",
    ".htm",
    ".pdf",
    ".csv",
    ".md",
    ".ini",
    ".log",
    ".zip",
    ".exe",
    ".inf",
    ".js",
    ".css",
    ".raw",
    ".img",
)  # (.raw/.img: MetaImage/Analyze data)
NON_IMAGE_SOP_CLASSES = {"1.2.840.10008.1.3.10": "a DICOMDIR"}


@dataclass
class Source:
    """One volume to assess, or one report row for an input that cannot be assessed.

    Attributes:
        input: what the report names: the file, or the folder holding a DICOM series.
        name: file-system-safe stem of the outputs (``<name>_la_mask.nii.gz``), unique within a run.
        image: what ``LoadVolume`` reads (a path, or a DICOM series' files); None for rows only.
        series_uid: DICOM SeriesInstanceUID ("" for other formats).
        status: ``ready`` (to assess), ``skipped`` or ``error``.
        message: why it is skipped or failed.
        n_slices: slice count when known from the headers.
        info: descriptive DICOM fields (modality, series description and number, patient id).
    """

    input: str
    name: str = ""
    image: str | list[str] | None = None
    series_uid: str = ""
    status: str = "ready"
    message: str = ""
    n_slices: int | None = None
    info: dict = field(default_factory=dict)

    def as_data(self) -> dict:
        """The dataset item of a ready source: ``image`` plus the fields the report needs."""
        return {
            "image": self.image,
            "input": self.input,
            "name": self.name,
            "series_uid": self.series_uid,
            "series_description": self.info.get("series_description", ""),
        }


@dataclass
class Discovery:
    """The result of :func:`discover_inputs`: volumes to assess, rows for the rest, files ignored."""

    sources: list[Source]
    ignored: list[str] = field(default_factory=list)

    @property
    def volumes(self) -> list[dict]:
        """Dataset items (``image``, ``input``, ``name``, ``series_uid``) of the volumes to assess."""
        return [s.as_data() for s in self.sources if s.status == "ready"]

    @property
    def rows(self) -> list[Source]:
        """Inputs that are skipped or failed (report rows)."""
        return [s for s in self.sources if s.status != "ready"]

    def to_dict(self) -> dict:
        return {"sources": [asdict(s) for s in self.sources], "ignored": self.ignored}


def _strip_suffix(path: str) -> str:
    base = os.path.basename(path.rstrip(os.sep))
    for suffix in sorted(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def volume_name(text: str, max_len: int = 80) -> str:
    """A file-system-safe output stem: letters, digits, ``.``, ``_``, ``-``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name[:max_len] or "volume"


def _kind(path: str) -> str:
    """``volume`` (NIfTI/NRRD/MetaImage), ``image2d``, ``dicom`` or ``other``: by name and, if need be, content."""
    low = path.lower()
    if low.endswith(VOLUME_SUFFIXES):
        return "volume"
    if low.endswith(IMAGE_2D_SUFFIXES):
        return "image2d"
    if os.path.basename(low) == "dicomdir":
        return "other"
    if is_dicom_file(path):
        return "dicom"
    if low.endswith(NOT_DICOM_SUFFIXES):
        return "other"
    # files without the part-10 preamble: accept only what parses into an image header with a series
    try:
        ds = read_header(path, force=True)
    except DicomVolumeError:
        return "other"
    return "dicom" if "SeriesInstanceUID" in ds and "SOPClassUID" in ds and "Rows" in ds else "other"


def _walk(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return out


def _dicom_sources(files: Sequence[str], min_slices: int, spacing_tolerance: float) -> list[Source]:
    """Group DICOM files by SeriesInstanceUID and decide, from the headers, which series form a volume."""
    series: dict[str, list] = {}
    rows: list[Source] = []
    for f in files:
        try:
            ds = read_header(f, force=not is_dicom_file(f))
        except DicomVolumeError as e:
            rows.append(Source(input=f, status="error", message=str(e)))
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop in NON_IMAGE_SOP_CLASSES:
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{f}"
        series.setdefault(uid, []).append((f, ds))
    for uid, items in series.items():
        items, dupes = _unique_instances(items)
        files_ = [f for f, _ in items]
        first = items[0][1]
        folder = os.path.commonpath([os.path.dirname(f) for f in files_])
        info = {
            k: str(first.get(tag, ""))
            for k, tag in (
                ("modality", "Modality"),
                ("series_number", "SeriesNumber"),
                ("series_description", "SeriesDescription"),
                ("patient_id", "PatientID"),
            )
        }
        info["sop_class"] = getattr(first.get("SOPClassUID"), "name", str(first.get("SOPClassUID", "")))
        src = Source(
            input=folder,
            image=files_ if len(files_) > 1 else files_[0],
            series_uid="" if uid.startswith("no-series-uid:") else uid,
            info=info,
        )
        if dupes:  # the same instance twice (a copied file, the series exported twice): each counted once
            info["duplicate_files"] = len(dupes)
            logger.warning(
                f"{folder}: {len(dupes)} duplicate instance(s) of series {uid} (same SOPInstanceUID) "
                f"counted once, e.g. {dupes[0]}"
            )
        number, text = info["series_number"], info["series_description"]
        desc = " ".join(v for v in (f"series {number}" if number else "", repr(text) if text else "") if v)
        parts = (info["patient_id"] or os.path.basename(folder), f"s{number}" if number else "", text)
        src.name = volume_name("_".join(v for v in parts if v))
        try:
            if not src.series_uid:
                raise NotAVolume("no SeriesInstanceUID")
            if "Rows" not in first:  # headers are read without the pixel data; an image has a size
                raise NotAVolume(f"no image data ({info['sop_class']})")
            if info["modality"] and info["modality"] != "MR":
                raise NotAVolume(f"modality {info['modality']}: only MR is assessed")
            if int(first.get("SamplesPerPixel", 1) or 1) != 1:
                raise NotAVolume(f"colour image (SamplesPerPixel {first.get('SamplesPerPixel')})")
            frames = [fr for f, ds in items for fr in frames_from_dataset(ds, f)]
            src.n_slices = len(frames)
            volume_geometry(frames, min_slices, spacing_tolerance)
        except NotAVolume as e:
            src.status, src.message, src.image = "skipped", f"{desc + ': ' if desc else ''}{e}", None
        rows.append(src)
    return rows


def _unique_instances(items: list) -> tuple[list, list[str]]:
    """The ``(file, header)`` items of a series with each SOPInstanceUID once (the first file), and the others."""
    seen: set[str] = set()
    kept, dupes = [], []
    for f, ds in items:
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop and sop in seen:
            dupes.append(f)
            continue
        seen.add(sop)
        kept.append((f, ds))
    return kept, dupes


def _datalist_images(path: str, dataset_dir: str | None) -> list[str]:
    with open(path) as f:
        data = json.load(f)
    root = dataset_dir or os.path.dirname(os.path.abspath(path))
    lists = data.values() if isinstance(data, dict) else [data]
    images: list[str] = []
    for value in lists:
        if not isinstance(value, list):
            continue
        for entry in value:
            image = entry.get("image") if isinstance(entry, dict) else entry if isinstance(entry, str) else None
            if isinstance(image, str):
                image = os.path.expanduser(image)
                image = os.path.normpath(image if os.path.isabs(image) else os.path.join(root, image))
                if image not in images:
                    images.append(image)
    return images


def discover_inputs(
    input: str | Sequence[str] | None,
    dataset_dir: str | None = None,
    min_slices: int = MIN_SLICES,
    spacing_tolerance: float = 0.1,
) -> Discovery:
    """Everything to assess in ``input``, from headers only.

    Args:
        input: a DICOM folder (nested folders, opaque names, several series, other files beside them), a NIfTI or
            NRRD file, a folder of those, a datalist JSON (every ``image`` of every list), or a list of any of these.
        dataset_dir: folder a datalist's relative paths start from (default: the datalist's folder).
        min_slices: fewest slices a DICOM series needs to be assessed (fewer: a localizer).
        spacing_tolerance: largest relative deviation of a DICOM slice gap from the median gap.

    Returns:
        the sources, in a stable order, with unique output names.
    """
    if input is None or (isinstance(input, str) and not input.strip()):
        return Discovery([Source(input="", status="error", message="no input given (pass --input <path>)")])
    sources: list[Source] = []
    ignored: list[str] = []
    for item in [input] if isinstance(input, str) else list(input):
        item = os.path.expanduser(str(item))
        if not os.path.exists(item):
            sources.append(Source(input=item, status="error", message=f"{item}: not found"))
        elif os.path.isfile(item) and item.lower().endswith(".json"):
            try:
                images = _datalist_images(item, dataset_dir)
            except (OSError, ValueError, AttributeError) as e:
                sources.append(Source(input=item, status="error", message=f"{item}: unreadable datalist ({e})"))
                continue
            if not images:
                sources.append(Source(input=item, status="error", message=f"{item}: datalist names no image"))
            sub = discover_inputs(images, None, min_slices, spacing_tolerance)
            sources += sub.sources
            ignored += sub.ignored
        elif os.path.isfile(item):
            kind = _kind(item)
            if kind == "volume":
                sources.append(Source(input=item, image=item, name=volume_name(_strip_suffix(item))))
            elif kind == "dicom":
                sources += _dicom_sources([item], min_slices, spacing_tolerance)
            elif kind == "image2d":
                sources.append(Source(input=item, status="skipped", message=f"{item}: a single 2D image, not a volume"))
            else:
                sources.append(Source(input=item, status="error", message=f"{item}: not a DICOM, NIfTI or NRRD image"))
        else:
            files = _walk(item)
            if not files:
                sources.append(Source(input=item, status="error", message=f"{item}: empty folder"))
                continue
            kinds = {f: _kind(f) for f in files}
            dicom = [f for f in files if kinds[f] == "dicom"]
            vols = [f for f in files if kinds[f] == "volume"]
            others = [f for f in files if kinds[f] in ("other", "image2d")]
            ignored += others
            if not dicom and not vols:
                msg = f"{item}: no DICOM series or NIfTI/NRRD volume found ({len(others)} other file(s) ignored)"
                sources.append(Source(input=item, status="error", message=msg))
                continue
            sources += [Source(input=f, image=f, name=volume_name(_strip_suffix(f))) for f in vols]
            sources += _dicom_sources(dicom, min_slices, spacing_tolerance)
    if ignored:
        logger.info(f"ignored {len(ignored)} non-image file(s), e.g. {ignored[0]}")
    _unique_names(sources)
    return Discovery(sources, ignored)


def _unique_names(sources: list[Source]) -> None:
    seen: set[str] = set()
    for s in sources:
        if not s.name:
            continue
        base, n = s.name, 1
        while s.name.lower() in seen:
            n += 1
            s.name = f"{base}_{n}"
        seen.add(s.name.lower())
