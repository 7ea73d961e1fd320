"""What inference leaves in the output folder: ``qa_report.csv``, ``qa_report.json``, a mask and an HTML page per scan,
and for a DICOM series its DICOM Segmentation and Structured Report (:mod:`bundle.io.dicom_outputs`).

Nothing existing is replaced unless asked (:func:`prepare_outputs` refuses before any work is done). Every file is
written atomically (:func:`bundle.outputs.atomic_write`) and both reports are rewritten after each scan, so an
interrupted run leaves complete files holding the rows of the scans already assessed; ``resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.errors import InputError
from bundle.io.dicom_outputs import (
    DicomOutputError,
    dicom_output_names,
    is_dicom_series,
    series_headers,
    write_seg,
    write_sr,
)
from bundle.io.discover import Discovery, Source
from bundle.outputs import (
    CSV_COLUMNS,
    REPORT_CSV,
    REPORT_JSON,
    STATUSES,
    OutputError,
    atomic_write,
    check_output_dir,
    lock_output_dir,
    write_report_files,
)
from bundle.utils import as_bool

__all__ = [
    "CSV_COLUMNS",
    "STATUSES",
    "ReportWriter",
    "ScanResult",
    "Visuals",
    "exit_status",
    "pending_volumes",
    "planned_outputs",
    "prepare_outputs",
    "previous_results",
]

logger = logging.getLogger(__name__)

ASSESSED = ("ok", "implausible_la", "no_left_atrium")
MASK_SUFFIX, HTML_SUFFIX = "_la_mask.nii.gz", "_report.html"
PENDING = "not assessed yet: the run is in progress or was stopped (rerun with --resume to continue it)"
INTERRUPTED = "not assessed: the run was interrupted (rerun with --resume to continue it)"


@dataclass
class Visuals:
    """What a scan's HTML page draws (and the QA stage's per-flip probabilities), held until the page is written.

    Attributes:
        images: ``(K, H, W)`` float16, the slices shown (the LA slices, or the most likely ones), in the scan's grid.
        masks: ``(K, H, W)`` bool, the LA mask on those slices, as written.
        indices: the slice index of each of them.
        cams: ``(C, H, W)`` float16 HiResCAM maps of the slices ``detail.cam_slices`` names, on the same grid;
            None without QA or CAMs.
        tta_probs: ``(T, S, 4)`` per-flip, per-LA-slice probabilities of the QA network (a caller can re-derive the
            verdict at other settings, as ``bundle.evaluation.tuning`` does); None without QA.
    """

    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    indices: list[int] = field(default_factory=list)
    cams: np.ndarray | None = None
    tta_probs: np.ndarray | None = None


@dataclass
class ScanDetail:
    """What the JSON report holds about a scan beside the CSV fields; a field left unset (None) is not written.

    Attributes:
        source: discovery's descriptive fields of the input (series description, modality, series number, patient
            id, SOP class, duplicate files), written as top-level keys.
        slice_axis: the voxel axis of the slices.
        la_volume_ml, la_extent_mm, la_kept: the detected LA's volume, extent along the slice axis and the fraction
            of its voxels kept by the largest-component filter.
        slices: one dict per slice (``index``, ``la_prob``, ``la_area_mm2``, ``selected``; for an assessed slice also
            ``p_<label>``, ``fibrosis_spread``, ``vote``).
        verdict: how the scan verdict was reached (rule, mode and mean verdicts, flips, referral reasons).
        slice_votes: ``[diagnostic, non-diagnostic]`` slice votes.
        cam_slices: the slices the class-activation maps show.
        qa_reliable: False where the QA verdict rests on an implausible LA.
        outputs: the files written for the scan.
        dicom_outputs_error: why its DICOM outputs could not be written.
    """

    source: dict = field(default_factory=dict)
    slice_axis: int | None = None
    la_volume_ml: float | None = None
    la_extent_mm: float | None = None
    la_kept: float | None = None
    slices: list[dict] | None = None
    verdict: dict | None = None
    slice_votes: list[int] | None = None
    cam_slices: list[int] | None = None
    qa_reliable: bool | None = None
    outputs: dict | None = None
    dicom_outputs_error: str | None = None

    @classmethod
    def from_dict(cls, record: dict) -> ScanDetail:
        """The detail back from its JSON keys (:meth:`to_dict`): the fields by name, every other key a source field."""
        names = {f.name for f in fields(cls)} - {"source"}
        return cls(
            source={k: v for k, v in record.items() if k not in names},
            **{k: v for k, v in record.items() if k in names},
        )

    def to_dict(self) -> dict:
        """The JSON keys: the source fields, then every field that is set."""
        out = dict(self.source)
        set_fields = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        out.update({k: v for k, v in set_fields.items() if v is not None})
        return out


@dataclass
class ScanResult:
    """One row of the report, plus the per-slice detail of the JSON report and the pictures of the HTML page.

    The fields up to ``message`` are the CSV columns (:data:`CSV_COLUMNS`); ``detail`` (:class:`ScanDetail`) goes to
    the JSON report only;
    ``visuals`` (:class:`Visuals`) only to the HTML page.
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
    detail: ScanDetail = field(default_factory=ScanDetail)
    visuals: Visuals = field(default_factory=Visuals, repr=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def from_source(cls, src: Source) -> ScanResult:
        """The row of an input that discovery skipped or could not read."""
        return cls(
            input=src.input,
            series_uid=src.series_uid,
            n_slices=src.n_slices,
            status=src.status,
            message=src.message,
            name=src.name,
            detail=ScanDetail(source={k: v for k, v in src.info.items() if v}),
        )

    @classmethod
    def from_dict(cls, record: dict) -> ScanResult:
        """A result back from its JSON record (:meth:`to_dict`), as a resumed run reads it."""
        fields = {c: record.get(c) for c in CSV_COLUMNS}
        fields["status"] = fields["status"] if fields["status"] in STATUSES else "error"
        fields["message"] = fields["message"] or ""
        fields["series_uid"] = fields["series_uid"] or ""
        detail = ScanDetail.from_dict({k: v for k, v in record.items() if k not in CSV_COLUMNS and k != "name"})
        return cls(**fields, name=record.get("name") or "", detail=detail)

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
        out.update(self.detail.to_dict())
        return _jsonable(out)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return _jsonable(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).tolist())
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def planned_outputs(discovery: Discovery, output_dir: str, html: bool = True, dicom: bool = True) -> list[str]:
    """Every file a run on ``discovery`` writes in ``output_dir`` (``dicom``: the SEG and SR of DICOM series)."""
    files = [REPORT_CSV, REPORT_JSON]
    for s in discovery.sources:
        if s.status == "ready":
            files.append(s.name + MASK_SUFFIX)
            if html:
                files.append(s.name + HTML_SUFFIX)
            if dicom and is_dicom_series(s.image):
                files += list(dicom_output_names(s.name))
    return [os.path.join(output_dir, f) for f in files]


def release_memory() -> None:
    """Give the memory freed by a finished scan back to the system (glibc keeps large freed blocks on its heap
    otherwise, and the process grows from scan to scan); nothing where ``malloc_trim`` is not available."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fixed_mmap_threshold(nbytes: int = 4 << 20) -> bool:
    """Have glibc serve every allocation of ``nbytes`` or more (a volume, a slice stack) by its own mmap, given back
    to the system when freed, for the rest of the process.

    glibc does that by default only until the first such block is freed, then raises its threshold to that block's
    size, and the next scan's arrays come from the heap, which fragments and stays grown (+130 MB after the second
    576 x 576 x 88 scan; bench/memory_assess.py). Setting the threshold explicitly turns that adjustment off; the
    price is a page-fault and zeroing cost on every large temporary (about 1.7 times the time per study at 4 MB).

    Returns:
        whether it was set (False where glibc's ``mallopt`` is not available).
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        return False


def previous_results(output_dir: str, discovery: Discovery, html: bool = True) -> dict[str, ScanResult]:
    """The scans an earlier (interrupted) run into ``output_dir`` finished: assessed, with their files in place.

    Read from its ``qa_report.json``; a scan counts as finished when its row is assessed (``ok``, ``implausible_la``,
    ``no_left_atrium``), it is a source of ``discovery`` again (same output name and input), and its mask (and page,
    with ``html``) exist.

    Returns:
        ``{name: result}``; empty when there is no readable report.
    """
    path = os.path.join(output_dir, REPORT_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            scans = json.load(f).get("scans", [])
    except (OSError, ValueError, AttributeError):
        return {}
    sources = {s.name: s for s in discovery.sources if s.status == "ready"}
    done = {}
    for record in scans if isinstance(scans, list) else []:
        if not isinstance(record, dict) or record.get("status") not in ASSESSED:
            continue
        src = sources.get(record.get("name"))
        outputs = record.get("outputs") or {}
        if src is None or src.input != record.get("input") or not outputs.get("mask"):
            continue
        wanted = [outputs["mask"]] + ([outputs.get("html") or src.name + HTML_SUFFIX] if html else [])
        wanted += [outputs[k] for k in ("seg", "sr") if outputs.get(k)]
        if all(os.path.isfile(os.path.join(output_dir, os.path.basename(str(f)))) for f in wanted):
            done[src.name] = ScanResult.from_dict(record)
    return done


def pending_volumes(discovery: Discovery, output_dir: str, resume: bool = False, html: bool = True) -> list[dict]:
    """The dataset items still to assess: every volume, or with ``resume`` those an earlier run did not finish."""
    done = previous_results(output_dir, discovery, as_bool(html)) if as_bool(resume) else {}
    if done:
        logger.info(
            f"resuming: {len(done)} scan(s) already assessed in {output_dir}, "
            f"{len(discovery.volumes) - len(done)} to go"
        )
    return [v for v in discovery.volumes if v["name"] not in done]


def prepare_outputs(
    discovery: Discovery,
    output_dir: str,
    overwrite: bool = False,
    html: bool = True,
    resume: bool = False,
    dicom: bool = True,
) -> list[str]:
    """Check, before any work, that ``output_dir`` can be written; create and hold it (a lock against a second run);
    refuse to replace existing outputs unless ``overwrite`` (or ``resume``: an interrupted run is continued).

    Returns:
        the planned output files.

    Raises:
        OutputError: one line naming the folder, or the existing files.
    """
    files = planned_outputs(discovery, output_dir, as_bool(html), as_bool(dicom))
    existing = [f for f in files if os.path.exists(f)]
    if existing and not (as_bool(overwrite) or as_bool(resume)):
        names = ", ".join(os.path.basename(f) for f in existing[:3])
        if len(existing) > 3:
            names += f" and {len(existing) - 3} more"
        raise OutputError(
            f"{output_dir} already holds {names}; pass --overwrite to replace them, "
            "--resume to continue an interrupted run, or choose another --output_dir"
        )
    try:
        check_output_dir(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        lock_output_dir(output_dir)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"{output_dir}: cannot write there ({e.strerror or e})") from None
    return files


def _affine_of(pred: torch.Tensor) -> np.ndarray:
    """The RAS affine of a step's ``pred`` (a MetaTensor), identity for a plain tensor."""
    affine = pred.affine if hasattr(pred, "affine") else np.eye(4)
    return np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine)


def write_mask(path: str, mask: torch.Tensor | np.ndarray, affine: np.ndarray) -> None:
    """Save a binary mask ``(X, Y, Z)`` as a uint8 NIfTI with ``affine`` (RAS) as both its qform and sform."""
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    img = nib.Nifti1Image((arr > 0.5).astype(np.uint8), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    atomic_write(path, lambda p: nib.save(img, p))


class ReportWriter:
    """Ignite handler writing each scan's mask and HTML page as it is assessed, and both reports after each scan.

    The CSV and JSON reports list every source of the discovery in its order: the assessed scans with their
    results, the skipped and failed inputs with their reasons, and (while the run goes on, or after it was stopped)
    the scans not assessed yet. The reports are rewritten atomically after every scan, so the rows of finished
    scans survive an interrupt or a crash; :meth:`write` at the end (or :func:`exit_status` when no scan was
    read at all) writes the final ones.

    Args:
        output_dir: the output folder.
        discovery: what was found in the input (:func:`bundle.io.discover_inputs`).
        overwrite: replace existing outputs.
        html: write an HTML page per assessed scan.
        settings: the settings recorded in the JSON report and on each HTML page.
        resume: continue an earlier, interrupted run into ``output_dir``: its finished scans
            (:func:`previous_results`) keep their rows and files and are not assessed again.
        dicom: for a DICOM series, also write its LA mask as a DICOM Segmentation (``<name>_la_seg.dcm``, when the
            mask is not empty) and its result as a DICOM Structured Report (``<name>_qa_sr.dcm``).
        low_memory: serve every large allocation by its own mmap (:func:`fixed_mmap_threshold`): memory flat over
            many studies and about 150 MB less per 576 x 576 x 88 study, but about 1.7 times the time per study.
    """

    def __init__(
        self,
        output_dir: str,
        discovery: Discovery,
        overwrite: bool = False,
        html: bool = True,
        settings: dict | None = None,
        resume: bool = False,
        dicom: bool = True,
        low_memory: bool = False,
    ) -> None:
        self.output_dir = output_dir
        self.discovery = discovery
        self.html = as_bool(html)
        self.dicom = as_bool(dicom)
        # the DICOM series' files, by output name: the scans that get a SEG and an SR
        self._dicom_files = {
            s.name: s.image
            for s in discovery.sources
            if s.status == "ready" and self.dicom and is_dicom_series(s.image)
        }
        self.resume = as_bool(resume)
        self.overwrite = as_bool(overwrite) or self.resume  # resumed: a scan assessed again replaces its own files
        self.settings = dict(settings or {})
        self.results: dict[str, ScanResult] = previous_results(output_dir, discovery, self.html) if self.resume else {}
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.written = False  # the final reports
        self._tick = time.monotonic()  # per-scan time in the log: since the previous scan was written
        self.interrupted = False
        if as_bool(low_memory):  # large arrays in and out of the system, scan after scan: flat memory, slower
            fixed_mmap_threshold()
        # reports of another run are kept unless overwrite/resume (prepare_outputs refuses such a folder up front)
        self._keep_reports = not self.overwrite and any(
            os.path.exists(os.path.join(output_dir, f)) for f in (REPORT_CSV, REPORT_JSON)
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for result, out in zip(engine.state.scan_results, outputs):
            self.add(result, out.get("pred"))
        self.write(final=False)
        # the scan is written: let its volume and mask go now, not when the next scan has been read (flat memory)
        engine.state.batch = engine.state.output = None
        engine.state.scan_results = []
        release_memory()

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
                write_mask(path, pred[0], _affine_of(pred))
                outputs["mask"] = os.path.basename(path)
        if self.html and result.status in ASSESSED and result.name:
            from bundle.inference.html import render_report

            path = os.path.join(self.output_dir, result.name + HTML_SUFFIX)
            if self._free(path):
                page = render_report(result, self.settings)

                def write_page(p: str) -> None:
                    with open(p, "w", encoding="utf-8") as f:
                        f.write(page)

                atomic_write(path, write_page)
                outputs["html"] = os.path.basename(path)
        if result.status in ASSESSED and result.name in self._dicom_files:
            outputs.update(self._write_dicom(result, pred))
        result.detail.outputs = outputs
        result.visuals = Visuals()  # pictures are written; free the memory
        self.results[result.name or result.input] = result
        series = f" [{result.series_uid}]" if result.series_uid else ""
        verdict = f" diagnostic={result.diagnostic}" if result.diagnostic is not None else ""
        note = (" refer" if result.refer else "") + (f" - {result.message}" if result.message else "")
        now, total = time.monotonic(), len(self.discovery.volumes)
        progress = f"[{sum(n in self.results for n in (v['name'] for v in self.discovery.volumes))}/{total}] "
        logger.info(f"{progress}{result.input}{series}: {result.status}{verdict}{note} ({now - self._tick:.1f} s)")
        self._tick = now

    def _write_dicom(self, result: ScanResult, pred: torch.Tensor | None) -> dict:
        """The scan's DICOM Segmentation (a non-empty mask) and Structured Report; a failure is logged as one line,
        recorded in the JSON report (``dicom_outputs_error``) and does not stop the run."""
        import bundle

        files = self._dicom_files[result.name]
        seg_name, sr_name = dicom_output_names(result.name)
        written = {}
        try:
            headers = series_headers(files)
            seg = None
            if pred is not None and pred.numel() and bool((pred[0] > 0).any()):
                path = os.path.join(self.output_dir, seg_name)
                if self._free(path):
                    mask = np.asarray(pred[0].cpu())
                    seg = write_seg(path, mask, _affine_of(pred), files, bundle.__version__, headers)
                    written["seg"] = seg_name
            path = os.path.join(self.output_dir, sr_name)
            if self._free(path):
                write_sr(path, result.to_dict(), files, bundle.__version__, seg, headers)
                written["sr"] = sr_name
        except (DicomOutputError, OSError) as e:
            logger.error(f"DICOM outputs of {result.input}: {e}")
            result.detail.dicom_outputs_error = str(e)
        return written

    def rows(self, final: bool = True) -> list[ScanResult]:
        """All rows, in discovery order; a scan without a result reads as not assessed yet (``final`` False), as
        interrupted, or as not processed."""
        if not final:
            missing = PENDING
        elif self.interrupted:
            missing = INTERRUPTED
        else:
            missing = "not processed"
        out = []
        for src in self.discovery.sources:
            if src.status != "ready":
                out.append(ScanResult.from_source(src))
            else:
                res = self.results.get(src.name)
                out.append(
                    res
                    if res is not None
                    else ScanResult(
                        input=src.input,
                        series_uid=src.series_uid,
                        name=src.name,
                        status="error",
                        message=f"{src.input}: {missing}",
                    )
                )
        return out

    def write(self, final: bool = True) -> tuple[str, str]:
        """Write ``qa_report.csv`` and ``qa_report.json`` (atomically); returns their paths.

        Args:
            final: the run is over (``False``: a snapshot during the run; the JSON says ``"complete": false``).
        """
        rows = self.rows(final)
        report = {
            "created": self.started,
            "complete": bool(final and not self.interrupted),
            "settings": self.settings,
            "counts": {s: sum(r.status == s for r in rows) for s in STATUSES},
            "ignored_files": self.discovery.ignored,
            "scans": [r.to_dict() for r in rows],
        }
        csv_path, json_path = os.path.join(self.output_dir, REPORT_CSV), os.path.join(self.output_dir, REPORT_JSON)
        if self._keep_reports:
            if final:
                logger.error(f"{csv_path} exists; not overwritten")
        else:  # this run's own reports: each snapshot replaces the previous one
            write_report_files(self.output_dir, [r.row() for r in rows], _jsonable(report))
        if final:
            self.written = True
            counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
            logger.info(f"report: {csv_path} ({counts or 'nothing found'})")
        return csv_path, json_path

    @property
    def n_assessed(self) -> int:
        return sum(r.status in ASSESSED for r in self.results.values())


def exit_status(report: ReportWriter) -> int:
    """0 when at least one scan was assessed (``ok``, ``implausible_la`` or ``no_left_atrium``).

    Writes the final reports first when the evaluator did not (no volume to read: every input refused).

    Raises:
        InputError: (exit status 1) naming the report when nothing could be assessed.
    """
    if not report.written and os.path.isdir(report.output_dir):  # (prepare_outputs made it)
        report.write()
    rows = report.rows()
    print(
        f"assessed {report.n_assessed} of {len(rows)} input volume(s)/series; report: "
        f"{os.path.join(report.output_dir, REPORT_CSV)}"
    )
    if report.n_assessed == 0:
        reasons = "; ".join(r.message for r in rows[:3] if r.message)
        raise InputError(
            f"nothing could be assessed ({reasons or 'no input'}); see {os.path.join(report.output_dir, REPORT_CSV)}"
        )
    return 0
