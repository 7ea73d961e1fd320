"""Finished QA cross-validations side by side: validation scores (what a choice may rest on) and out-of-fold scores.

    python scripts/qa_compare_runs.py runs/cv_qa runs/cv_qa_scan_prior [--strategy region]
    python scripts/qa_compare_runs.py runs/cv_qa_012 --strategy artifact_ensemble --temperature_ranges 0.25:4,1:1

Each run is its seed ensemble per fold; per label, balanced accuracy at logit 0 / AUROC, on the folds' validation
patients pooled (``val``) and on the held-out patients pooled (``test``), and the search's validation objective
(``bundle.evaluation.qa_search.compare_runs``). With ``--temperature_ranges``: instead, for each range of the
calibration's temperature, the held-out ECE / log-loss / AUROC per label of each run's calibrated probabilities
(``bundle.evaluation.qa_crossval.calibration_sweep``; ``1:1`` is no calibration).
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
    p.add_argument("--temperature_ranges", default=None, help="e.g. 0.05:20,0.25:4,1:1 (lowest:highest temperature)")
    args = p.parse_args(argv)
    from bundle.data.datalist import SCORE_KEYS
    from bundle.evaluation.qa_search import compare_runs

    if args.temperature_ranges:
        try:
            ranges = [tuple(float(t) for t in r.split(":")) for r in args.temperature_ranges.split(",")]
        except ValueError:
            ranges = []
        if not ranges or any(len(r) != 2 or not 0 < r[0] <= 1 <= r[1] for r in ranges):
            p.error(
                f"--temperature_ranges: expected lowest:highest,... with 0 < lowest <= 1 <= highest, got "
                f"{args.temperature_ranges!r}"
            )
        return _sweep(args, ranges, SCORE_KEYS)
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


def _sweep(args: argparse.Namespace, ranges: list[tuple[float, ...]], labels: tuple[str, ...]) -> int:
    from bundle.evaluation.qa_crossval import calibration_sweep

    rows = {d: calibration_sweep(d, args.strategy, ranges) for d in args.cv_dirs}
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| run | temperature range | " + " | ".join(f"{k} ECE / log-loss / AUROC" for k in labels) + " |")
    print("|---" * (len(labels) + 2) + "|")
    for d, sweep in rows.items():
        for r in sweep:
            cells = [f"{r[f'{k}.ece']:.3f} / {r[f'{k}.log_loss']:.3f} / {r[f'{k}.auroc']:.3f}" for k in labels]
            lo, hi = r["t_range"]
            print(f"| {os.path.basename(d.rstrip('/'))} | [{lo:g}, {hi:g}] | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
