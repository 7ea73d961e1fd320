"""Choosing the inference's ``qa_threshold`` and ``refer_uncertainty`` on the validation patients of a QA training run.

Every validation scan (the ``quality`` list of the split's validation patients) goes through the real two-stage
inference of ``configs/inference.yaml`` (detector, LA slices, QA network under the flips); the per-slice probabilities
are kept and the scan verdict (:func:`bundle.inference.qa_verdict`) is recomputed for each candidate setting, against
the fibrosis-quality label binarised as everywhere (:func:`bundle.data.datalist.to_binary`). The test patients are
never read. ``scripts/tune_inference.py`` is the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from bundle.data.datalist import to_binary
from bundle.errors import DataError

__all__ = ["DEFAULTS", "REFER", "THRESHOLDS", "tuning_scans", "tune_verdict"]

DEFAULTS = {"qa_threshold": 0.5, "refer_uncertainty": 0.05}
THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 19)]  # 0.10 .. 0.90
REFER = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 1.0]


def _balanced_accuracy(y: Sequence[int], v: Sequence[int]) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, v)) if len(set(y)) > 1 else float("nan")


def tuning_scans(
    split_file: str,
    qa_ckpt: str,
    ckpt_path: str,
    qa_spatial_size: int | None = None,
    datalist: str | None = None,
    dataset_dir: str | None = None,
    configs: Sequence[str] = (),
    device: str = "cpu",
    bundle_root: str | None = None,
) -> list[dict]:
    """Run both stages on every validation scan of a split.

    Args:
        split_file: ``split.json`` of the QA training run (its ``val`` patients; ``datalist`` and ``dataset_dir``).
        qa_ckpt: the QA network's checkpoint.
        ckpt_path: the LA detector's checkpoint.
        qa_spatial_size: the slice size the QA network was trained at (None: the inference config's).
        datalist: the datalist (default: the split's).
        dataset_dir: the folder its paths are relative to (default: the split's, or the datalist's folder).
        configs: further inference config overlays.
        device: torch device name.
        bundle_root: the bundle (default: the one this package sits in).

    Returns:
        one dict per scan: ``image``, ``patient``, ``label`` (fibrosis quality, binary), ``status``,
        ``n_la_slices`` and ``probs`` (the per-flip, per-slice probabilities; None when not assessed).

    Raises:
        DataError: when no ``quality`` entry belongs to a validation patient.
    """
    import torch
    from monai.bundle import ConfigParser

    from bundle.evaluation.runs import bundle_configs, default_bundle_root
    from bundle.inference import ScanResult, load_weights

    root = bundle_root or default_bundle_root()
    split = json.load(open(split_file, encoding="utf-8"))
    datalist = datalist or split.get("datalist")
    dataset_dir = dataset_dir or split.get("dataset_dir") or os.path.dirname(datalist)
    data = json.load(open(datalist, encoding="utf-8"))
    score_t = float(data.get("score_threshold_diagnostic", 3))
    val = set(split["val"])
    entries = [e for e in data.get("quality", []) if e["patient"] in val]
    if not entries:
        raise DataError(f"{datalist}: no `quality` entry of the validation patients {sorted(val)} of {split_file}")
    parser = ConfigParser()
    parser.read_config(bundle_configs(root, ["inference.yaml"]) + list(configs))
    parser.update(
        {
            "bundle_root": root,
            "qa_ckpt": os.path.abspath(qa_ckpt),
            "device": f"$torch.device('{device}')",
            "ckpt_path": os.path.abspath(ckpt_path),
        }
    )
    if qa_spatial_size:
        parser["qa_spatial_size"] = qa_spatial_size
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
        scans.append(
            {
                "image": e["image"],
                "patient": e["patient"],
                "label": to_binary(e["fibrosis"], score_t),
                "status": result.status,
                "n_la_slices": result.n_la_slices,
                "probs": result.visuals.tta_probs,
            }
        )
        print(
            f"{e['image']}: {result.status}, {result.n_la_slices} LA slices, p_fibrosis={result.p_fibrosis}, "
            f"label={scans[-1]['label']}",
            flush=True,
        )
    return scans


def tune_verdict(scans: list[dict], max_refer: float = 0.25, min_scans: int = 20) -> dict:
    """Sweep the two settings on the assessed scans.

    - ``qa_threshold``: the candidate with the highest balanced accuracy of the verdicts (ties: closest to 0.5).
    - ``refer_uncertainty``: at that threshold, the candidate with the highest accuracy of the scans it does not
      refer, referring at most ``max_refer`` of them (ties: the larger value, fewer referrals).

    Args:
        scans: as :func:`tuning_scans` returns them (``label`` and ``probs`` used).
        max_refer: the largest share of scans the referral may take.
        min_scans: the fewest assessed scans worth tuning on; fewer, or a single class: the defaults are
            recommended.

    Returns:
        ``n_scans``, ``n_assessed``, ``n_diagnostic``, ``tuned``, ``recommended``, ``kept_defaults_because`` and the
        two tables ``thresholds`` and ``refer``.
    """
    from bundle.inference.stage2 import qa_verdict

    ok = [s for s in scans if s["probs"] is not None]
    y = [s["label"] for s in ok]
    rows_t = []
    for t in THRESHOLDS:
        v = [qa_verdict(s["probs"], t, DEFAULTS["refer_uncertainty"])["diagnostic"] for s in ok]
        acc = sum(int(a == b) for a, b in zip(v, y)) / max(len(y), 1)
        rows_t.append(
            {
                "qa_threshold": t,
                "balanced_accuracy": _balanced_accuracy(y, v),
                "accuracy": acc,
                "n_diagnostic": int(sum(v)),
            }
        )
    scored = [r for r in rows_t if not math.isnan(r["balanced_accuracy"])]
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
    allowed = [r for r in rows_r if r["refer_rate"] <= max_refer and not math.isnan(r["accuracy_kept"])]
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
        "recommended": dict(DEFAULTS) if reasons else tuned,
        "kept_defaults_because": reasons,
        "thresholds": rows_t,
        "refer": rows_r,
    }
