"""Cross-validate the LA detector: K folds by patient, each an MLflow child run of one parent; resumable.

Writes ``<output_dir>/folds.json`` (the folds, reused by the QA cross-validation), ``fold<k>/`` (checkpoint, plan,
training run), ``oof_masks/`` (out-of-fold LA masks in each scan's grid), ``cv_results.csv`` (one row per volume and
per fold: Dice, HD95, ASD, slice precision/recall/F1, volume error) and ``cv_summary.json`` (mean ± std over folds,
pooled out-of-fold means). Rerun the same command to resume: finished folds are skipped.

Any other ``--name value`` is a config override of every fold's training (as with ``monai.bundle run``), e.g.

    python scripts/cross_validate.py --dataset_dir ../shared/data/la2018 --output_dir runs/cv_detector
    python scripts/cross_validate.py --dataset_dir ../shared/data/la2018 --output_dir runs/cv_quick --folds 3 \\
        --run_folds 0 --max_epochs 10

``--export models/detector.pt`` writes the folds' ensemble with its plan; ``--export_with runs/<other cv>`` adds the
fold models of another cross-validation on the same folds (the shipped detector: the recipe at 1.0 and 1.25 mm) and
scores the ensemble out of fold as shipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.datalist import DatalistError  # noqa: E402
from bundle.errors import entry_point  # noqa: E402
from bundle.evaluation.crossval import cross_validate, export_ensemble  # noqa: E402
from bundle.utils import parse_overrides  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True, help="the cross-validation's folder (the same one resumes)")
    p.add_argument("--dataset_dir", default=None, help="folder the datalist paths are relative to")
    p.add_argument("--datalist", default=None, help="datalist JSON (default <dataset_dir>/dataset.json)")
    p.add_argument("--folds", type=int, default=5, help="K (default 5)")
    p.add_argument("--run_folds", default=None, help="comma-separated folds to run now (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--n_val", type=int, default=4, help="fewest validation patients per fold (default 4)")
    p.add_argument("--tracking_uri", default=None, help="MLflow store (default sqlite <output_dir>/mlruns.db)")
    p.add_argument("--name", default="detector_cv", help="name of the MLflow parent run")
    p.add_argument("--train_only", action="store_true", help="train the folds, evaluate them in a later call")
    p.add_argument(
        "--export",
        metavar="CKPT",
        default=None,
        help="after the folds: write their ensemble to CKPT (with its plan), e.g. models/detector.pt",
    )
    p.add_argument(
        "--export_with",
        metavar="DIRS",
        default=None,
        help="with --export: comma-separated finished cross-validations on the same folds whose fold models join the "
        "ensemble (e.g. the recipe at another pixel size); the ensemble is then scored out of fold as shipped",
    )
    p.add_argument("--overwrite", action="store_true", help="with --export: replace an existing checkpoint")
    p.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args, rest = p.parse_known_args(argv)
    if args.export_with and not args.export:
        p.error("--export_with needs --export")
    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        raise SystemExit(f"ERROR: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    command = "python scripts/cross_validate.py " + " ".join(shlex.quote(a) for a in argv)
    run_folds = [int(k) for k in args.run_folds.split(",")] if args.run_folds else None
    try:
        res = cross_validate(
            args.output_dir,
            args.dataset_dir,
            args.datalist,
            folds=args.folds,
            seed=args.seed,
            n_val=args.n_val,
            run_folds=run_folds,
            overrides=overrides,
            bundle_root=args.bundle_root,
            tracking_uri=args.tracking_uri,
            name=args.name,
            command=command,
            train_only=args.train_only,
        )
    except DatalistError as e:
        print(f"ERROR data: {e}", file=sys.stderr)
        return 2
    print(f"cross-validation: {res['results_csv']}")
    if args.export:
        try:
            export_ensemble(
                args.output_dir,
                args.export,
                overwrite=args.overwrite,
                command=command,
                with_dirs=[d for d in (args.export_with or "").split(",") if d],
                dataset_dir=args.dataset_dir,
                datalist=args.datalist,
            )
        except (FileExistsError, ValueError) as e:
            print(f"ERROR export: {e}", file=sys.stderr)
            return 2
        print(f"ensemble: {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
