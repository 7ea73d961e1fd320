"""Choose the inference's `qa_threshold` and `refer_uncertainty` on the VALIDATION split of a QA training run.

    python scripts/tune_inference.py --split_file <run>/split.json --qa_ckpt <qa.pt> [--ckpt_path models/model.pt] \
        [--qa_spatial_size 64] [--output_dir runs/tune_<time>] [--config overlay.yaml ...]

Every validation scan (the `quality` list of the split's validation patients) goes through the real two-stage
inference of configs/inference.yaml (detector, LA slices, QA network under the flips); the per-slice probabilities are
kept and the scan verdict (`bundle.inference.qa_verdict`) is recomputed for each candidate setting, against the
fibrosis-quality label (`bundle.data.datalist.to_binary`). The logic is `bundle.evaluation.tuning`; this is its CLI.

- `qa_threshold`: the candidate with the highest balanced accuracy of the verdicts (ties: closest to 0.5).
- `refer_uncertainty`: at that threshold, the candidate with the highest accuracy of the scans it does not refer,
  referring at most `--max_refer` of them (ties: the larger value, fewer referrals).

With fewer than `--min_scans` validation scans, or only one class among them, there is nothing to tune: the script
says so and recommends the defaults (0.5, 0.05). The test split is never read. Writes `scans.csv`,
`thresholds.csv`, `refer.csv` and `tuning.json` in the output folder and prints the recommendation.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.errors import OutputError, entry_point  # noqa: E402
from bundle.evaluation.tuning import DEFAULTS, tune_verdict, tuning_scans  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split_file", required=True, help="split.json of the QA training run (train/val/test patients)")
    p.add_argument("--qa_ckpt", required=True, help="the QA network's checkpoint")
    p.add_argument("--ckpt_path", default=os.path.join(ROOT, "models", "model.pt"), help="the LA detector's")
    p.add_argument("--qa_spatial_size", type=int, default=None, help="slice size the QA network was trained at")
    p.add_argument("--datalist", default=None, help="datalist JSON (default: the split's)")
    p.add_argument("--dataset_dir", default=None, help="datalist paths are relative to it (default: the split's)")
    p.add_argument("--output_dir", default=None, help="default: runs/tune_inference_<time>")
    p.add_argument("--max_refer", type=float, default=0.25, help="largest share of scans the referral may take")
    p.add_argument("--min_scans", type=int, default=20, help="fewest validation scans worth tuning on")
    p.add_argument("--config", action="append", default=[], help="a further inference config overlay (repeatable)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.output_dir or os.path.join(ROOT, "runs", time.strftime("tune_inference_%Y%m%d_%H%M%S"))
    os.makedirs(out, exist_ok=True)
    for name in ("scans.csv", "thresholds.csv", "refer.csv", "tuning.json"):
        if os.path.exists(os.path.join(out, name)):
            raise OutputError(f"{out} already holds {name}; choose another --output_dir")
    scans = tuning_scans(
        args.split_file,
        args.qa_ckpt,
        args.ckpt_path,
        qa_spatial_size=args.qa_spatial_size,
        datalist=args.datalist,
        dataset_dir=args.dataset_dir,
        configs=args.config,
        device=args.device,
        bundle_root=ROOT,
    )
    res = tune_verdict(scans, args.max_refer, args.min_scans)
    import numpy as np

    write_csv(
        os.path.join(out, "scans.csv"),
        [
            {
                "image": s["image"],
                "patient": s["patient"],
                "label": s["label"],
                "status": s["status"],
                "n_la_slices": s["n_la_slices"],
                "p_fibrosis": "" if s["probs"] is None else round(float(np.mean(s["probs"][:, :, 3])), 4),
                "uncertainty": "" if s["probs"] is None else round(float(np.mean(s["probs"][:, :, 3], 1).std()), 4),
            }
            for s in scans
        ],
    )
    write_csv(os.path.join(out, "thresholds.csv"), res["thresholds"])
    write_csv(os.path.join(out, "refer.csv"), res["refer"])
    settings = {
        "split_file": os.path.abspath(args.split_file),
        "qa_ckpt": os.path.abspath(args.qa_ckpt),
        "ckpt_path": os.path.abspath(args.ckpt_path),
        "qa_spatial_size": args.qa_spatial_size,
        "max_refer": args.max_refer,
        "min_scans": args.min_scans,
        "command": " ".join(sys.argv),
    }
    json.dump({**settings, **res}, open(os.path.join(out, "tuning.json"), "w", encoding="utf-8"), indent=1)
    print(f"{res['n_assessed']} of {res['n_scans']} validation scans assessed ({res['n_diagnostic']} diagnostic)")
    for r in res["thresholds"]:
        print(
            f"  qa_threshold {r['qa_threshold']:.2f}: balanced accuracy {r['balanced_accuracy']:.3f}, "
            f"accuracy {r['accuracy']:.3f}, {r['n_diagnostic']} called diagnostic"
        )
    for r in res["refer"]:
        print(
            f"  refer_uncertainty {r['refer_uncertainty']}: {r['referred']} referred, accuracy of the rest "
            f"{r['accuracy_kept']:.3f}"
        )
    print(f"tuned on validation: {res['tuned']}")
    if res["kept_defaults_because"]:
        print(f"recommended: keep the defaults {DEFAULTS}: {'; '.join(res['kept_defaults_because'])}")
    else:
        print(f"recommended: {res['recommended']}")
    print(f"tables: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
