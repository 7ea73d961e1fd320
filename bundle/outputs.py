"""The output folder of an assessment, importable without PyTorch: its report files, checks and lock.

:mod:`bundle.inference.report` writes the reports through these functions; ``scripts/assess.py`` uses them before it
imports the heavy libraries, so that a folder it cannot write, a folder another run is using, or inputs of which none
exists are refused in a moment, with the refusals still written as a report.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable

from bundle.errors import BundleError

__all__ = [
    "CSV_COLUMNS",
    "LOCK_FILE",
    "REPORT_CSV",
    "REPORT_JSON",
    "STATUSES",
    "OutputError",
    "atomic_write",
    "check_output_dir",
    "check_readable",
    "lock_output_dir",
    "refusal_report",
    "release_output_dir",
    "write_report_files",
]

CSV_COLUMNS = (
    "input",
    "series_uid",
    "n_slices",
    "n_la_slices",
    "p_nulling",
    "p_sharpness",
    "p_enhancement",
    "p_fibrosis",
    "diagnostic",
    "uncertainty",
    "refer",
    "status",
    "message",
)
STATUSES = ("ok", "implausible_la", "no_left_atrium", "skipped", "error")
REPORT_CSV, REPORT_JSON = "qa_report.csv", "qa_report.json"
LOCK_FILE = ".qa_report.lock"  # held (flock) by the run writing into the folder

_held_locks: dict[str, object] = {}  # output folder -> open lock file, kept for the life of the process


class OutputError(BundleError, OSError):
    """An output folder or file that cannot be used; the message is one line naming it and what to do."""

    category = "output"


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Write ``path`` through a temporary file in the same folder, then move it in place.

    An interrupted run (Ctrl-C, SIGTERM, a crash) leaves the previous file or the complete new one, never half.

    Args:
        path: the file to write.
        write: called with the temporary path; writes the whole file there.
    """
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp" + (".nii.gz" if base.endswith(".nii.gz") else ""))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(text: str) -> Callable[[str], None]:
    def write(p: str) -> None:
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return write


def write_report_files(output_dir: str, rows: Iterable[dict], report: dict) -> tuple[str, str]:
    """Write ``qa_report.csv`` (``rows``: one dict per input, keys :data:`CSV_COLUMNS`) and ``qa_report.json``
    (``report``), each atomically. Returns their paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = os.path.join(output_dir, REPORT_CSV), os.path.join(output_dir, REPORT_JSON)
    atomic_write(csv_path, _write_text(buf.getvalue()))
    atomic_write(json_path, _write_text(json.dumps(report, indent=1, allow_nan=False)))
    return csv_path, json_path


def refusal_report(output_dir: str, refusals: list[tuple[str, str]], settings: dict | None = None) -> str:
    """The report of a run whose every input was refused before any image was read: one error row per input.

    Args:
        output_dir: where the report goes (created).
        refusals: ``(input, message)`` per input.
        settings: recorded in the JSON report.

    Returns:
        the CSV path.
    """
    os.makedirs(output_dir, exist_ok=True)
    rows = [{**{c: "" for c in CSV_COLUMNS}, "input": i, "status": "error", "message": m} for i, m in refusals]
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "complete": True,
        "settings": settings or {},
        "counts": {s: len(rows) if s == "error" else 0 for s in STATUSES},
        "ignored_files": [],
        "scans": [
            {**{c: None for c in CSV_COLUMNS}, "input": i, "status": "error", "message": m, "name": ""}
            for i, m in refusals
        ],
    }
    return write_report_files(output_dir, rows, report)[0]


def report_outputs(output_dir: str, kinds: Iterable[str] = ("seg", "sr")) -> list[str]:
    """The files of ``kinds`` (``mask``, ``html``, ``seg``, ``sr``) that the report in ``output_dir`` lists for its
    scans, in report order; those missing on disk are left out."""
    try:
        with open(os.path.join(output_dir, REPORT_JSON), encoding="utf-8") as f:
            scans = json.load(f).get("scans", [])
    except (OSError, ValueError, AttributeError):
        return []
    files = []
    for record in scans if isinstance(scans, list) else []:
        outputs = record.get("outputs") if isinstance(record, dict) else None
        for k in kinds:
            name = (outputs or {}).get(k)
            path = os.path.join(output_dir, os.path.basename(str(name))) if name else None
            if path and os.path.isfile(path):
                files.append(path)
    return files


def check_output_dir(output_dir: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    Raises:
        OutputError: ``<folder>: ...`` naming the folder (or the file in its way) and the reason.
    """
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder; choose another --output_dir")
    parent = path
    while not os.path.exists(parent):  # the nearest existing folder must let us create the rest
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"{path}: cannot be created: {parent} is a file; choose another --output_dir")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write_check_"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputError(f"{path}: cannot write there ({reason} in {parent}); choose another --output_dir") from None


def lock_output_dir(output_dir: str) -> None:
    """Hold the output folder for this process, so that a second run into it is refused instead of interleaved.

    The lock is an ``flock`` on ``<output_dir>/.qa_report.lock``, which the system releases when the process ends,
    even when it is killed; the file is removed at a normal exit. A lock taken on a file that was removed meanwhile is
    taken again on the new one (the usual flock-and-verify), so two runs never hold the folder at once.

    Raises:
        OutputError: when another process holds the folder.
    """
    path = os.path.abspath(output_dir)
    if path in _held_locks:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (documented)
        return
    lock = os.path.join(path, LOCK_FILE)
    for _ in range(10):
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip()
            f.close()
            raise OutputError(
                f"{path}: in use by another assessment ({owner or 'another process'}); wait for it to "
                "finish or choose another --output_dir"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder removed it as we opened it: lock the new file
    else:
        raise OutputError(f"{path}: cannot take the lock {lock}")
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
    f.flush()
    _held_locks[path] = f
    if len(_held_locks) == 1:
        atexit.register(_release_locks)


def release_output_dir(output_dir: str | None = None) -> None:
    """Let go of the output folder (or of every folder this process holds, with None), removing the lock file."""
    paths = list(_held_locks) if output_dir is None else [os.path.abspath(output_dir)]
    for path in paths:
        f = _held_locks.pop(path, None)
        if f is None:
            continue
        try:
            os.remove(os.path.join(path, LOCK_FILE))  # while still held: nobody can hold this file meanwhile
        except OSError:
            pass
        f.close()


def _release_locks() -> None:
    release_output_dir()


def check_readable(path: str, what: str) -> None:
    """Refuse a file that is missing, a folder, or unreadable, naming it.

    Raises:
        OutputError: ``<what> <path>: not found`` (or ``is a folder``, ``cannot be read``).
    """
    if not os.path.exists(path):
        raise OutputError(f"{what} {path}: not found")
    if os.path.isdir(path):
        raise OutputError(f"{what} {path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise OutputError(f"{what} {path}: cannot be read (permission denied)")
