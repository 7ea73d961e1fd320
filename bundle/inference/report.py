"""What inference leaves in the output folder: ``qa_report.csv``, ``qa_report.json``, a mask and an HTML page per scan.

Nothing existing is replaced unless asked (:func:`prepare_outputs` refuses before any work is done).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.io.discover import Discovery, Source
from bundle.utils import as_bool

__all__ = ["CSV_COLUMNS", "STATUSES", "ReportWriter", "ScanResult", "exit_status", "planned_outputs", "prepare_outputs"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("input", "series_uid", "n_slices", "n_la_slices", "p_nulling", "p_sharpness", "p_enhancement",
               "p_fibrosis", "diagnostic", "uncertainty", "refer", "status", "message")  # fmt: skip
STATUSES = ("ok", "implausible_la", "no_left_atrium", "skipped", "error")
ASSESSED = ("ok", "implausible_la", "no_left_atrium")
REPORT_CSV, REPORT_JSON = "qa_report.csv", "qa_report.json"
MASK_SUFFIX, HTML_SUFFIX = "_la_mask.nii.gz", "_report.html"


@dataclass
class ScanResult:
    """One row of the report, plus the per-slice detail of the JSON report and the pictures of the HTML page.

    The fields up to ``message`` are the CSV columns (:data:`CSV_COLUMNS`); ``detail`` goes to the JSON report only;
    ``visuals`` (arrays) only to the HTML page.
    """

    input: str
    series_uid: str = ""
    n_slices: int | None = None
    n_la_slices: int | None = None
    p_nulling: float | None = None
    p_sharpness: float | None = None
    p_enhancement: float | None = None
    p_fibrosis: float | None = None
    diagnostic: int | None = None
    uncertainty: float | None = None
    refer: int | None = None
    status: str = "error"
    message: str = ""
    name: str = ""
    detail: dict = field(default_factory=dict)
    visuals: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def from_source(cls, src: Source) -> ScanResult:
        """The row of an input that discovery skipped or could not read."""
        return cls(input=src.input, series_uid=src.series_uid, n_slices=src.n_slices, status=src.status,
                   message=src.message, name=src.name, detail={k: v for k, v in src.info.items() if v})  # fmt: skip

    def row(self) -> dict:
        """The CSV row: numbers rounded, missing values empty."""

        def fmt(v):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ""
            if isinstance(v, bool):
                return int(v)
            return round(v, 4) if isinstance(v, float) else v

        return {c: fmt(getattr(self, c)) for c in CSV_COLUMNS}

    def to_dict(self) -> dict:
        """The JSON record: the CSV fields (typed, null when missing), the output name and the detail."""
        out = {c: getattr(self, c) for c in CSV_COLUMNS}
        out["name"] = self.name
        out.update(self.detail)
        return _jsonable(out)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return _jsonable(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).tolist())
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def planned_outputs(discovery: Discovery, output_dir: str, html: bool = True) -> list[str]:
    """Every file a run on ``discovery`` writes in ``output_dir``."""
    files = [REPORT_CSV, REPORT_JSON]
    for s in discovery.sources:
        if s.status == "ready":
            files.append(s.name + MASK_SUFFIX)
            if html:
                files.append(s.name + HTML_SUFFIX)
    return [os.path.join(output_dir, f) for f in files]


def prepare_outputs(discovery: Discovery, output_dir: str, overwrite: bool = False, html: bool = True) -> list[str]:
    """Create ``output_dir`` and refuse, before any work, to replace existing outputs unless ``overwrite``.

    Returns:
        the planned output files.

    Raises:
        SystemExit: ``ERROR output: ...`` naming the existing files when ``overwrite`` is False.
    """
    files = planned_outputs(discovery, output_dir, as_bool(html))
    existing = [f for f in files if os.path.exists(f)]
    if existing and not as_bool(overwrite):
        names = ", ".join(os.path.basename(f) for f in existing[:3])
        if len(existing) > 3:
            names += f" and {len(existing) - 3} more"
        raise SystemExit(f"ERROR output: {output_dir} already holds {names}; pass --overwrite true to replace them "
                         "or choose another --output_dir")  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    return files


def _replace(path: str, write) -> None:
    """Write through a temporary file in the same folder, then move it in place (no half-written outputs)."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp" + (".nii.gz" if base.endswith(".nii.gz") else ""))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_mask(path: str, mask: torch.Tensor | np.ndarray, affine: np.ndarray) -> None:
    """Save a binary mask ``(X, Y, Z)`` as a uint8 NIfTI with ``affine`` (RAS) as both its qform and sform."""
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    img = nib.Nifti1Image((arr > 0.5).astype(np.uint8), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    _replace(path, lambda p: nib.save(img, p))


class ReportWriter:
    """Ignite handler writing each scan's mask and HTML page as it is assessed, and both reports at the end.

    The CSV and JSON reports list every source of the discovery in its order: the assessed scans with their
    results, the skipped and failed inputs with their reasons.

    Args:
        output_dir: the output folder.
        discovery: what was found in the input (:func:`bundle.io.discover_inputs`).
        overwrite: replace existing outputs.
        html: write an HTML page per assessed scan.
        settings: the settings recorded in the JSON report and on each HTML page.
    """

    def __init__(
        self, output_dir: str, discovery: Discovery, overwrite: bool = False, html: bool = True,
        settings: dict | None = None,
    ) -> None:  # fmt: skip
        self.output_dir = output_dir
        self.discovery = discovery
        self.overwrite = as_bool(overwrite)
        self.html = as_bool(html)
        self.settings = dict(settings or {})
        self.results: dict[str, ScanResult] = {}
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for result, out in zip(engine.state.scan_results, outputs):
            self.add(result, out.get("pred"))

    def completed(self, engine: Engine) -> None:
        self.write()

    def _free(self, path: str) -> bool:
        if os.path.exists(path) and not self.overwrite:
            logger.error(f"{path} exists; not overwritten")
            return False
        return True

    def add(self, result: ScanResult, pred: torch.Tensor | None = None) -> None:
        """Record one scan's result; write its mask (``pred``, ``(1, X, Y, Z)`` with an affine) and HTML page."""
        outputs = {}
        if result.status in ASSESSED and pred is not None and pred.numel() and result.name:
            path = os.path.join(self.output_dir, result.name + MASK_SUFFIX)
            if self._free(path):
                affine = pred.affine if hasattr(pred, "affine") else np.eye(4)
                write_mask(path, pred[0], np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine))
                outputs["mask"] = os.path.basename(path)
        if self.html and result.status in ASSESSED and result.name:
            from bundle.inference.html import render_report

            path = os.path.join(self.output_dir, result.name + HTML_SUFFIX)
            if self._free(path):
                page = render_report(result, self.settings)
                _replace(path, lambda p: open(p, "w", encoding="utf-8").write(page))
                outputs["html"] = os.path.basename(path)
        result.detail["outputs"] = outputs
        result.visuals = {}  # pictures are written; free the memory
        self.results[result.name or result.input] = result
        series = f" [{result.series_uid}]" if result.series_uid else ""
        verdict = f" diagnostic={result.diagnostic}" if result.diagnostic is not None else ""
        note = (" refer" if result.refer else "") + (f" - {result.message}" if result.message else "")
        logger.info(f"{result.input}{series}: {result.status}{verdict}{note}")

    def rows(self) -> list[ScanResult]:
        """All rows, in discovery order."""
        out = []
        for src in self.discovery.sources:
            if src.status != "ready":
                out.append(ScanResult.from_source(src))
            else:
                res = self.results.get(src.name)
                out.append(res if res is not None else ScanResult(input=src.input, series_uid=src.series_uid,
                                                                  name=src.name, status="error",
                                                                  message=f"{src.input}: not processed"))  # fmt: skip
        return out

    def write(self) -> tuple[str, str]:
        """Write ``qa_report.csv`` and ``qa_report.json``; returns their paths."""
        rows = self.rows()
        csv_path, json_path = os.path.join(self.output_dir, REPORT_CSV), os.path.join(self.output_dir, REPORT_JSON)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.row() for r in rows)
        report = {"created": self.started, "settings": self.settings,
                  "counts": {s: sum(r.status == s for r in rows) for s in STATUSES},
                  "ignored_files": self.discovery.ignored, "scans": [r.to_dict() for r in rows]}  # fmt: skip
        if self._free(csv_path):
            _replace(csv_path, lambda p: open(p, "w", encoding="utf-8", newline="").write(buf.getvalue()))
        if self._free(json_path):
            _replace(json_path, lambda p: open(p, "w", encoding="utf-8").write(json.dumps(_jsonable(report), indent=1)))
        counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
        logger.info(f"report: {csv_path} ({counts or 'nothing found'})")
        return csv_path, json_path

    @property
    def n_assessed(self) -> int:
        return sum(r.status in ASSESSED for r in self.results.values())


def exit_status(report: ReportWriter) -> int:
    """0 when at least one scan was assessed (``ok`` or ``no_left_atrium``).

    Raises:
        SystemExit: (non-zero) naming the report when nothing could be assessed.
    """
    rows = report.rows()
    print(f"assessed {report.n_assessed} of {len(rows)} input volume(s)/series; report: "
          f"{os.path.join(report.output_dir, REPORT_CSV)}")  # fmt: skip
    if report.n_assessed == 0:
        reasons = "; ".join(r.message for r in rows[:3] if r.message)
        raise SystemExit(f"ERROR input: nothing could be assessed ({reasons or 'no input'}); see "
                         f"{os.path.join(report.output_dir, REPORT_CSV)}")  # fmt: skip
    return 0
