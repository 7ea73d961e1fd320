"""Assess the quality of LGE-MRI scans for fibrosis assessment: DICOM exports, NIfTI/NRRD files, folders, datalists.

    python scripts/assess.py <input> [<input> ...] --output_dir <dir>

Runs the bundle's inference workflow (configs/common.yaml + configs/inference.yaml) with the weights in models/.
Writes qa_report.csv, qa_report.json, and per scan <name>_la_mask.nii.gz and <name>_report.html. The exit status is
non-zero only when nothing could be assessed (or the weights or the output folder are not usable).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="+", help="DICOM folders, NIfTI/NRRD files, folders of those, or a datalist JSON")
    p.add_argument("--output_dir", default=None, help="where the reports go (default: <bundle>/runs/inference_<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in the output folder")
    p.add_argument("--weights", default=None, help="LA detector weights, its plan beside them (default: the shipped models/detector.pt)")
    p.add_argument("--qa_weights", default=None, help="QA network weights, its plan beside them (default: the shipped models/qa.pt)")
    p.add_argument("--qa_spatial_size", type=int, default=None,
                   help="slice size the QA network was trained at, for a checkpoint without a plan (default 128)")
    p.add_argument("--la_only", action="store_true", help="LA detection only, no quality assessment")
    p.add_argument("--la_threshold", type=float, default=None, help="LA slice threshold t (default: the bundle's)")
    p.add_argument("--no_html", action="store_true", help="no HTML page per scan")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--config", action="append", default=[], help="a further config overlay (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from monai.bundle import ConfigWorkflow

    overrides = {
        "bundle_root": ROOT,
        "input": [os.path.abspath(os.path.expanduser(i)) for i in args.input] if len(args.input) > 1
        else os.path.abspath(os.path.expanduser(args.input[0])),
        "overwrite": args.overwrite,
        "run_qa": not args.la_only,
        "write_html": not args.no_html,
    }  # fmt: skip
    if args.output_dir:
        overrides["output_dir"] = os.path.abspath(args.output_dir)
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
    configs = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml"),
               *[os.path.abspath(c) for c in args.config]]  # fmt: skip
    workflow = ConfigWorkflow(config_file=configs, meta_file=os.path.join(ROOT, "configs", "metadata.json"),
                              logging_file=os.path.join(ROOT, "configs", "logging.conf"), workflow_type="infer",
                              **overrides)  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
