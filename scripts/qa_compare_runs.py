"""Finished QA cross-validations side by side: validation scores (what a choice may rest on) and out-of-fold scores.

    python scripts/qa_compare_runs.py runs/cv_qa runs/cv_qa_scan_prior [--strategy region]

Each run is its seed ensemble per fold; per label, balanced accuracy at logit 0 / AUROC, on the folds' validation
patients pooled (``val``) and on the held-out patients pooled (``test``), and the search's validation objective
(``bundle.evaluation.qa_search.compare_runs``).
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
    p.add_argument("cv_dirs", nargs="+", help="finished QA cross-validation folders")
    p.add_argument("--strategy", default="region")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    from bundle.data.datalist import SCORE_KEYS
    from bundle.evaluation.qa_search import compare_runs

    rows = compare_runs(args.cv_dirs, args.strategy)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| run | recipe | part | " + " | ".join(SCORE_KEYS) + " | objective | min/fold |")
    print("|---" * (len(SCORE_KEYS) + 5) + "|")
    for r in rows:
        for part in ("val", "test"):
            cells = [f"{r[part][f'{k}.balanced_accuracy']:.3f} / {r[part][f'{k}.auroc']:.3f}" for k in SCORE_KEYS]
            recipe = json.dumps(r["recipe"]) if part == "val" else ""
            print(
                f"| {os.path.basename(r['dir'].rstrip('/')) if part == 'val' else ''} | {recipe} | {part} | "
                + " | ".join(cells)
                + f" | {r[part]['objective']:.3f} | {r['minutes']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
