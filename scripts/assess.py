"""Assess the quality of LGE-MRI scans for fibrosis assessment: DICOM exports, NIfTI/NRRD files, folders, datalists.

    python scripts/assess.py <input> [<input> ...] --output_dir <dir>
    python scripts/assess.py --dicomweb <url> --study <uid> [--series <uid>] [--store] --output_dir <dir>

Runs the bundle's inference workflow (configs/common.yaml + configs/inference.yaml) with the weights in models/.
Writes qa_report.csv, qa_report.json, and per scan <name>_la_mask.nii.gz and <name>_report.html; the reports are
rewritten after every scan, so an interrupted run keeps the rows of the scans it finished (--resume continues it).
For DICOM input also <name>_la_seg.dcm (DICOM Segmentation) and <name>_qa_sr.dcm (Structured Report). With
--dicomweb the study is retrieved from the server into <dir>/retrieved/ first; --store sends the SEG and SR back.

Exit status: 0 when at least one scan was assessed; 1 when nothing could be assessed (the report says why, one row
per input); 2 when the run could not start (arguments, output folder, weights: one line, before any work);
130 when interrupted (Ctrl-C or SIGTERM; the report holds the scans already assessed); 3 when the scans were assessed
but --store failed (the local outputs are complete; nothing on the server was changed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="*", help="DICOM folders, NIfTI/NRRD files, folders of those, or a datalist JSON")
    p.add_argument("--output_dir", default=None, help="where the reports go (default: <bundle>/runs/inference_<time>)")
    p.add_argument(
        "--overwrite",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        help="replace existing outputs in the output folder (--overwrite or --overwrite true)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into --output_dir: assess only the scans it did not finish",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="LA detector weights, its plan beside them (default: the shipped models/detector.pt)",
    )
    p.add_argument(
        "--qa_weights",
        default=None,
        help="QA network weights, its plan beside them (default: the shipped models/qa.pt)",
    )
    p.add_argument(
        "--qa_spatial_size",
        type=int,
        default=None,
        help="slice size the QA network was trained at, for a checkpoint without a plan (default 128)",
    )
    p.add_argument("--la_only", action="store_true", help="LA detection only, no quality assessment")
    p.add_argument("--la_threshold", type=float, default=None, help="LA slice threshold t (default: the bundle's)")
    p.add_argument("--no_html", action="store_true", help="no HTML page per scan")
    p.add_argument(
        "--dicom_outputs",
        nargs="?",
        const=True,
        default=True,
        type=_bool,
        help="for DICOM input, also write the LA mask as DICOM SEG and the result as DICOM SR "
        "(default true; --dicom_outputs false to switch off)",
    )
    p.add_argument(
        "--low_memory",
        action="store_true",
        help="memory flat over many studies and lower per study, about 1.7x slower (docs/benchmarks.md)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--config", action="append", default=[], help="a further config overlay (repeatable)")
    web = p.add_argument_group("DICOMweb (a PACS or Orthanc)")
    web.add_argument(
        "--dicomweb",
        default=None,
        metavar="URL",
        help="DICOMweb root of the server to retrieve the study from, e.g. http://127.0.0.1:8042/dicom-web",
    )
    web.add_argument("--study", default=None, metavar="UID", help="StudyInstanceUID to retrieve and assess")
    web.add_argument("--series", default=None, metavar="UID", help="only this SeriesInstanceUID of the study")
    web.add_argument(
        "--store",
        action="store_true",
        help="send the DICOM SEG and SR back to the server (STOW-RS); without it nothing is written there",
    )
    web.add_argument("--dicomweb_timeout", type=float, default=60.0, help="seconds to wait for each server answer")
    args = p.parse_args(argv)
    if args.dicomweb:
        from bundle.pacs import check_uid

        if args.input:
            p.error("pass either input paths or --dicomweb with --study, not both")
        if not args.study:
            p.error("--dicomweb needs --study <StudyInstanceUID>")
        try:
            check_uid(args.study, "--study")
            if args.series:
                check_uid(args.series, "--series")
        except ValueError as e:
            p.error(str(e))
        if not args.dicomweb.startswith(("http://", "https://")):
            p.error(f"--dicomweb must be an http:// or https:// URL, got {args.dicomweb!r}")
        if not args.dicom_outputs and args.store:
            p.error("--store sends the DICOM outputs: it cannot go with --dicom_outputs false")
    elif args.study or args.series or args.store:
        p.error("--study, --series and --store go with --dicomweb")
    elif not args.input:
        p.error("give the input to assess (paths), or --dicomweb URL --study UID")
    if args.dicomweb_timeout <= 0:
        p.error(f"--dicomweb_timeout must be > 0, got {args.dicomweb_timeout}")
    if args.qa_spatial_size is not None and args.qa_spatial_size < 8:
        p.error(f"--qa_spatial_size must be >= 8, got {args.qa_spatial_size}")
    if args.la_threshold is not None and not 0 < args.la_threshold < 1:
        p.error(f"--la_threshold must be in (0, 1), got {args.la_threshold}")
    return args


def preflight(args: argparse.Namespace, output_dir: str, inputs: list[str]) -> int | None:
    """The checks that need no heavy library, before any is imported: output folder, weights, configs, inputs.

    Returns:
        an exit status when the run must stop here (the reason printed as one line), else None.
    """
    from bundle.outputs import REPORT_CSV, REPORT_JSON, OutputError, check_output_dir, check_readable, refusal_report

    try:
        check_output_dir(output_dir)
        check_readable(args.weights or os.path.join(ROOT, "models", "detector.pt"), "LA detector weights")
        if not args.la_only:
            check_readable(args.qa_weights or os.path.join(ROOT, "models", "qa.pt"), "QA network weights")
        for c in args.config:
            check_readable(c, "config overlay")
    except OutputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    reports = [f for f in (REPORT_CSV, REPORT_JSON) if os.path.exists(os.path.join(output_dir, f))]
    if reports and not (args.overwrite or args.resume):
        print(
            f"ERROR output: {output_dir} already holds {', '.join(reports)}; pass --overwrite to replace them, "
            "--resume to continue an interrupted run, or choose another --output_dir",
            file=sys.stderr,
        )
        return 2
    missing = [i for i in inputs if not os.path.exists(i)]
    if inputs and len(missing) == len(inputs):  # nothing to read: refuse now, with the refusals as the report
        path = refusal_report(output_dir, [(i, f"{i}: not found") for i in missing])
        print(
            f"ERROR input: nothing could be assessed ({missing[0]}: not found"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); see {path}",
            file=sys.stderr,
        )
        return 1
    return None


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the report is written and the run stops."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    from bundle.utils import quiet_third_party

    quiet_third_party()
    args = parse_args(argv)
    inputs = [os.path.abspath(os.path.expanduser(i)) for i in args.input]
    output_dir = os.path.abspath(os.path.expanduser(args.output_dir)) if args.output_dir else None
    if args.dicomweb and not output_dir:  # the retrieved study needs a home before the workflow names one
        import time

        output_dir = os.path.join(ROOT, "runs", time.strftime("inference_%Y%m%d_%H%M%S"))
    status = preflight(args, output_dir or os.path.join(ROOT, "runs"), inputs)
    if status is not None:
        return status
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.dicomweb:
        try:
            inputs = [_retrieve(args, output_dir)]
        except KeyboardInterrupt:
            print("interrupted while retrieving the study; nothing assessed", file=sys.stderr)
            return 130
        if inputs == [None]:
            return 1
    workflow = None
    try:
        from monai.bundle import ConfigWorkflow

        overrides = {
            "bundle_root": ROOT,
            "input": inputs if len(inputs) > 1 else inputs[0],
            "overwrite": bool(args.overwrite),
            "resume": args.resume,
            "run_qa": not args.la_only,
            "write_html": not args.no_html,
            "dicom_outputs": bool(args.dicom_outputs),
            "low_memory": args.low_memory,
        }
        if output_dir:
            overrides["output_dir"] = output_dir
        if args.dicomweb:
            overrides["report_settings#dicomweb"] = {
                "url": args.dicomweb,
                "study": args.study,
                "series": args.series,
                "store": args.store,
            }
        if args.weights:
            overrides["ckpt_path"] = os.path.abspath(args.weights)
        if args.qa_weights:
            overrides["qa_ckpt"] = os.path.abspath(args.qa_weights)
        if args.qa_spatial_size:
            overrides["qa_spatial_size"] = args.qa_spatial_size
        if args.la_threshold is not None:
            overrides["la_threshold"] = args.la_threshold
        if args.device:
            overrides["device"] = f"$torch.device('{args.device}')"
        configs = [
            os.path.join(ROOT, "configs", "common.yaml"),
            os.path.join(ROOT, "configs", "inference.yaml"),
            *[os.path.abspath(c) for c in args.config],
        ]
        workflow = ConfigWorkflow(
            config_file=configs,
            meta_file=os.path.join(ROOT, "configs", "metadata.json"),
            logging_file=os.path.join(ROOT, "configs", "logging.conf"),
            workflow_type="infer",
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        return _store(args, workflow) if args.store else 0
    except KeyboardInterrupt:
        return _interrupted(workflow)
    except Exception as e:
        from bundle.errors import error_line, exit_status, find_error

        if find_error(e) is not None:  # the library's one-line refusals (ERROR weights/output/input: ...)
            print(error_line(e), file=sys.stderr)
            return exit_status(e)
        from bundle.inference.workflow import describe_error  # anything else: one line, the traceback in the folder

        print(f"ERROR: {describe_error(e)}{_save_traceback(workflow)}", file=sys.stderr)
        return 2
    finally:
        from bundle.outputs import release_output_dir

        release_output_dir()


def _retrieve(args: argparse.Namespace, output_dir: str) -> str | None:
    """The study (or series) from the DICOMweb server, saved under ``<output_dir>/retrieved/``; None (the reason
    printed and written as the report) when it cannot be retrieved."""
    from bundle.outputs import refusal_report
    from bundle.pacs import DicomWebError, retrieve

    folder = os.path.join(output_dir, "retrieved", args.study)
    try:
        files = retrieve(args.dicomweb, args.study, folder, args.series, timeout=args.dicomweb_timeout)
    except (DicomWebError, OSError) as e:
        what = f"{args.dicomweb} study {args.study}" + (f" series {args.series}" if args.series else "")
        path = refusal_report(
            output_dir,
            [(what, str(e))],
            {"dicomweb": {"url": args.dicomweb, "study": args.study, "series": args.series}},
        )
        print(f"ERROR dicomweb: {e}; see {path}", file=sys.stderr)
        return None
    print(f"retrieved {len(files)} instance(s) of study {args.study} from {args.dicomweb} into {folder}")
    return folder


def _store(args: argparse.Namespace, workflow) -> int:
    """Send the run's DICOM SEG and SR files to the server; 3 (one line) when the server cannot take them."""
    from bundle.outputs import report_outputs
    from bundle.pacs import DicomWebError, store

    report = _report(workflow)
    files = report_outputs(report.output_dir, ("seg", "sr"))
    if not files:
        print(f"nothing to store on {args.dicomweb}: no DICOM output was written", file=sys.stderr)
        return 3
    try:
        stored = store(args.dicomweb, files, args.study, timeout=args.dicomweb_timeout)
    except (DicomWebError, OSError) as e:
        print(f"ERROR store: {e}; the local outputs in {report.output_dir} are complete", file=sys.stderr)
        return 3
    print(f"stored {len(stored)} instance(s) (SEG and SR) in study {args.study} on {args.dicomweb}")
    return 0


def _report(workflow):
    """The run's ReportWriter, if the evaluator was built (else None)."""
    if workflow is None:
        return None
    return workflow.parser.ref_resolver.resolved_content.get("report")


def _interrupted(workflow) -> int:
    report = _report(workflow)
    if report is None:
        print("interrupted before any scan was assessed; nothing written", file=sys.stderr)
        return 130
    report.interrupted = True
    try:
        csv_path, _ = report.write()
    except Exception as e:  # noqa: BLE001 - interrupted while writing: the previous report is still whole
        print(
            f"interrupted; the report could not be rewritten ({type(e).__name__}); the last complete one stays",
            file=sys.stderr,
        )
        return 130
    print(
        f"interrupted: {report.n_assessed} of {len(report.discovery.volumes)} scan(s) assessed, kept in {csv_path};"
        f" continue with the same command and --resume",
        file=sys.stderr,
    )
    return 130


def _save_traceback(workflow) -> str:
    import traceback

    report = _report(workflow)
    folder = getattr(report, "output_dir", None)
    if not folder or not os.path.isdir(folder):
        return ""
    path = os.path.join(folder, "assess_error.log")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
    except OSError:
        return ""
    return f" (traceback in {path})"


if __name__ == "__main__":
    sys.exit(main())
