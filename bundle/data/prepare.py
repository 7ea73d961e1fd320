"""One call from the configs: resolve the datalist (or make the demo set), validate it, split it by patient."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from bundle.data.datalist import LIST_KEYS, DatalistError, load_datalist, validate_datalist
from bundle.data.demo import make_demo_dataset
from bundle.data.slices import SliceCache
from bundle.data.split import PARTS, assign_split, load_split, save_split, split_patients
from bundle.errors import DataError
from bundle.utils import is_rank0, rank0_first

__all__ = ["DataSplit", "cached_slices", "prepare_data", "resolve_datalist"]

logger = logging.getLogger(__name__)


@dataclass
class DataSplit:
    """The validated datalist and its patient split.

    Attributes:
        datalist: path of the datalist JSON used.
        dataset_dir: folder its paths are relative to.
        lists: ``{list name: [entry, ...]}`` with absolute paths.
        split: ``{"train" | "val" | "test": [patient, ...]}``.
        parts: ``{list name: {part: [entry, ...]}}``.
    """

    datalist: str
    dataset_dir: str
    lists: dict[str, list[dict]]
    split: dict[str, list[str]]
    parts: dict[str, dict[str, list[dict]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parts = {k: assign_split(v, self.split, "split") for k, v in self.lists.items()}

    def entries(self, list_name: str, part: str) -> list[dict]:
        """Entries of ``list_name`` ("segmentation" or "quality") in ``part`` ("train", "val" or "test")."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return self.parts.get(list_name, {}).get(part, [])

    def to_dict(self) -> dict:
        """The split with, per list and part, the images used: what is saved with a run."""
        images = {
            k: {p: [os.path.relpath(e["image"], self.dataset_dir) for e in v[p]] for p in PARTS}
            for k, v in self.parts.items()
        }
        return {**self.split, "datalist": self.datalist, "dataset_dir": self.dataset_dir, "images": images}


def resolve_datalist(dataset_dir: str | None, datalist: str | None, demo_dir: str) -> tuple[str, str]:
    """The datalist and dataset folder to use: given ones, ``<dataset_dir>/dataset.json``, or the demo set.

    Returns:
        ``(datalist path, dataset_dir)``.

    Raises:
        DatalistError: when ``dataset_dir`` is given without a datalist and holds no ``dataset.json``.
    """
    if datalist:
        return os.path.abspath(datalist), os.path.abspath(dataset_dir or os.path.dirname(os.path.abspath(datalist)))
    if dataset_dir:
        path = os.path.join(dataset_dir, "dataset.json")
        if not os.path.isfile(path):
            raise DatalistError(f"{dataset_dir}: no datalist given and no dataset.json in it (pass --datalist)")
        return os.path.abspath(path), os.path.abspath(dataset_dir)
    logger.info(f"no dataset given: using the synthetic demo set in {demo_dir}")
    return make_demo_dataset(demo_dir), os.path.abspath(demo_dir)


def prepare_data(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    output_dir: str = "runs",
    split_file: str | None = None,
    test_size: float = 20,
    val_fraction: float = 0.1,
    seed: int = 0,
    save_split_to: str | None = None,
    check_geometry: bool = True,
) -> DataSplit:
    """Validate the datalist and split it by patient before anything trains.

    With neither ``dataset_dir`` nor ``datalist`` the synthetic demo set is generated under
    ``<output_dir>/demo``. The split covers the patients of all lists at once (the detector and the QA network
    hold out the same test patients); it is read from ``split_file`` when given, else drawn with ``seed``.

    Args:
        dataset_dir: folder the datalist's paths are relative to.
        datalist: datalist JSON.
        output_dir: the run's output folder (the demo set goes to ``<output_dir>/demo``).
        split_file: an existing split JSON to reuse; None draws one.
        test_size: test patients, a count (>= 1) or a fraction.
        val_fraction: validation fraction of the remaining patients.
        seed: split seed.
        save_split_to: where to save the split JSON (with the run).
        check_geometry: compare each mask's geometry with its image's.

    Returns:
        the validated, split data.

    Raises:
        DataError: (a ``DatalistError``) one line naming the bad entry, when anything is wrong with the data;
            nothing is written outside ``output_dir``.
    """
    # a DatalistError (a DataError) propagates: one line naming the entry
    with rank0_first():  # in a distributed run rank 0 writes the demo set, the others then read it
        path, root = resolve_datalist(dataset_dir, datalist, os.path.join(output_dir, "demo"))
    lists = load_datalist(path, root, LIST_KEYS)
    validate_datalist(lists, check_geometry=check_geometry)
    patients = {e["patient"] for v in lists.values() for e in v}
    split = load_split(split_file) if split_file else split_patients(patients, test_size, val_fraction, seed)
    data = DataSplit(path, root, lists, split)
    sizes = ", ".join(f"{p} {len(data.split[p])}" for p in PARTS)
    logger.info(f"datalist {path}: {sum(map(len, lists.values()))} entries; patients: {sizes}")
    if save_split_to and is_rank0():
        save_split(data.to_dict(), save_split_to)
    return data


def cached_slices(data: DataSplit, list_name: str, part: str, **kwargs) -> SliceCache:
    """The :class:`SliceCache` of one list and part of the split, e.g. the training volumes of the segmentation list.

    Args:
        data: the output of :func:`prepare_data`.
        list_name: "segmentation" or "quality".
        part: "train", "val" or "test".
        kwargs: arguments of :class:`SliceCache` (``spatial_size``, ``slice_axis``, ``cache_dir``, ...).

    Raises:
        DataError: one line naming the entry whose volume cannot be read or sliced, or the empty part.
    """
    entries = data.entries(list_name, part)
    if not entries:
        n = len(data.split.get(part, []))
        raise DataError(
            f"{os.path.basename(data.datalist)}: no '{list_name}' entries for the {part} "
            f"part ({n} patients); the workflow needs at least one (add entries or change the split)"
        )
    with rank0_first():  # rank 0 fills the on-disk cache, the other ranks then read it
        return SliceCache(entries, **kwargs)  # a DatalistError is a DataError
