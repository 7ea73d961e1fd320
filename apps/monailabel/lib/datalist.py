"""The bundle's datalist (docs/data.md) from MONAI Label's datastore: labelled volumes become `segmentation` entries."""

from __future__ import annotations

import json
import os
import re

__all__ = ["datalist_from_pairs", "write_datalist"]


def datalist_from_pairs(pairs: list[dict], patient_pattern: str | None = None) -> dict:
    """A datalist with one ``segmentation`` entry per image/label pair of MONAI Label's ``datastore.datalist()``.

    MONAI Label knows images, not patients: the patient id is the image id (file name without extension), or the
    first group of ``patient_pattern`` searched in it, so that the bundle's split keeps a patient's volumes together.

    Args:
        pairs: ``[{"image": path, "label": path}, ...]`` with absolute paths.
        patient_pattern: regular expression whose first group is the patient id in an image id; None: the image id.

    Returns:
        ``{"segmentation": [{"image", "label", "patient"}, ...]}``, sorted by image.

    Raises:
        ValueError: when ``patient_pattern`` has no group or does not match an image id (named).
    """
    pattern = re.compile(patient_pattern) if patient_pattern else None
    if pattern is not None and pattern.groups < 1:
        raise ValueError(f"patient_pattern {patient_pattern!r} needs a group: the patient id")
    entries = []
    for pair in sorted(pairs, key=lambda p: p["image"]):
        image_id = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.seg\.nrrd)$", "", os.path.basename(pair["image"]))
        patient = image_id
        if pattern is not None:
            m = pattern.search(image_id)
            if not m:
                raise ValueError(f"patient_pattern {patient_pattern!r} does not match image {image_id!r}")
            patient = m.group(1)
        entries.append({"image": pair["image"], "label": pair["label"], "patient": patient})
    return {"segmentation": entries}


def write_datalist(datalist: dict, path: str) -> str:
    """Write ``datalist`` to ``path`` (a new file: never replaces one)."""
    if os.path.exists(path):
        raise FileExistsError(f"{path}: exists, not overwritten")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=1)
    return path
