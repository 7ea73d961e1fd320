"""Stress the LA detector out of fold with contrasts la2018 lacks (dark blood pool and bright wall, gamma, noise).

Each fold's detector (a cross-validation's fold model, or an exported ensemble's members of that fold) predicts its
held-out volumes, each altered before inference's normalisation (``bundle.evaluation.stress``), with the detector's
own rule. Prints one row per contrast: mean and worst 3D Dice, HD95, slice F1, the scans referred at inference
(``implausible_la`` or ``no_left_atrium``) and the silent failures (Dice below ``--fail_dice`` and not referred:
reported ``ok``). Trains nothing.

    python scripts/stress_detector.py --ensemble models/detector.pt --dataset_dir ../shared/data/la2018
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bundle.errors import entry_point  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    from bundle.evaluation.crossval import add_fold_detector_arguments, fold_detectors_from_args, score_settings
    from bundle.evaluation.stress import CONTRASTS, alter_contrast

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_fold_detector_arguments(p)
    p.add_argument("--contrasts", default=",".join(CONTRASTS), help=f"comma-separated, of {', '.join(CONTRASTS)}")
    p.add_argument("--fail_dice", type=float, default=0.5, help="a Dice below this is a failure")
    args = p.parse_args(argv)
    contrasts = [c.strip() for c in args.contrasts.split(",") if c.strip()]
    unknown = sorted(set(contrasts) - set(CONTRASTS))
    if unknown:
        p.error(f"--contrasts: unknown {unknown}; one of {', '.join(CONTRASTS)}")
    folds, entries, models = fold_detectors_from_args(p, args)
    print(
        f"| contrast | 3D Dice (mean / worst) | HD95 (mm) | slice F1 | referred | silent failures (Dice < "
        f"{args.fail_dice:g}, reported ok) |  ({args.part}, {args.cv_dir or args.ensemble})"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in contrasts:
        rows = []
        for k, (network, plan) in models.items():
            held = [e for e in entries if e["patient"] in set(folds[k][args.part])]
            alter = None if name == "none" else functools.partial(alter_contrast, name, seed=k)
            rows.extend(score_settings(network, plan, held, [{}], alter=alter)[0])
        dice = np.asarray([r["dice"] for r in rows], float)
        # referred at inference: an implausible LA (its reasons) or none at all (status no_left_atrium)
        flagged = np.asarray([bool(r["reasons"]) or r["n_la_slices"] == 0 for r in rows])
        silent = int(((dice < args.fail_dice) & ~flagged).sum())
        print(
            f"| {name} | {np.nanmean(dice):.3f} / {np.nanmin(dice):.3f} | "
            f"{np.nanmean([r['hd95_mm'] for r in rows]):.2f} | {np.nanmean([r['slice_f1'] for r in rows]):.3f} | "
            f"{int(flagged.sum())} of {len(rows)} | {silent} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
