"""Choose the inference's `qa_threshold` and `refer_uncertainty` on the VALIDATION split of a QA training run.

    python scripts/tune_inference.py --split_file <run>/split.json --qa_ckpt <qa.pt> [--ckpt_path models/model.pt] \
        [--qa_spatial_size 64] [--output_dir runs/tune_<time>] [--config overlay.yaml ...]

Every validation scan (the `quality` list of the split's validation patients) goes through the real two-stage
inference of configs/inference.yaml (detector, LA slices at `la_threshold`, QA network under the flips); the per-slice
probabilities are kept and the scan verdict (`bundle.inference.qa_verdict`: mode over slices) is recomputed for each
candidate setting, against the fibrosis-quality label (score >= 3: diagnostic).

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

from bundle.errors import entry_point  # noqa: E402

DEFAULTS = {"qa_threshold": 0.5, "refer_uncertainty": 0.05}
THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 19)]  # 0.10 .. 0.90
REFER = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 1.0]


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


def balanced_accuracy(y, v) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, v)) if len(set(y)) > 1 else float("nan")


def collect(args: argparse.Namespace) -> list[dict]:
    """Run both stages on every validation scan; one dict per scan with its label and TTA probabilities."""
    import torch
    from monai.bundle import ConfigParser

    from bundle.inference import ScanResult, load_weights

    split = json.load(open(args.split_file))
    datalist = args.datalist or split.get("datalist")
    dataset_dir = args.dataset_dir or split.get("dataset_dir") or os.path.dirname(datalist)
    data = json.load(open(datalist))
    score_t = float(data.get("score_threshold_diagnostic", 3))
    val = set(split["val"])
    entries = [e for e in data.get("quality", []) if e["patient"] in val]
    if not entries:
        raise SystemExit(f"ERROR tune: no `quality` entry of the validation patients {sorted(val)} in {datalist}")
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "inference.yaml")] + args.config)
    parser.update(
        {
            "bundle_root": ROOT,
            "qa_ckpt": os.path.abspath(args.qa_ckpt),
            "device": f"$torch.device('{args.device}')",
            "ckpt_path": os.path.abspath(args.ckpt_path),
        }
    )
    if args.qa_spatial_size:
        parser["qa_spatial_size"] = args.qa_spatial_size
    network = load_weights(parser.get_parsed_content("network"), parser.get_parsed_content("ckpt_path"), "detector")
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    step = parser.get_parsed_content("assess_step")
    scans = []
    for e in entries:
        path = os.path.join(dataset_dir, e["image"])
        volume = preprocessing({"image": path})["image"]
        result = ScanResult(input=path)
        with torch.no_grad():
            step.assess_volume(volume, network, inferer, result)
        row = {
            "image": e["image"],
            "patient": e["patient"],
            "label": int(e["fibrosis"] >= score_t),
            "status": result.status,
            "n_la_slices": result.n_la_slices,
            "probs": result.visuals.get("tta_probs"),
        }
        print(
            f"{e['image']}: {result.status}, {result.n_la_slices} LA slices, p_fibrosis={result.p_fibrosis}, "
            f"label={row['label']}",
            flush=True,
        )
        scans.append(row)
    return scans


def tune(scans: list[dict], max_refer: float, min_scans: int) -> dict:
    """Sweep the two settings on the assessed scans; returns the tables and the recommendation."""
    from bundle.inference import qa_verdict

    ok = [s for s in scans if s["probs"] is not None]
    y = [s["label"] for s in ok]
    rows_t = []
    for t in THRESHOLDS:
        v = [qa_verdict(s["probs"], t, DEFAULTS["refer_uncertainty"])["diagnostic"] for s in ok]
        acc = sum(int(a == b) for a, b in zip(v, y)) / max(len(y), 1)
        rows_t.append(
            {
                "qa_threshold": t,
                "balanced_accuracy": balanced_accuracy(y, v),
                "accuracy": acc,
                "n_diagnostic": int(sum(v)),
            }
        )
    scored = [r for r in rows_t if r["balanced_accuracy"] == r["balanced_accuracy"]]  # not NaN
    best_t = DEFAULTS["qa_threshold"]
    if scored:
        best = max(r["balanced_accuracy"] for r in scored)
        best_t = min((r["qa_threshold"] for r in scored if r["balanced_accuracy"] == best), key=lambda t: abs(t - 0.5))
    rows_r = []
    for u in REFER:
        verdicts = [qa_verdict(s["probs"], best_t, u) for s in ok]
        kept = [(v["diagnostic"], lab) for v, lab in zip(verdicts, y) if not v["refer"]]
        rows_r.append(
            {
                "refer_uncertainty": u,
                "referred": len(ok) - len(kept),
                "refer_rate": (len(ok) - len(kept)) / max(len(ok), 1),
                "accuracy_kept": sum(int(a == b) for a, b in kept) / len(kept) if kept else float("nan"),
            }
        )
    allowed = [r for r in rows_r if r["refer_rate"] <= max_refer and r["accuracy_kept"] == r["accuracy_kept"]]
    best_u = DEFAULTS["refer_uncertainty"]
    if allowed:
        top = max(r["accuracy_kept"] for r in allowed)
        best_u = max(r["refer_uncertainty"] for r in allowed if r["accuracy_kept"] == top)
    reasons = []
    if len(ok) < min_scans:
        reasons.append(f"only {len(ok)} assessed validation scans (< {min_scans})")
    if len(set(y)) < 2:
        reasons.append("a single class among the validation labels")
    tuned = {"qa_threshold": best_t, "refer_uncertainty": best_u}
    return {
        "n_scans": len(scans),
        "n_assessed": len(ok),
        "n_diagnostic": int(sum(y)),
        "tuned": tuned,
        "recommended": DEFAULTS if reasons else tuned,
        "kept_defaults_because": reasons,
        "thresholds": rows_t,
        "refer": rows_r,
    }


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
            raise SystemExit(f"ERROR output: {out} already holds {name}; choose another --output_dir")
    scans = collect(args)
    res = tune(scans, args.max_refer, args.min_scans)
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
