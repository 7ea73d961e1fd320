"""Stage 1's decisions ablated on a finished cross-validation: threshold, minimum LA area, largest component,
smoothing along the slices.

Each fold model predicts its held-out (``--part test``) or validation (``--part val``) volumes once; every setting of
the grid is then applied to the same logits with the bundle's own rule and scored in the scan's grid
(``bundle.evaluation.crossval.score_settings``, which also tunes the minimum area on validation folds). Prints one row
per setting: mean 3D Dice, HD95 and slice F1 over the volumes. Trains nothing.

    python scripts/ablate_postprocessing.py --cv_dir runs/cv_detector --dataset_dir ../shared/data/la2018

``--ensemble models/detector.pt`` takes the fold models from an exported ensemble instead (members k, k + K, ...
are fold k's models, tested on fold k's held-out patients; the folds are drawn again as the cross-validation drew
them), so the shipped detector's out-of-fold figures can be ablated without its cross-validation folder; ``--tta``
adds flips at test time (``bundle.networks.FlipTTA``: both in-plane axes).

    python scripts/ablate_postprocessing.py --ensemble models/detector.pt --dataset_dir ../shared/data/la2018 --tta
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bundle.errors import entry_point  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    from bundle.evaluation.crossval import add_fold_detector_arguments, fold_detectors_from_args, score_settings
    from bundle.inference import load_detector
    from bundle.networks import FlipTTA

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_fold_detector_arguments(p)
    p.add_argument(
        "--second_cv_dir",
        default=None,
        help="a second cross-validation on the same folds (e.g. trained on another slice axis): each fold's two "
        "models' probabilities are averaged before the rule",
    )
    p.add_argument("--tta", action="store_true", help="average the probabilities over in-plane flips")
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6")
    p.add_argument("--areas", default="0,20", help="minimum LA areas (mm^2)")
    p.add_argument("--z_sigmas", default="0", help="Gaussian smoothing of the probabilities along the slices (slices)")
    p.add_argument("--largest", default="yes,no", help="largest-component filter: yes, no or both")
    args = p.parse_args(argv)
    folds, entries, models = fold_detectors_from_args(p, args)
    run = sorted(models)
    settings = [
        {"la_threshold": t, "min_la_area_mm2": a, "keep_largest": largest, "z_sigma": z}
        for t, a, largest, z in itertools.product(
            [float(t) for t in args.thresholds.split(",")],
            [float(a) for a in args.areas.split(",")],
            [v.strip() == "yes" for v in args.largest.split(",")],
            [float(z) for z in args.z_sigmas.split(",")],
        )
    ]
    scores: list[list[dict]] = [[] for _ in settings]
    for k in run:
        network, plan = models[k]
        network = FlipTTA(network) if args.tta else network
        held = [e for e in entries if e["patient"] in set(folds[k][args.part])]
        others = [load_detector(os.path.join(args.second_cv_dir, f"fold{k}", "model.pt"))] if args.second_cv_dir else []
        for total, rows in zip(scores, score_settings(network, plan, held, settings, others=others)):
            total.extend(rows)
    source = args.cv_dir or args.ensemble
    print(
        f"| t | min area (mm2) | largest component | z sigma | 3D Dice | HD95 (mm) | slice F1 |  ({args.part}, {source}"
        f"{', flip TTA' if args.tta else ''}{f', averaged with {args.second_cv_dir}' if args.second_cv_dir else ''}, "
        f"folds {run})"
    )
    for s, rows in zip(settings, scores):
        d, h, f = np.nanmean(np.asarray([(m["dice"], m["hd95_mm"], m["slice_f1"]) for m in rows], float), axis=0)
        print(
            f"| {s['la_threshold']:g} | {s['min_la_area_mm2']:g} | {'yes' if s['keep_largest'] else 'no'} | "
            f"{s['z_sigma']:g} | "
            f"{d:.3f} | {h:.2f} | {f:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
