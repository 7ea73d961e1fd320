"""Time to accuracy of the LA detector: the old recipe (the paper's) and the new one, trained side by side.

Both train on the same fold (fold 0 of ``scripts/cross_validate.py``'s folds: its training and validation
patients) with the bundle's training workflow, one after the other in this process; every validation epoch's 3D
Dice (``val_volume_dice``, on the validation patients) is read back from MLflow with its time. Reported per recipe:
minutes to first reach each target Dice, the best Dice and the minutes per epoch; and the ratio of the minutes to
reach the highest target both reach (goal: the new recipe >= 3x sooner).

    python bench/time_to_accuracy.py [--folds_file runs/cv/folds.json] [--max_epochs 30] [--output report.json]

Old recipe: slices resized to 128 x 128, plain 2D, Dice loss, geometric augmentation only (docs/training.md before
0.6.0). New: the shipped recipe (1.25 mm pixels on a 128 px canvas, 96 px crops, 2.5D, Dice + CE, intensity
augmentation). Both: batch 32, Adam 1e-3, cosine, early stopping patience 8.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from common import ROOT, bench_datalist, write_report

OLD = {
    "pixel_mm": None,
    "context_slices": 0,
    "context_mm": None,
    "train_crop": None,
    "intensity_prob": 0.0,
    "lambda_ce": 0.0,
    "keep_largest": False,
    "min_la_area_mm2": 0.0,
}
NEW: dict = {}
TARGETS = (0.85, 0.88)


def train_curve(name: str, overrides: dict, datalist: str, split_file: str, workdir: str, max_epochs: int) -> dict:
    """Train one recipe; its validation curve as ``[(minutes since start, val_volume_dice), ...]``."""
    import mlflow

    from bundle.evaluation.runs import bundle_workflow, run_workflow

    out = os.path.join(workdir, name)
    uri = f"sqlite:///{out}/mlruns.db"
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    run_workflow(
        bundle_workflow(
            ROOT,
            ["train.yaml"],
            "train",
            datalist=datalist,
            split_file=split_file,
            output_dir=out,
            ckpt_dir=os.path.join(out, "models"),
            run_name=name,
            tracking_uri=uri,
            max_epochs=max_epochs,
            **overrides,
        )
    )
    total = (time.time() - t0) / 60
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])[0]
    hist = sorted(client.get_metric_history(run.info.run_id, "val_volume_dice"), key=lambda m: m.step)
    start = run.info.start_time
    curve = [((m.timestamp - start) / 60000, m.value) for m in hist]
    reach = {str(t): next((round(mins, 2) for mins, v in curve if v >= t), None) for t in TARGETS}
    return {
        "minutes_to": reach,
        "best_dice": max(v for _, v in curve),
        "epochs": len(curve),
        "minutes_total": round(total, 2),
        "minutes_per_epoch": round(total / max(1, len(curve)), 3),
        "curve": [(round(a, 2), round(b, 4)) for a, b in curve],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist", default=None, help="default: la2018 where present, else the demo set")
    p.add_argument("--folds_file", default=None, help="a cross-validation's folds.json (default: drawn as it does)")
    p.add_argument("--max_epochs", type=int, default=30)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="tta_bench_")
    datalist = bench_datalist(args.datalist, workdir)
    if args.folds_file:
        with open(args.folds_file) as f:
            fold = json.load(f)["folds"][0]
    else:
        from bundle.data.datalist import LIST_KEYS, load_datalist
        from bundle.data.split import cv_folds, patient_strata

        lists = load_datalist(datalist, os.path.dirname(datalist), LIST_KEYS)
        patients = {e["patient"] for v in lists.values() for e in v}
        fold = cv_folds(patients, patient_strata(lists.get("quality", [])), 5)[0]
    split_file = os.path.join(workdir, "fold0.json")
    with open(split_file, "w") as f:
        json.dump(fold, f)
    result = {"fold": 0, "train_patients": len(fold["train"]), "val_patients": len(fold["val"]), "targets": TARGETS}
    for name, ov in (("old", OLD), ("new", NEW)):
        result[name] = train_curve(name, ov, datalist, split_file, workdir, args.max_epochs)
    both = [t for t in TARGETS if result["old"]["minutes_to"][str(t)] and result["new"]["minutes_to"][str(t)]]
    if both:
        t = str(max(both))
        result["speedup_at"] = {t: round(result["old"]["minutes_to"][t] / result["new"]["minutes_to"][t], 2)}
    result["note"] = "a target never reached is null; then the old recipe's ratio is unbounded at that target"
    write_report(result, args.output)


if __name__ == "__main__":
    main()
