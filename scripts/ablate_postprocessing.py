"""Stage 1's decisions ablated on a finished cross-validation: threshold, minimum LA area, largest component.

Each fold model predicts its held-out (``--part test``) or validation (``--part val``) volumes once; every setting of
the grid is then applied to the same logits with the bundle's own rule (``bundle.inference.detect_la_volume``) and
scored in the scan's grid (``bundle.metrics.mask_metrics``). Prints one row per setting: mean 3D Dice, HD95 and
slice F1 over the volumes. Trains nothing.

    python scripts/ablate_postprocessing.py --cv_dir runs/cv_detector --dataset_dir ../shared/data/la2018
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.data.prepare import resolve_datalist
    from bundle.evaluation.crossval import load_folds
    from bundle.inference import detect_la_volume, load_detector, load_volume, plan_inferer
    from bundle.io.loader import LoadVolume
    from bundle.metrics import mask_metrics
    from bundle.transforms.slicing import _spacings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cv_dir", required=True)
    p.add_argument("--dataset_dir", default=None)
    p.add_argument("--datalist", default=None)
    p.add_argument("--part", default="test", choices=["test", "val"])
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6")
    p.add_argument("--areas", default="0,20", help="minimum LA areas (mm^2)")
    args = p.parse_args(argv)
    path, root = resolve_datalist(args.dataset_dir, args.datalist, os.path.join(args.cv_dir, "demo"))
    entries = load_datalist(path, root, LIST_KEYS)["segmentation"]
    grid = list(itertools.product([float(t) for t in args.thresholds.split(",")],
                                  [float(a) for a in args.areas.split(",")], (True, False)))  # fmt: skip
    scores: dict[tuple, list] = {g: [] for g in grid}
    read_label = LoadVolume(ensure_channel_first=True, image_only=True)
    for k, fold in enumerate(load_folds(os.path.join(args.cv_dir, "folds.json"))):
        network, plan = load_detector(os.path.join(args.cv_dir, f"fold{k}", "model.pt"))
        inferer = plan_inferer(plan)
        for e in (e for e in entries if e["patient"] in set(fold[args.part])):
            volume, label = load_volume(e["image"]), read_label(e["label"]).as_tensor()
            with torch.no_grad():
                s1 = inferer.predict_slices(volume, network)
            logits = inferer.to_volume(s1.logits, volume, s1.axis)
            for t, a, largest in grid:
                la = detect_la_volume(logits, volume, s1.axis, t, largest, a)
                m = mask_metrics(la["mask"], label, _spacings(volume), s1.axis, la["selected"])
                scores[(t, a, largest)].append((m["dice"], m["hd95_mm"], m["slice_f1"]))
    print(f"| t | min area (mm2) | largest component | 3D Dice | HD95 (mm) | slice F1 |  ({args.part}, {args.cv_dir})")
    for (t, a, largest), v in scores.items():
        d, h, f = np.nanmean(np.asarray(v, float), axis=0)
        print(f"| {t:g} | {a:g} | {'yes' if largest else 'no'} | {d:.3f} | {h:.2f} | {f:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
