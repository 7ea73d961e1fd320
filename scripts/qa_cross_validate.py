"""Cross-validate the QA strategies on the stage-1 folds (Table 2): out-of-fold scan verdicts, calibration, MLflow.

Writes ``<output_dir>/table2.md`` / ``table2.csv`` (per strategy and label: precision, recall, F1, specificity,
balanced accuracy, AUROC, ECE; mean ± std over folds x seeds and pooled), ``oof_predictions.csv``, ``roc.png``,
``reliability.png`` and one MLflow parent run with a child per strategy, fold and seed. Rerun the same command to
resume: finished folds are skipped. ``--folds_from`` reuses a stage-1 cross-validation's ``folds.json``;
``--export models/qa.pt`` writes the LA-region fold ensemble (every seed of every fold) with its plan (what the
bundle ships).

    python scripts/qa_cross_validate.py --dataset_dir ../shared/data/la2018 --output_dir runs/cv_qa \\
        --strategies reference,region,artifact --seeds 0,1,2
    python scripts/qa_cross_validate.py --dataset_dir ../shared/data/la2018 --output_dir runs/cv_qa \\
        --export models/qa.pt --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.datalist import DatalistError  # noqa: E402
from bundle.errors import entry_point  # noqa: E402
from bundle.evaluation.qa_crossval import DEFAULT_RECIPE, export_qa_ensemble, qa_cross_validate  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True, help="the cross-validation's folder (the same one resumes)")
    p.add_argument("--dataset_dir", default=None, help="folder the datalist paths are relative to")
    p.add_argument("--datalist", default=None, help="datalist JSON (default <dataset_dir>/dataset.json)")
    p.add_argument(
        "--strategies",
        default="reference,region",
        help="comma-separated: reference, region, artifact (LA region); baseline, multitask, contrastive (whole slice)",
    )
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="comma-separated training seeds (default 0,1,2: the shipped model averages three seeds per fold)",
    )
    p.add_argument("--folds", type=int, default=5, help="K (default 5)")
    p.add_argument("--run_folds", default=None, help="comma-separated folds to run now (default all)")
    p.add_argument("--n_val", type=int, default=4, help="fewest validation patients per fold (default 4)")
    p.add_argument("--folds_from", default=None, help="a stage-1 cross-validation's folds.json to reuse")
    p.add_argument(
        "--mask_dir",
        default=None,
        help="predicted LA masks to cut the LA region around (default: labels; the whole-slice strategies' LA slices "
        "come from the recipe's workflow qa_slices)",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help=f"JSON object (or a JSON file) overriding the recipe {json.dumps(DEFAULT_RECIPE)}",
    )
    p.add_argument("--tracking_uri", default=None, help="MLflow store (default sqlite <output_dir>/mlruns.db)")
    p.add_argument("--export", metavar="CKPT", default=None, help="write the region fold ensemble to CKPT")
    p.add_argument("--export_strategy", default="region", help="strategy exported (region or artifact)")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace an existing checkpoint")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    command = "python scripts/qa_cross_validate.py " + " ".join(shlex.quote(a) for a in argv)
    try:
        recipe = None
        if args.recipe and os.path.isfile(args.recipe):
            with open(args.recipe, encoding="utf-8") as f:
                recipe = json.load(f)
        elif args.recipe:
            recipe = json.loads(args.recipe)
    except ValueError as e:
        print(f"ERROR recipe: --recipe is not JSON ({e})", file=sys.stderr)
        return 2
    try:
        res = qa_cross_validate(
            args.output_dir,
            args.dataset_dir,
            args.datalist,
            strategies=[s for s in args.strategies.split(",") if s],
            seeds=[int(s) for s in args.seeds.split(",")],
            folds=args.folds,
            n_val=args.n_val,
            run_folds=[int(k) for k in args.run_folds.split(",")] if args.run_folds else None,
            recipe=recipe,
            mask_dir=args.mask_dir,
            tracking_uri=args.tracking_uri,
            folds_from=args.folds_from,
            command=command,
        )
    except (DatalistError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(f"Table 2: {res['files']['md']}")
    if args.export:
        try:
            export_qa_ensemble(
                args.output_dir, args.export, args.export_strategy, overwrite=args.overwrite, command=command
            )
        except (FileExistsError, ValueError) as e:
            print(f"ERROR export: {e}", file=sys.stderr)
            return 2
        print(f"QA ensemble: {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
