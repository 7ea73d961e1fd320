"""MONAI Label on a DICOMweb server (a PACS, Orthanc): MONAI Label's own DICOMweb datastore, with the final label
saved back as a DICOM Segmentation coded as the bundle's LA segment, written without dcmqi.

MONAI Label's ``DICOMWebDatastore`` retrieves a series on first use (WADO-RS), converts it to NIfTI for the tasks,
and stores a final label back (STOW-RS) as DICOM SEG. Its default SEG writer is dcmqi's ``itkimage2segimage``,
which MONAI Label downloads from GitHub when the server starts: not possible on an offline site (and not on any
package index). The other writer MONAI Label ships, pydicom-seg (``nifti_to_dicom_seg(..., use_itk=False)``), needs
nothing more, so :class:`LADICOMWebDatastore` uses it, with the segment the bundle's DICOM outputs give the LA
(``bundle.io.dicom_outputs``): "Left atrium blood pool", SNOMED CT anatomical structure / left atrium (82471001).
"""

from __future__ import annotations

import logging
import os
import pathlib

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image, nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

__all__ = ["LA_SEGMENT", "LADICOMWebDatastore"]

logger = logging.getLogger(__name__)

LA_SEGMENT = {  # dcmqi meta-information of the one segment (pydicom-seg reads this format)
    "labelID": 1,
    "SegmentLabel": "Left atrium blood pool",
    "SegmentDescription": "Left atrium blood pool (la-lge-qa)",
    "SegmentAlgorithmType": "AUTOMATIC",
    "SegmentAlgorithmName": "la-lge-qa LA detector",
    "SegmentedPropertyCategoryCodeSequence": {
        "CodeValue": "91723000",
        "CodingSchemeDesignator": "SCT",
        "CodeMeaning": "Anatomical Structure",
    },
    "SegmentedPropertyTypeCodeSequence": {
        "CodeValue": "82471001",
        "CodingSchemeDesignator": "SCT",
        "CodeMeaning": "Left atrium",
    },
    "recommendedDisplayRGBValue": [206, 110, 84],
}


class LADICOMWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore; a final label is stored back as a DICOM SEG written by pydicom-seg."""

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = ""
    ) -> str:
        """As MONAI Label's ``DICOMWebDatastore.save_label``, with the pydicom-seg writer and the LA segment."""
        image_uri = self.get_image_uri(image_id)
        output_file = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":
            output_file = label_filename = binary_to_image(image_uri, label_filename)
        if label_tag == DefaultLabelTag.FINAL:
            image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
            info = [{"name": "left_atrium", "model_name": "la-lge-qa", "segmentAttribute": LA_SEGMENT}]
            seg_file = nifti_to_dicom_seg(image_dir, label_filename, info, file_ext="*.dcm", use_itk=False)
            if not seg_file:
                raise ValueError(f"{label_filename}: an empty label, no DICOM SEG stored for series {image_id}")
            try:
                label_series = dicom_web_upload_dcm(seg_file, self._client)
            finally:
                os.unlink(seg_file)
            image_info = self.get_image_info(image_id)
            label_info.update(
                {
                    "SeriesInstanceUID": label_series,
                    "Modality": image_info.get("Modality"),
                    "PatientID": image_info.get("PatientID"),
                    "StudyInstanceUID": image_info.get("StudyInstanceUID"),
                }
            )
            logger.info(f"series {image_id}: label stored as DICOM SEG series {label_series} on {self.name()}")
        label_id = LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        if output_file:
            os.unlink(output_file)
        return label_id
