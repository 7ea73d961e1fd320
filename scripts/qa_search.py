"""Search the LA-region QA recipe with Optuna on the validation parts of the QA cross-validation's folds.

Every trial is a one-seed QA cross-validation of a recipe from ``bundle.evaluation.qa_search.SEARCH_SPACE`` (its own
MLflow parent run in ``<output_dir>/mlruns.db``); the objective pools the folds' *validation* predictions only, so
the held-out patients stay unseen. Writes ``search.json``, ``best_recipe.json`` and ``trials.csv``; rerun the same
command to resume (complete trials are kept, an interrupted one resumes from its finished folds). Then
cross-validate the best recipe with several seeds for its out-of-fold figures:

    python scripts/qa_search.py --dataset_dir ../shared/data/la2018 --output_dir runs/qa_search \\
        --folds_from runs/cv_qa/folds.json --n_trials 10
    python scripts/qa_cross_validate.py --dataset_dir ../shared/data/la2018 --output_dir runs/cv_qa_searched \\
        --folds_from runs/cv_qa/folds.json --strategies region --seeds 0,1,2 \\
        --recipe runs/qa_search/best_recipe.json
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
from bundle.evaluation.qa_search import OBJECTIVES, qa_search  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True, help="the search's folder (the same one resumes)")
    p.add_argument("--dataset_dir", default=None, help="folder the datalist paths are relative to")
    p.add_argument("--datalist", default=None, help="datalist JSON (default <dataset_dir>/dataset.json)")
    p.add_argument("--folds_from", default=None, help="a cross-validation's folds.json to reuse")
    p.add_argument("--n_trials", type=int, default=12, help="complete trials wanted (default 12)")
    p.add_argument("--strategy", default="region", help="region or artifact")
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    p.add_argument("--objective", default="mean", choices=OBJECTIVES, help="mean over the labels, or fibrosis")
    p.add_argument("--recipe", default=None, help="JSON recipe overrides every trial starts from")
    p.add_argument("--space", default=None, help="JSON search space replacing SEARCH_SPACE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    command = "python scripts/qa_search.py " + " ".join(shlex.quote(a) for a in argv)
    try:
        recipe = json.loads(args.recipe) if args.recipe else None
        space = json.loads(args.space) if args.space else None
    except ValueError as e:
        print(f"ERROR: --recipe / --space is not JSON ({e})", file=sys.stderr)
        return 2
    try:
        res = qa_search(
            args.output_dir,
            args.dataset_dir,
            args.datalist,
            n_trials=args.n_trials,
            strategy=args.strategy,
            seed=args.seed,
            objective=args.objective,
            base_recipe=recipe,
            space=space,
            folds_from=args.folds_from,
            command=command,
        )
    except (DatalistError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    best = res["best"]
    print(f"best trial {best['number']}: validation objective {best['value']:.4f}, recipe {json.dumps(best['recipe'])}")
    print(f"trials: {os.path.join(args.output_dir, 'trials.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
