"""The datalist contract: loading, path resolution and validation before any training.

A datalist is a JSON file in the format of ``la2018/dataset.json``::

    {
      "segmentation": [{"image": "images/p1.nii.gz", "label": "labels/p1.nii.gz", "patient": "p1"}, ...],
      "quality": [{"image": "qa/p1_q0.nii.gz", "label": "labels/p1.nii.gz", "patient": "p1",
                   "nulling": 3, "sharpness": 4, "enhancement": 2, "fibrosis": 3}, ...]
    }

Paths are relative to ``dataset_dir``. Images may be NIfTI, NRRD or DICOM series folders. Every problem is reported
as one line that names the datalist entry (``dataset.json: quality[3] (patient p1): ...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from bundle.errors import DataError
from bundle.io.geometry import read_geometry, same_geometry

__all__ = [
    "ATTRIBUTES",
    "SCORE_KEYS",
    "DatalistError",
    "content_hash",
    "entry_name",
    "load_datalist",
    "validate_datalist",
    "to_binary",
]

logger = logging.getLogger(__name__)

ATTRIBUTES = ("nulling", "sharpness", "enhancement")  # the paper's three image-quality attributes
SCORE_KEYS = (*ATTRIBUTES, "fibrosis")  # plus the quality of fibrosis assessment (the QA target)
LIST_KEYS = ("segmentation", "quality")
SCORE_RANGE = (1, 5)


class DatalistError(DataError):
    """A datalist, split or entry that cannot be used; the message is one line naming the entry."""


def entry_name(entry: dict) -> str:
    """``<datalist file>: <list>[<index>] (patient <id>)``, the prefix of every message about an entry."""
    where = (
        f"{os.path.basename(entry.get('_datalist', 'datalist'))}: {entry.get('_list', '?')}[{entry.get('_index', '?')}]"
    )
    patient = entry.get("patient")
    return f"{where} (patient {patient})" if patient else where


def _resolve(path: Any, root: str) -> str:
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def load_datalist(
    datalist: str, dataset_dir: str | None = None, keys: Sequence[str] = LIST_KEYS
) -> dict[str, list[dict]]:
    """Read a datalist JSON and make its paths absolute.

    Each returned entry is a copy of the JSON entry with absolute ``image``/``label`` paths and three private
    fields used in messages: ``_datalist``, ``_list`` and ``_index``.

    Args:
        datalist: path of the datalist JSON.
        dataset_dir: folder the entries' paths are relative to; defaults to the datalist's folder.
        keys: lists to read; a list absent from the file is returned empty.

    Returns:
        ``{list name: [entry, ...]}`` for each of ``keys``.

    Raises:
        DatalistError: when the file is missing, is not JSON, or holds none of ``keys``.
    """
    if not os.path.isfile(datalist):
        raise DatalistError(f"{datalist}: datalist not found")
    try:
        with open(datalist) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise DatalistError(f"{datalist}: not a readable JSON datalist ({e})") from e
    if not isinstance(raw, dict) or not any(k in raw for k in keys):
        raise DatalistError(f"{datalist}: holds none of the lists {list(keys)}")
    root = os.path.abspath(dataset_dir) if dataset_dir else os.path.dirname(os.path.abspath(datalist))
    out: dict[str, list[dict]] = {}
    for key in keys:
        items = raw.get(key)
        items = [] if items is None else items
        if not isinstance(items, list):
            raise DatalistError(f"{datalist}: '{key}' must be a list of entries")
        entries = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DatalistError(f"{os.path.basename(datalist)}: {key}[{i}]: entry must be an object, got {item!r}")
            e = dict(item)
            e.update(_datalist=os.path.abspath(datalist), _list=key, _index=i)
            for k in ("image", "label"):
                if e.get(k):
                    e[k] = _resolve(e[k], root)
            entries.append(e)
        out[key] = entries
    return out


def _check_entry(entry: dict, list_name: str) -> str | None:
    """The first problem of one entry, or None."""
    name = entry_name(entry)
    if not str(entry.get("patient") or "").strip():
        return f"{name}: no 'patient' id"
    if not entry.get("image"):
        return f"{name}: no 'image'"
    if not os.path.exists(entry["image"]):
        return f"{name}: image not found: {entry['image']}"
    if list_name == "segmentation" and not entry.get("label"):
        return f"{name}: segmentation entry has no 'label' mask"
    if entry.get("label") and not os.path.exists(entry["label"]):
        return f"{name}: label not found: {entry['label']}"
    if list_name == "quality":
        lo, hi = SCORE_RANGE
        for k in SCORE_KEYS:
            v = entry.get(k)
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)  # NaN, Infinity
            if bad or float(v) != int(v) or not lo <= v <= hi:
                return f"{name}: score '{k}' must be an integer in {lo}..{hi}, got {v!r}"
    return None


def _check_geometry(entry: dict) -> str | None:
    if not entry.get("label"):
        return None
    name = entry_name(entry)
    try:
        img, lab = read_geometry(entry["image"]), read_geometry(entry["label"])
    except (OSError, ValueError) as e:
        return f"{name}: {e}"
    if tuple(img.shape) != tuple(lab.shape):
        return f"{name}: mask shape {lab.shape} differs from image shape {img.shape}"
    if not same_geometry(img, lab):
        return f"{name}: mask geometry (affine) differs from the image's"
    return None


def content_hash(path: str) -> str:
    """A hash of an image's content: the voxel array of a NIfTI file (so a copy with another header matches), the
    bytes of any other file, the sorted file hashes of a folder (a DICOM series)."""
    h = hashlib.sha1()
    if os.path.isdir(path):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
        for f in sorted(content_hash(f) for f in files):
            h.update(f.encode())
        return h.hexdigest()
    if path.lower().endswith((".nii", ".nii.gz")):
        try:
            import nibabel as nib
            import numpy as np

            arr = np.ascontiguousarray(np.asanyarray(nib.load(path).dataobj))
            h.update(f"{arr.shape}{arr.dtype}".encode())
            h.update(arr.tobytes())
            return h.hexdigest()
        except Exception:  # unreadable here: the loader reports it; the bytes still identify the file
            h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry_key(entry: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in entry.items() if not k.startswith("_")))


def _check_leakage(lists: dict[str, list[dict]], check_content: bool) -> list[str]:
    """Images shared by two patients (by path, or by content), and exact duplicate entries (dropped, with a warning).

    A split by patient keeps one patient's scans on one side; an image listed under two patients could sit in the
    training and the test part at once and inflate every figure, so it is an error naming both entries.
    """
    problems: list[str] = []
    for entries in lists.values():
        seen: dict[tuple, dict] = {}
        kept = []
        for e in entries:
            key = _entry_key(e)
            if key in seen:
                logger.warning(f"{entry_name(e)}: the same entry as {entry_name(seen[key])}; counted once")
                continue
            seen[key] = e
            kept.append(e)
        entries[:] = kept
    owners: dict[str, dict] = {}  # image (path, then content) -> first entry holding it
    hashes: dict[str, str] = {}
    for entries in lists.values():
        for e in entries:
            image = e.get("image")
            if not image or not os.path.exists(image):
                continue
            keys = [os.path.realpath(image)]
            if check_content:
                if keys[0] not in hashes:
                    hashes[keys[0]] = "content:" + content_hash(keys[0])
                keys.append(hashes[keys[0]])
            for key in keys:
                first = owners.setdefault(key, e)
                if str(first.get("patient")) != str(e.get("patient")):
                    how = "the same image file" if key == keys[0] else "an image with the same voxels"
                    problems.append(
                        f"{entry_name(e)}: {how} as {entry_name(first)}: one image under two patients "
                        "would sit on both sides of the split"
                    )
                    break
    return problems


def validate_datalist(
    lists: dict[str, list[dict]],
    check_geometry: bool = True,
    check_content: bool = True,
    require: Sequence[str] = (),
) -> None:
    """Check every entry: files exist, scores are integers in 1..5, masks share their image's geometry, no image
    under two patients; drop exact duplicate entries (one warning each, counted once).

    All entries are checked; each problem is logged, and the first one is raised.

    Args:
        lists: output of :func:`load_datalist`; exact duplicate entries are removed from it in place.
        check_geometry: also compare each mask's shape and affine with its image (headers only for NIfTI).
        check_content: also compare images by content (:func:`content_hash`), not only by path.
        require: lists that must hold at least one entry (those the workflow trains on).

    Raises:
        DatalistError: one line naming the first bad entry (and how many more problems there are).
    """
    problems: list[str] = []
    geometry_checked: dict[tuple[str, str], str | None] = {}
    for list_name, entries in lists.items():
        for entry in entries:
            problem = _check_entry(entry, list_name)
            if problem is None and check_geometry and entry.get("label"):
                pair = (entry["image"], entry["label"])
                if pair not in geometry_checked:
                    geometry_checked[pair] = _check_geometry(entry)
                problem = geometry_checked[pair]
            if problem:
                logger.error(problem)
                problems.append(problem)
    for problem in _check_leakage(lists, check_content):
        logger.error(problem)
        problems.append(problem)
    if not any(lists.values()):
        problems.append("datalist: no entries")
    for name in require:
        if not lists.get(name):
            datalist = next((e["_datalist"] for v in lists.values() for e in v), "datalist")
            problems.append(f"{os.path.basename(datalist)}: the '{name}' list is empty; this workflow trains on it")
    if problems:
        more = f" (and {len(problems) - 1} more problems, logged above)" if len(problems) > 1 else ""
        raise DatalistError(problems[0] + more)


def to_binary(score: float, threshold: float = 3) -> int:
    """The paper's binarisation: a score >= ``threshold`` is diagnostic (1), below is non-diagnostic (0)."""
    return int(float(score) >= threshold)
