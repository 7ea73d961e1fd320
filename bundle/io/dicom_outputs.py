"""DICOM outputs of an assessed DICOM series: the LA mask as a Segmentation, the verdict as a Structured Report.

Both are built with highdicom (not by hand) from the source series' own headers, so that a PACS files them in the
source study and a viewer lays the mask over the source frames:

- **Segmentation** (binary, one segment "Left atrium blood pool", SNOMED CT "Anatomical Structure" / "Left atrium"
  82471001, automatic, with the bundle as the algorithm): one frame per source frame that holds LA voxels, each
  referencing its source image, in the source frame of reference.
- **Comprehensive SR** holding a TID 1500 Imaging Measurement Report: a TID 1411 volumetric group for the LA
  (its volume in ml, the number of LA slices; referencing the segment of the Segmentation), and a TID 1501 group
  "LGE-MRI quality for fibrosis assessment" (the verdict as Image Quality Rating, the four calibrated
  probabilities, the uncertainty, the referral flag and its reason), the bundle as the observing device; the
  source series and the Segmentation as evidence.

Concepts that no standard coding scheme has (the bundle's probabilities, the verdict values) use the private coding
scheme ``99LALGEQA`` (PS3.16 8.2: designators starting with "99" are private), defined in :data:`CODES`.

Attributes the source headers lack although they are Type 2 in the MR Image IOD (patient birth date and sex,
study time, ...) are added empty to copies of the headers, as Type 2 allows; the source files are never changed.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from bundle.io.dicom import DicomVolumeError, NotAVolume, frames_from_dataset, read_header, volume_geometry

__all__ = [
    "CODES",
    "DicomOutputError",
    "SEG_SUFFIX",
    "SR_SUFFIX",
    "read_seg_mask",
    "read_sr_values",
    "series_headers",
    "write_seg",
    "write_sr",
]

SEG_SUFFIX, SR_SUFFIX = "_la_seg.dcm", "_qa_sr.dcm"
SCHEME = "99LALGEQA"
SOFTWARE = "la-lge-qa"
SEGMENT_LABEL = "Left atrium blood pool"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9801, 9802
TYPE2_DEFAULTS = {  # Type 2 in the patient, study and series modules: present, possibly empty
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
    "StudyID": "",
    "AccessionNumber": "",
    "SeriesNumber": None,
}


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, SCHEME, meaning)


class _Codes:
    """The bundle's private codes (scheme ``99LALGEQA``), built on first use (pydicom's ``Code``)."""

    _table = {
        "quality_group": ("LAQA", "LGE-MRI quality for fibrosis assessment"),
        "p_nulling": ("PNULL", "Probability of good myocardium nulling"),
        "p_sharpness": ("PSHARP", "Probability of sharp borders"),
        "p_enhancement": ("PENH", "Probability of good enhancement"),
        "p_fibrosis": ("PFIB", "Probability of quality for fibrosis assessment"),
        "uncertainty": ("UNC", "Spread of the fibrosis probability over flipped views"),
        "n_la_slices": ("NLASL", "Number of slices holding left atrium"),
        "refer": ("REFER", "Referred for review by a person"),
        "reason": ("REASON", "Reason for referral"),
        "diagnostic": ("DIAG", "Diagnostic for fibrosis assessment"),
        "non_diagnostic": ("NONDIAG", "Non-diagnostic for fibrosis assessment"),
        "no_la": ("NOLA", "Left atrium not found"),
        "status": ("STATUS", "Assessment status"),
    }

    def __getattr__(self, name: str):
        if name not in self._table:
            raise AttributeError(name)
        return _code(*self._table[name])


CODES = _Codes()
NUMBERS = ("p_nulling", "p_sharpness", "p_enhancement", "p_fibrosis", "uncertainty")  # the SR's NUM items (unit 1)


class DicomOutputError(ValueError):
    """A DICOM output that cannot be built from the series or the result; one line naming the file."""


def series_headers(files: str | Sequence[str]) -> tuple[dict[str, Dataset], list, np.ndarray]:
    """The headers of a series' files (without pixel data) and its frames in volume order.

    Args:
        files: the series' files (as discovery lists them), or one multi-frame file.

    Returns:
        ``(headers, frames, affine)``: ``{file: header}`` in the order of the files' first frames in the volume
        (Type 2 attributes completed on copies), the frames as :func:`bundle.io.dicom.volume_geometry` orders
        them, and the volume's RAS affine.

    Raises:
        DicomOutputError: the files cannot be read or do not form a volume.
    """
    files = [files] if isinstance(files, str) else list(files)
    headers: dict[str, Dataset] = {}
    frames = []
    try:
        for f in files:
            ds = read_header(f)
            headers[f] = ds
            frames += frames_from_dataset(ds, f)
        ordered, affine = volume_geometry(frames, min_slices=2, spacing_tolerance=0.5)
    except (DicomVolumeError, NotAVolume) as e:
        raise DicomOutputError(f"{files[0] if files else '?'}: {e}") from None
    order = list(dict.fromkeys(fr.path for fr in ordered))
    out = {}
    for f in order:
        ds = copy.copy(headers[f])
        for k, v in TYPE2_DEFAULTS.items():
            if k not in ds:
                setattr(ds, k, v)
        out[f] = ds
    return out, ordered, affine


def _on_grid(mask: np.ndarray, mask_affine: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``mask`` (X, Y, Z) with ``mask_affine`` in the voxel grid of ``affine``/``shape``: the same grid up to axis
    flips and permutations (as the inference writes it), else an error."""
    t = np.linalg.inv(np.asarray(mask_affine, float)) @ np.asarray(affine, float)  # source voxel -> mask voxel
    perm = np.abs(t[:3, :3]).argmax(0)
    rot = np.zeros((3, 3))
    rot[perm, range(3)] = np.sign(t[perm, range(3)])
    if not np.allclose(t[:3, :3], rot, atol=1e-3) or not np.allclose(t[:3, 3], np.round(t[:3, 3]), atol=1e-2):
        raise DicomOutputError("the mask is not in the series' voxel grid")
    out = np.transpose(mask, perm)  # axis k of out = mask axis perm[k]
    for k in range(3):
        if rot[perm[k], k] < 0:
            out = np.flip(out, k)
    if out.shape != tuple(shape):
        raise DicomOutputError(f"the mask has shape {mask.shape}, the series {tuple(shape)}")
    return np.ascontiguousarray(out)


def write_seg(
    path: str,
    mask: np.ndarray,
    mask_affine: np.ndarray,
    files: str | Sequence[str],
    version: str,
    headers: tuple | None = None,
) -> Dataset:
    """Write the LA mask as a binary DICOM Segmentation of the source series (atomically).

    Args:
        path: the file to write.
        mask: the LA mask ``(X, Y, Z)`` as inference writes it (non-zero: LA).
        mask_affine: its RAS affine.
        files: the source series' files.
        version: the software version recorded in the object.
        headers: :func:`series_headers` of ``files`` when already read.

    Returns:
        the Segmentation dataset.

    Raises:
        DicomOutputError: the series or the mask cannot make a Segmentation (an empty mask among them).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from bundle.outputs import atomic_write

    by_path, frames, affine = headers or series_headers(files)
    srcs = list(by_path.values())
    rows, cols = frames[0].shape
    grid = _on_grid(np.asarray(mask) > 0, mask_affine, affine, (cols, rows, len(frames)))
    if not grid.any():
        raise DicomOutputError(f"{path}: the mask is empty, no Segmentation written")
    planes = np.ascontiguousarray(grid.transpose(2, 1, 0)).astype(np.uint8)  # (frames, rows, columns)
    if len(srcs) == 1 and len(frames) > 1:  # one multi-frame file: frames in the file's own order
        order = np.argsort([fr.index for fr in frames])
        planes = planes[order]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{SOFTWARE} LA detector", version=version, family=codes.DCM.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.LeftAtrium,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=srcs,
            pixel_array=planes,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SOFTWARE,
            manufacturer_model_name=SOFTWARE,
            software_versions=version,
            device_serial_number="0",
            series_description=f"LA mask ({SOFTWARE})",
            content_label="LA_MASK",
            content_description="Left atrium blood pool found by the LA detector",
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomOutputError(f"{path}: cannot build the Segmentation ({str(e).splitlines()[0]})") from None
    atomic_write(path, lambda p: seg.save_as(p, enforce_file_format=True))
    return seg


def _num(x) -> float | None:
    if x is None or x == "":
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def write_sr(
    path: str,
    result: dict,
    files: str | Sequence[str],
    version: str,
    seg: Dataset | None = None,
    headers: tuple | None = None,
) -> Dataset:
    """Write the scan's verdict as a Comprehensive SR holding a TID 1500 measurement report (atomically).

    Args:
        path: the file to write.
        result: the scan's report record (``qa_report.json``'s: ``p_*``, ``diagnostic``, ``uncertainty``,
            ``refer``, ``status``, ``message``, ``n_la_slices``, ``la_volume_ml``).
        files: the source series' files.
        version: the software version recorded in the report.
        seg: the scan's Segmentation (:func:`write_seg`), referenced by the LA group; None when the mask is empty.
        headers: :func:`series_headers` of ``files`` when already read.

    Returns:
        the SR dataset.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from bundle.outputs import atomic_write

    srcs = list((headers or series_headers(files))[0].values())
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=SOFTWARE, manufacturer_name=SOFTWARE, model_name=f"{SOFTWARE} {version}"
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=device)
    algorithm = hd.sr.AlgorithmIdentification(name=SOFTWARE, version=version)
    unit_1, slices = codes.UCUM.NoUnits, hd.sr.CodedConcept("{slices}", "UCUM", "slices")
    groups = []
    volume = _num(result.get("la_volume_ml")) or 0.0
    ml = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    la_measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=volume, unit=ml, algorithm_id=algorithm)]
    if _num(result.get("n_la_slices")) is not None:
        la_measurements.append(
            hd.sr.Measurement(
                name=CODES.n_la_slices, value=float(result["n_la_slices"]), unit=slices, algorithm_id=algorithm
            )
        )
    if seg is not None:
        src_series = hd.sr.SourceSeriesForSegmentation(srcs[0].SeriesInstanceUID)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=SEGMENT_LABEL),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=1,
                    source_series=src_series,
                ),
                finding_type=codes.SCT.LeftAtrium,
                algorithm_id=algorithm,
                measurements=la_measurements,
            )
        )
        la_measurements = []
    measurements = [
        hd.sr.Measurement(name=getattr(CODES, k), value=_num(result.get(k)), unit=unit_1, algorithm_id=algorithm)
        for k in NUMBERS
        if _num(result.get(k)) is not None
    ] + la_measurements
    evaluations = []
    if result.get("diagnostic") is not None:
        verdict = CODES.diagnostic if int(result["diagnostic"]) == 1 else CODES.non_diagnostic
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.DCM.ImageQualityRating, value=verdict))
    elif result.get("status") == "no_left_atrium":
        evaluations.append(hd.sr.QualitativeEvaluation(name=CODES.status, value=CODES.no_la))
    if result.get("refer") is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=CODES.refer, value=codes.SCT.Yes if int(result["refer"]) else codes.SCT.No)
        )
    quality = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="LGE-MRI quality"),
        finding_type=CODES.quality_group,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )
    reason = str(result.get("message") or "")
    if reason:  # free text: one TEXT item in the group (DICOM text: no control characters, at most 1024 chars)
        text = "".join(c if c.isprintable() else " " for c in reason)[:1024]
        quality[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=CODES.reason, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    groups.append(quality)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.CardiacMRI,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = list(srcs) + ([seg] if seg is not None else [])
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SOFTWARE,
            is_complete=True,
            series_description=f"LGE-MRI quality ({SOFTWARE})",
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomOutputError(f"{path}: cannot build the Structured Report ({str(e).splitlines()[0]})") from None
    sr.SoftwareVersions = version
    scheme = Dataset()  # the private coding scheme, declared (PS3.3 C.12.1.1.2.1)
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = SCHEME, f"{SOFTWARE} codes (docs/pacs.md)"
    scheme.CodingSchemeResponsibleOrganization = SOFTWARE
    sr.CodingSchemeIdentificationSequence = [scheme]
    atomic_write(path, lambda p: sr.save_as(p, enforce_file_format=True))
    return sr


def read_seg_mask(path: str, files: str | Sequence[str]) -> np.ndarray:
    """The mask of segment 1 of a binary Segmentation of a series (written by :func:`write_seg`, or by another tool
    that references the source images, as MONAI Label's pydicom-seg writer does), in the series' voxel grid
    ``(X, Y, Z)``.

    Args:
        path: the Segmentation file.
        files: the source series' files.

    Returns:
        uint8 mask, 1 for the segment's voxels.
    """
    import highdicom as hd

    seg = hd.seg.segread(path)
    by_path, frames, _ = series_headers(files)
    rows, cols = frames[0].shape
    out = np.zeros((cols, rows, len(frames)), dtype=np.uint8)
    if len(by_path) == 1 and len(frames) > 1:
        src = next(iter(by_path.values()))
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=str(src.SOPInstanceUID),
            source_frame_numbers=[fr.index + 1 for fr in frames],
            segment_numbers=[1],
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    else:
        uids = [str(by_path[fr.path].SOPInstanceUID) for fr in frames]
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[1],
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    for k in range(len(frames)):
        out[:, :, k] = pixels[k, :, :, 0].T
    return out


def read_sr_values(path: str) -> dict:
    """The numbers and codes of an SR written by :func:`write_sr`, by the report's column names.

    Returns:
        ``{p_nulling, p_sharpness, p_enhancement, p_fibrosis, uncertainty, n_la_slices, la_volume_ml: float,
        diagnostic: 0/1, refer: 0/1, message: str, segment_uid: str}``, the keys present in the SR only.
    """
    ds = pydicom.dcmread(path)
    names = {getattr(CODES, k).value: k for k in (*NUMBERS, "n_la_slices")}
    out: dict = {}

    def walk(items):
        for it in items:
            concept = it.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in it else None
            value = concept.CodeValue if concept is not None else None
            scheme = concept.CodingSchemeDesignator if concept is not None else None
            if it.ValueType == "NUM":
                num = float(it.MeasuredValueSequence[0].NumericValue)
                if scheme == SCHEME and value in names:
                    out[names[value]] = num
                elif (scheme, value) == ("SCT", "118565006"):
                    out["la_volume_ml"] = num
            elif it.ValueType == "CODE":
                code = it.ConceptCodeSequence[0]
                if (scheme, value) == ("DCM", "111029"):
                    out["diagnostic"] = int(code.CodeValue == CODES.diagnostic.value)
                elif scheme == SCHEME and value == CODES.refer.value:
                    out["refer"] = int(code.CodeValue == "373066001")
            elif it.ValueType == "TEXT" and scheme == SCHEME and value == CODES.reason.value:
                out["message"] = str(it.TextValue)
            elif it.ValueType == "IMAGE" and "ReferencedSOPSequence" in it:
                out["segment_uid"] = str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out


def dicom_output_names(name: str) -> tuple[str, str]:
    """The SEG and SR file names of the scan whose outputs are named ``name``."""
    return name + SEG_SUFFIX, name + SR_SUFFIX


def is_dicom_series(image) -> bool:
    """Whether a dataset item's ``image`` (a path or a list of paths) is a DICOM series."""
    from bundle.io.dicom import is_dicom_file

    files = [image] if isinstance(image, str) else list(image or [])
    return bool(files) and os.path.isfile(files[0]) and is_dicom_file(files[0])
