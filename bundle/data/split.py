"""Patient-level train/validation/test splits, deterministic by seed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from bundle.data.datalist import DatalistError, entry_name

__all__ = [
    "PARTS",
    "cv_folds",
    "patient_strata",
    "split_patients",
    "check_split",
    "assign_split",
    "load_split",
    "save_split",
]

PARTS = ("train", "val", "test")


def split_patients(
    patients: Iterable[str], test_size: float = 20, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[str]]:
    """Split patients into test, then the rest into train and validation (the paper: 20 test, 90:10).

    The result depends only on the set of patients and the arguments, never on their order.

    Args:
        patients: patient ids (duplicates are collapsed).
        test_size: number of test patients when >= 1, else the fraction of all patients; 0 for no test set.
        val_fraction: fraction of the non-test patients used for validation (at least one when > 0).
        seed: random seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        DatalistError: when the sizes leave no training patient.
    """
    unique = sorted({str(p) for p in patients})
    n = len(unique)
    if test_size < 0 or not 0 <= val_fraction < 1:
        raise DatalistError(
            f"split: test_size must be >= 0 and val_fraction in [0, 1), got {test_size}, {val_fraction}"
        )
    n_test = int(test_size) if test_size >= 1 else int(round(test_size * n))
    n_rest = n - n_test
    n_val = max(1, int(round(val_fraction * n_rest))) if val_fraction > 0 else 0
    if n_rest - n_val < 1:
        raise DatalistError(
            f"split: {n} patients cannot hold {n_test} test and {n_val} validation patients and still train; "
            "lower test_size (a count, or a fraction below 1)"
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [unique[i] for i in order]
    return {
        "train": sorted(shuffled[n_test + n_val :]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "test": sorted(shuffled[:n_test]),
    }


def check_split(split: dict[str, list[str]], source: str = "split") -> None:
    """Raise when a patient is listed in two parts of ``split``.

    Raises:
        DatalistError: naming the patient and both parts.
    """
    seen: dict[str, str] = {}
    for part in PARTS:
        for p in split.get(part, []):
            if p in seen and seen[p] != part:
                raise DatalistError(f"{source}: patient {p} is in both '{seen[p]}' and '{part}'")
            seen[p] = part


def assign_split(entries: list[dict], split: dict[str, list[str]], source: str = "split") -> dict[str, list[dict]]:
    """Distribute datalist entries to the split parts by their patient.

    Raises:
        DatalistError: when an entry's patient is in two parts or in none.
    """
    check_split(split, source)
    part_of = {p: part for part in PARTS for p in split.get(part, [])}
    out: dict[str, list[dict]] = {part: [] for part in PARTS}
    for e in entries:
        part = part_of.get(str(e.get("patient")))
        if part is None:
            raise DatalistError(f"{entry_name(e)}: patient is in no part of {source}")
        out[part].append(e)
    return out


def save_split(split: dict, path: str) -> str:
    """Write ``split`` (patients per part, plus any extra keys) as JSON; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(split, f, indent=1)
    return path


def load_split(path: str) -> dict[str, list[str]]:
    """Read a split JSON written by :func:`save_split` (or by hand: ``{"train": [...], "val": [...], "test": [...]}``).

    Raises:
        DatalistError: when the file is missing or malformed, or a patient is in two parts.
    """
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise DatalistError(f"{path}: not a readable split file ({e})") from e
    if not isinstance(raw, dict) or not all(isinstance(raw.get(p, []), list) for p in PARTS):
        raise DatalistError(f"{path}: a split file maps 'train', 'val' and 'test' to lists of patient ids")
    split = {p: [str(x) for x in raw.get(p, [])] for p in PARTS}
    check_split(split, os.path.basename(path))
    return split


def patient_strata(entries: Iterable[dict], key: str = "fibrosis", threshold: int = 3) -> dict[str, int]:
    """A stratification label per patient: how many of its scored scans are diagnostic (``key`` >= ``threshold``).

    Patients without a score get -1 (a stratum of their own).
    """
    out: dict[str, int] = {}
    for e in entries:
        p = str(e.get("patient"))
        out.setdefault(p, 0)
        if e.get(key) is not None:
            out[p] += int(float(e[key]) >= threshold)
    return out


def _stratified_take(patients: list[str], strata: dict[str, int], n: int, seed: int) -> list[str]:
    """``n`` of ``patients`` drawn so that each stratum is represented in proportion (largest remainders)."""
    rng = np.random.default_rng(seed)
    groups: dict[int, list[str]] = {}
    for p in patients:
        groups.setdefault(strata.get(p, -1), []).append(p)
    for g in groups.values():
        rng.shuffle(g)
    share = {k: n * len(g) / len(patients) for k, g in groups.items()}
    take = {k: int(np.floor(v)) for k, v in share.items()}
    for k in sorted(share, key=lambda k: (-(share[k] - take[k]), k))[: n - sum(take.values())]:
        take[k] += 1
    if n >= len(groups):  # at least one of each stratum where there is room, taken from the largest share
        for k in groups:
            if take[k] == 0 and len(groups[k]):
                donor = max(take, key=lambda j: take[j])
                take[donor] -= 1
                take[k] = 1
    return sorted(p for k, g in groups.items() for p in g[: take[k]])


def _merge_small_strata(labels: np.ndarray, folds: int) -> np.ndarray:
    """Merge each stratum with fewer than ``folds`` patients into its nearest neighbour label (a stratum smaller than
    K cannot be spread over K folds), smallest first."""
    labels = labels.copy()
    while True:
        values, counts = np.unique(labels, return_counts=True)
        if len(values) < 2 or counts.min() >= folds:
            return labels
        small = values[np.argmin(counts)]
        others = values[values != small]
        labels[labels == small] = others[np.argmin(np.abs(others - small))]


def cv_folds(
    patients: Iterable[str],
    strata: dict[str, int] | None = None,
    folds: int = 5,
    n_val: int = 4,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[dict[str, list[str]]]:
    """K-fold cross-validation by patient, stratified, each fold's validation part drawn from its training patients.

    Every patient is in exactly one fold's test part; scikit-learn's ``StratifiedKFold`` deals the patients to the
    folds by ``strata`` (one label per patient, e.g. :func:`patient_strata`; strata smaller than K merged into the
    nearest); each fold's validation part holds ``max(n_val, round(val_fraction * rest))`` of the remaining patients,
    stratified likewise.

    Args:
        patients: patient ids (duplicates collapsed).
        strata: a stratification label per patient; None: unstratified.
        folds: K (>= 2).
        n_val: fewest validation patients per fold.
        val_fraction: validation share of each fold's non-test patients.
        seed: the folds' random seed.

    Returns:
        one split per fold, ``{"train", "val", "test"}`` patient lists, each sorted.

    Raises:
        DatalistError: when there are too few patients for ``folds`` and ``n_val``.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    unique = sorted({str(p) for p in patients})
    folds = int(folds)
    if folds < 2:
        raise DatalistError(f"cross-validation: folds must be >= 2, got {folds}")
    if len(unique) < folds or len(unique) - int(np.ceil(len(unique) / folds)) < n_val + 1:
        raise DatalistError(
            f"cross-validation: {len(unique)} patients are too few for {folds} folds with "
            f"{n_val} validation patients and a training part"
        )
    labels = _merge_small_strata(np.array([(strata or {}).get(p, -1) for p in unique]), folds)
    if strata and len(set(labels.tolist())) > 1:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(unique, labels)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed).split(unique)
    out = []
    for k, (rest_idx, test_idx) in enumerate(splitter):
        rest = [unique[i] for i in rest_idx]
        nv = max(int(n_val), int(round(val_fraction * len(rest))))
        val = _stratified_take(rest, strata or {}, nv, seed + 1000 + k)
        out.append({"train": sorted(set(rest) - set(val)), "val": val, "test": sorted(unique[i] for i in test_idx)})
    return out
