"""Build a datalist JSON from a CSV of quality scores and a folder of images (and masks)."""

from __future__ import annotations

import csv
import os
import re

from bundle.data.datalist import SCORE_KEYS, DatalistError

__all__ = ["datalist_from_csv"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _stem(name: str) -> str:
    for s in _IMAGE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _score(value: str, key: str, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DatalistError(f"{where}: score '{key}' is not a number: {value!r}") from None
    if f != int(f) or not 1 <= f <= 5:
        raise DatalistError(f"{where}: score '{key}' must be an integer in 1..5, got {value!r}")
    return int(f)


def datalist_from_csv(
    csv_path: str | None,
    dataset_dir: str,
    seg_images: str | None = None,
    seg_labels: str | None = None,
    patient_pattern: str | None = None,
) -> dict:
    """Make a datalist dict (``segmentation`` and ``quality`` lists) with paths relative to ``dataset_dir``.

    The quality list comes from the CSV: one row per scored volume with columns ``image``, optional ``label``,
    ``patient`` (or derived from the file name), ``nulling``, ``sharpness``, ``enhancement``, ``fibrosis``.
    The segmentation list pairs each file of ``seg_images`` with the file of the same name in ``seg_labels``
    (DICOM series folders are paired by folder name).

    Args:
        csv_path: CSV of scores (paths relative to ``dataset_dir``); None for a segmentation-only datalist.
        dataset_dir: folder all paths are relative to.
        seg_images: folder (relative to ``dataset_dir``) of images with LA masks.
        seg_labels: folder of the LA masks, same names as in ``seg_images``.
        patient_pattern: regular expression whose first group is the patient id in a file name, used when the
            CSV has no ``patient`` column and for the segmentation list; default: the whole name without suffix.

    Returns:
        the datalist dict.

    Raises:
        DatalistError: one line naming the CSV row or file that is wrong.
    """
    pattern = re.compile(patient_pattern) if patient_pattern else None

    def patient_of(path: str, where: str) -> str:
        name = _stem(os.path.basename(os.path.normpath(path)))
        if pattern is None:
            return name
        m = pattern.search(name)
        if not m:
            raise DatalistError(f"{where}: patient_pattern {pattern.pattern!r} does not match {name!r}")
        return m.group(1) if m.groups() else m.group(0)

    out: dict = {"segmentation": [], "quality": []}
    if csv_path:
        if not os.path.isfile(csv_path):
            raise DatalistError(f"{csv_path}: CSV not found")
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in ("image", *SCORE_KEYS) if k not in (reader.fieldnames or [])]
            if missing:
                raise DatalistError(f"{csv_path}: missing columns {missing}")
            for i, row in enumerate(reader, start=2):  # line 1 is the header
                where = f"{os.path.basename(csv_path)}:{i}"
                if not (row.get("image") or "").strip():
                    raise DatalistError(f"{where}: empty 'image'")
                entry = {"image": row["image"].strip()}
                if (row.get("label") or "").strip():
                    entry["label"] = row["label"].strip()
                entry["patient"] = (row.get("patient") or "").strip() or patient_of(entry["image"], where)
                entry.update({k: _score(row[k], k, where) for k in SCORE_KEYS})
                out["quality"].append(entry)
    if seg_images or seg_labels:
        if not (seg_images and seg_labels):
            raise DatalistError("segmentation list: give both seg_images and seg_labels")
        img_dir, lab_dir = os.path.join(dataset_dir, seg_images), os.path.join(dataset_dir, seg_labels)
        for d in (img_dir, lab_dir):
            if not os.path.isdir(d):
                raise DatalistError(f"{d}: folder not found")
        for name in sorted(os.listdir(img_dir)):
            if name.startswith("."):
                continue
            if not os.path.exists(os.path.join(lab_dir, name)):
                raise DatalistError(f"{os.path.join(img_dir, name)}: no mask of the same name in {lab_dir}")
            out["segmentation"].append(
                {
                    "image": os.path.join(seg_images, name),
                    "label": os.path.join(seg_labels, name),
                    "patient": patient_of(name, os.path.join(img_dir, name)),
                }
            )
    if not out["segmentation"] and not out["quality"]:
        raise DatalistError("datalist: no entries (give a CSV and/or seg_images with seg_labels)")
    return out
