"""What the experts' own attribute scores say about their fibrosis verdict, out of fold: a ceiling for QA models.

    python scripts/qa_label_ceiling.py --dataset_dir ../shared/data/la2018 --folds runs/cv_qa_012/folds.json

On the cross-validation's folds, the verdict is predicted from the three true attribute scores (the mean-score rule,
nothing fitted, and a class-balanced logistic regression fitted on each fold's training and validation scans);
balanced accuracy and AUROC per fold (mean ± std) and pooled (``bundle.evaluation.reference.attribute_ceiling``).
A network that predicted every attribute score exactly and reached its verdict through them would score this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.errors import entry_point  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", default=None, help="folder with dataset.json (or give --datalist)")
    p.add_argument("--datalist", default=None)
    p.add_argument("--folds", required=True, help="a cross-validation's folds.json")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.evaluation.crossval import load_folds
    from bundle.evaluation.reference import attribute_ceiling

    if not (args.dataset_dir or args.datalist):
        p.error("give --dataset_dir or --datalist")
    path = args.datalist or os.path.join(args.dataset_dir, "dataset.json")
    root = args.dataset_dir or os.path.dirname(os.path.abspath(path))
    entries = load_datalist(path, root, LIST_KEYS)["quality"]
    result = attribute_ceiling(entries, load_folds(args.folds))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("| verdict from the true attribute scores | balanced accuracy | AUROC |")
    print("|---|---|---|")
    for rule, r in result.items():
        ba = f"{r['balanced_accuracy']:.3f} ± {r['balanced_accuracy_std']:.3f} ({r['pooled_balanced_accuracy']:.3f})"
        auroc = f"{r['auroc']:.3f} ± {r['auroc_std']:.3f} ({r['pooled_auroc']:.3f})"
        print(f"| {rule} | {ba} | {auroc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
