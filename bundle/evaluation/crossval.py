"""K-fold cross-validation of the LA detector by patient, every fold an MLflow child run, resumable.

Folds come from :func:`bundle.data.split.cv_folds` (stratified by the fibrosis label of the datalist's ``quality``
list, each fold's validation part drawn from its training patients) and are saved once as ``folds.json``; the QA
cross-validation reuses that file. Each fold trains with the bundle's own training workflow
(``configs/common.yaml`` + ``configs/train.yaml``, as ``monai.bundle run training``) and predicts its held-out
patients' volumes in their own grid exactly as inference does (:func:`bundle.inference.detector.segment_la`); the
out-of-fold masks are saved and scored (:func:`bundle.metrics.mask_metrics`). ``cv_results.csv`` holds one row per
volume and one per fold; ``cv_summary.json`` the mean ± std over folds and the pooled out-of-fold means. A fold whose
``fold_metrics.json`` exists is not trained or evaluated again; one with a finished checkpoint is only evaluated.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from bundle.networks.loading import read_state_dict

__all__ = [
    "CV_METRICS",
    "cross_validate",
    "add_fold_detector_arguments",
    "export_ensemble",
    "fold_detectors",
    "fold_detectors_from_args",
    "load_folds",
    "score_settings",
    "summarise_folds",
    "tune_min_area",
]

logger = logging.getLogger(__name__)

CV_METRICS = (
    "dice",
    "hd95_mm",
    "asd_mm",
    "slice_precision",
    "slice_recall",
    "slice_f1",
    "abs_volume_error_ml",
    "volume_error_ml",
    "implausible",
)
FOLDS_FILE = "folds.json"
MIN_AREA_GRID = (0.0, 10.0, 20.0, 40.0, 80.0, 120.0)  # mm^2, the slice rule's minimum LA area tried on validation


def load_folds(path: str) -> list[dict[str, list[str]]]:
    """The folds of a cross-validation (``<cv dir>/folds.json``): one ``{"train", "val", "test"}`` split per fold.

    Raises:
        DataError: for a missing or unreadable file, or one without a list of such splits.
    """
    from bundle.errors import DataError

    try:
        with open(path, encoding="utf-8") as f:
            folds = json.load(f).get("folds")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: cannot read a cross-validation's folds file ({type(e).__name__})") from None
    if not isinstance(folds, list) or not all(
        isinstance(k, dict) and {"train", "val", "test"} <= set(k) for k in folds
    ):
        raise DataError(f"{path}: 'folds' must be a list of {{'train', 'val', 'test'}} patient lists")
    return folds


def fold_detectors(
    cv_dir: str | None = None,
    ensemble: str | None = None,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    folds: int = 5,
    n_val: int = 4,
    run_folds: Sequence[int] | None = None,
) -> tuple[list[dict], list[dict], dict[int, tuple]]:
    """Each fold's detector, to score it on that fold's patients: a cross-validation's fold models, or an exported
    ensemble's members of each fold (:meth:`bundle.networks.Ensemble.subset`; its folds drawn again as the
    cross-validation drew them, seed 0).

    Args:
        cv_dir: a finished cross-validation (its ``folds.json`` and ``fold<k>/model.pt``).
        ensemble: an exported ensemble (e.g. ``models/detector.pt``) instead.
        dataset_dir: the data the folds were drawn from.
        datalist: its datalist.
        folds: with ``ensemble``: K.
        n_val: with ``ensemble``: validation patients per fold.
        run_folds: only these folds (e.g. ``[0]`` of a cross-validation trained on fold 0 only); None: all.

    Returns:
        ``(folds, segmentation entries, {k: (network, plan)})``.

    Raises:
        ConfigError: (a ValueError, one line) without exactly one of ``cv_dir`` and ``ensemble``, for an ensemble
            whose members do not split into the folds, or for a fold outside them.
    """
    import tempfile

    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.data.prepare import resolve_datalist
    from bundle.errors import ConfigError
    from bundle.inference.detector import load_detector

    if bool(cv_dir) == bool(ensemble):
        raise ConfigError("give one of cv_dir or ensemble")
    if ensemble:
        network, plan = load_detector(ensemble)
        with tempfile.TemporaryDirectory() as tmp:
            fold_list, path, root = _make_folds(tmp, datalist, dataset_dir, folds, 0, n_val, 0.15)
        if len(network.members) % len(fold_list):
            raise ConfigError(
                f"{ensemble} has {len(network.members)} members, not one or more per fold ({len(fold_list)})"
            )
    else:
        path, root = resolve_datalist(dataset_dir, datalist, os.path.join(cv_dir, "demo"))
        fold_list = load_folds(os.path.join(cv_dir, FOLDS_FILE))
    run = list(range(len(fold_list))) if run_folds is None else [int(k) for k in run_folds]
    if any(not 0 <= k < len(fold_list) for k in run):
        raise ConfigError(f"folds {run}: the folds are 0..{len(fold_list) - 1}")
    if ensemble:
        models = {k: (network.subset(k, len(fold_list)).eval(), plan) for k in run}
    else:
        models = {k: load_detector(os.path.join(cv_dir, f"fold{k}", "model.pt")) for k in run}
    return fold_list, load_datalist(path, root, LIST_KEYS)["segmentation"], models


def add_fold_detector_arguments(parser) -> None:
    """The command-line options of the scripts that score each fold's detector on that fold's patients
    (``scripts/ablate_postprocessing.py``, ``scripts/stress_detector.py``): see :func:`fold_detectors_from_args`."""
    parser.add_argument("--cv_dir", default=None, help="a finished cross-validation (its folds.json and fold models)")
    parser.add_argument("--ensemble", default=None, help="an exported fold ensemble (e.g. models/detector.pt) instead")
    parser.add_argument("--folds", type=int, default=5, help="with --ensemble: K, as the cross-validation drew them")
    parser.add_argument("--n_val", type=int, default=4, help="with --ensemble: validation patients per fold")
    parser.add_argument("--run_folds", default=None, help="comma-separated folds to score (default all), e.g. 0")
    parser.add_argument("--dataset_dir", default=None, help="folder the datalist paths are relative to")
    parser.add_argument("--datalist", default=None, help="datalist JSON (default <dataset_dir>/dataset.json)")
    parser.add_argument("--part", default="test", choices=["test", "val"], help="held-out or validation patients")


def fold_detectors_from_args(parser, args) -> tuple[list[dict], list[dict], dict[int, tuple]]:
    """:func:`fold_detectors` for the options of :func:`add_fold_detector_arguments`; a usage error (one line, exit 2)
    without exactly one of ``--cv_dir`` and ``--ensemble``."""
    if bool(args.cv_dir) == bool(args.ensemble):
        parser.error("give one of --cv_dir or --ensemble")
    run = [int(k) for k in args.run_folds.split(",")] if args.run_folds else None
    return fold_detectors(
        args.cv_dir, args.ensemble, args.dataset_dir, args.datalist, folds=args.folds, n_val=args.n_val, run_folds=run
    )


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


def summarise_folds(rows: list[dict], metrics: Sequence[str] = CV_METRICS) -> dict[str, dict[str, float]]:
    """Per metric: the mean and std over folds of the fold means, and the pooled mean over every out-of-fold volume.

    Args:
        rows: per-volume rows, each with ``fold`` and the metrics.

    Returns:
        ``{metric: {"fold_mean", "fold_std", "pooled_mean", "pooled_median", "n"}}``.
    """
    out = {}
    folds = sorted({r["fold"] for r in rows})
    for m in metrics:
        per_fold = [_nanmean([r[m] for r in rows if r["fold"] == k]) for k in folds]
        per_fold = [x for x in per_fold if not math.isnan(x)]
        pooled = [float(r[m]) for r in rows if r.get(m) is not None and not math.isnan(float(r[m]))]
        out[m] = {
            "fold_mean": float(np.mean(per_fold)) if per_fold else float("nan"),
            "fold_std": float(np.std(per_fold)) if per_fold else float("nan"),
            "pooled_mean": float(np.mean(pooled)) if pooled else float("nan"),
            "pooled_median": float(np.median(pooled)) if pooled else float("nan"),
            "n": len(pooled),
        }
    return out


def _make_folds(
    out: str, datalist: str | None, dataset_dir: str | None, folds: int, seed: int, n_val: int, val_fraction: float
) -> tuple[list[dict], str, str]:
    """Draw the folds (or read the saved ones, which must cover the same patients); returns them and the data."""
    from bundle.data.datalist import LIST_KEYS, DatalistError, load_datalist, validate_datalist
    from bundle.data.prepare import resolve_datalist
    from bundle.data.split import cv_folds, patient_strata, save_split

    path, root = resolve_datalist(dataset_dir, datalist, os.path.join(out, "demo"))
    lists = load_datalist(path, root, LIST_KEYS)
    validate_datalist(lists)
    patients = sorted({e["patient"] for v in lists.values() for e in v})
    saved = os.path.join(out, FOLDS_FILE)
    if os.path.isfile(saved):
        fold_list = load_folds(saved)
        held = sorted(p for f in fold_list for p in f["test"])
        if held != patients:
            raise DatalistError(f"{saved}: its folds hold out other patients than {path} has; use a new output_dir")
        logger.info(f"cross-validation: reusing the {len(fold_list)} folds of {saved}")
        return fold_list, path, root
    strata = patient_strata(lists.get("quality", [])) if lists.get("quality") else None
    fold_list = cv_folds(patients, strata, folds, n_val=n_val, val_fraction=val_fraction, seed=seed)
    save_split({"folds": fold_list, "seed": seed, "datalist": path, "strata": strata or {}}, saved)
    return fold_list, path, root


def score_settings(
    network,
    plan: dict,
    entries: list[dict],
    settings: Sequence[dict],
    keep_masks: bool = False,
    others: Sequence[tuple] = (),
    alter: Callable | None = None,
) -> list[list[dict]]:
    """Each volume predicted once, every stage-1 setting applied to the same logits and scored in the scan's grid.

    Args:
        network: the detector (eval mode).
        plan: its plan (preprocessing; the defaults of each setting).
        entries: datalist entries with ``image`` and ``label``.
        settings: per setting, any of ``la_threshold``, ``keep_largest``, ``min_la_area_mm2`` (others: the plan's),
            and ``z_sigma``: a Gaussian of that many slices applied to the probabilities along the slice axis before
            the rule (an ablation; 0 or absent: none, as the bundle infers).
        keep_masks: also return each LA mask (``mask``) and the volume's ``affine``.
        others: more ``(network, plan)`` pairs (e.g. a detector trained on another slice axis) whose probabilities,
            in the scan's grid, are averaged with the first's before the rule (an ablation); the slice axis of the
            rule stays the first plan's.
        alter: ``(raw image, label) -> raw image`` applied before inference's normalisation (a stress test's
            contrast change, :mod:`bundle.evaluation.stress`); None: the image as it is.

    Returns:
        per setting, per entry: :func:`bundle.metrics.mask_metrics` plus ``reasons`` and ``n_la_slices``.
    """
    import torch

    from bundle.inference.detector import load_volume, segment_la
    from bundle.inference.workflow import detect_la_volume
    from bundle.io.loader import LoadVolume
    from bundle.metrics.segmentation import mask_metrics
    from bundle.transforms.intensity import ScaleForegroundPercentiles
    from bundle.transforms.selection import LABounds
    from bundle.transforms.slicing import voxel_spacing

    read = LoadVolume(ensure_channel_first=True, image_only=True)
    bounds = LABounds(**(plan.get("la_bounds") or {}))
    out: list[list[dict]] = [[] for _ in settings]
    for e in entries:
        label = read(e["label"]).as_tensor()
        if alter is None:
            volume = load_volume(e["image"])
        else:
            volume = ScaleForegroundPercentiles()(alter(read(e["image"]), label))
        pred = segment_la(network, plan, volume)
        if others:
            probs = [_probs(segment_la(n, p, volume)["logits"]) for n, p in others]
            pred["logits"] = torch.logit((_probs(pred["logits"]) + sum(probs)) / (1 + len(probs)), eps=1e-6)
        # each smoothing once per volume, not once per setting that uses it
        smoothed = {z: _smooth_along(pred["logits"], pred["axis"], z) for z in {_z_sigma(s) for s in settings}}
        for row, setting in zip(out, settings):
            s = {k: setting.get(k, plan[k]) for k in ("la_threshold", "keep_largest", "min_la_area_mm2")}
            logits = smoothed[_z_sigma(setting)]
            la = detect_la_volume(
                logits, volume, pred["axis"], s["la_threshold"], s["keep_largest"], s["min_la_area_mm2"], bounds
            )
            m = mask_metrics(la["mask"], label, voxel_spacing(volume), pred["axis"], la["selected"])
            row.append(
                {
                    **m,
                    "reasons": la["reasons"],
                    "n_la_slices": len(la["selected"]),
                    **({"mask": la["mask"], "affine": volume.affine} if keep_masks else {}),
                }
            )
    return out


def _z_sigma(setting: dict) -> float:
    return float(setting.get("z_sigma", 0.0))


def _probs(logits):
    """The probabilities of a logit map (a MetaTensor or a tensor) as a plain float tensor (MONAI's conversion)."""
    import torch
    from monai.utils import convert_to_tensor

    return torch.sigmoid(convert_to_tensor(logits, track_meta=False).float())


def _smooth_along(logits, axis: int, sigma: float):
    """``logits`` ``(1, X, Y, Z)`` whose probabilities are smoothed by a Gaussian of ``sigma`` slices along the spatial
    ``axis`` (scipy), returned as logits; unchanged for ``sigma`` 0."""
    if sigma <= 0:
        return logits
    import torch
    from scipy.ndimage import gaussian_filter1d

    p = gaussian_filter1d(_probs(logits).cpu().numpy(), sigma, axis=axis + 1)
    return torch.logit(torch.from_numpy(p), eps=1e-6)


def tune_min_area(
    network, plan: dict, entries: list[dict], grid: Sequence[float] = MIN_AREA_GRID
) -> tuple[float, dict]:
    """The LA-slice rule's minimum area chosen on validation volumes: the grid value with the best mean slice F1.

    Ties go to the smaller area (the paper's rule is 0). Only the validation part of a fold is used.

    Returns:
        ``(min_la_area_mm2, {area: mean slice F1})``.
    """
    scores = score_settings(network, plan, entries, [{"min_la_area_mm2": float(a)} for a in grid])
    mean = {float(a): _nanmean([m["slice_f1"] for m in rows]) for a, rows in zip(grid, scores)}
    best = max(sorted(mean), key=lambda a: (mean[a], -a))
    return best, mean


def _evaluate_fold(
    ckpt: str, entries: list[dict], fold: int, mask_dir: str, dataset_dir: str, val_entries: list[dict] | None = None
) -> list[dict]:
    """Predict each held-out volume as inference does, save its mask, score it in its own grid.

    With ``val_entries`` the minimum LA area of the slice rule is first chosen on them (:func:`tune_min_area`) and
    written into the checkpoint's plan, so the plan says what was evaluated.
    """
    from bundle.inference.detector import load_detector
    from bundle.networks.plan import plan_path, write_plan

    network, plan = load_detector(ckpt)
    if not val_entries:
        return _score_fold(network, plan, entries, fold, mask_dir, dataset_dir)
    rows, best, mean = _tuned_fold_rows(network, plan, val_entries, entries, fold, mask_dir, dataset_dir)
    with open(plan_path(ckpt), encoding="utf-8") as f:
        body = json.load(f)
    body["postprocessing"]["min_la_area_mm2"] = best
    body["tuning"] = {
        "min_la_area_mm2": {
            "grid_slice_f1": {str(a): f for a, f in mean.items()},
            "validation_patients": sorted({e["patient"] for e in val_entries}),
        }
    }
    for k in ("plan_version", "checkpoint", "written"):
        body.pop(k, None)
    write_plan(ckpt, body)
    return rows


def _tuned_fold_rows(
    network, plan: dict, val_entries: list[dict], entries: list[dict], fold: int, mask_dir: str, dataset_dir: str
) -> tuple[list[dict], float, dict]:
    """A fold's detector scored as it ships: the minimum LA area chosen on the fold's validation volumes
    (:func:`tune_min_area`), then the held-out ``entries`` scored with it (:func:`_score_fold`).

    Returns:
        ``(rows, min_la_area_mm2, {area: mean validation slice F1})``.
    """
    best, mean = tune_min_area(network, plan, val_entries)
    logger.info(
        f"fold {fold}: min_la_area_mm2 {best:g} chosen on {len(val_entries)} validation volumes "
        f"(slice F1 {', '.join(f'{a:g}: {f:.3f}' for a, f in mean.items())})"
    )
    rows = _score_fold(network, {**plan, "min_la_area_mm2": best}, entries, fold, mask_dir, dataset_dir)
    return rows, best, mean


def _write_results(path: str, rows: list[dict], columns: Sequence[str]) -> str:
    """``rows`` as a CSV of ``columns`` (floats to 4 decimals); returns ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(dict.fromkeys(columns)), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _score_fold(network, plan: dict, entries: list[dict], fold: int, mask_dir: str, dataset_dir: str) -> list[dict]:
    """One row per held-out volume (:func:`bundle.metrics.mask_metrics`, the plan's rule), its mask saved."""
    from bundle.inference.report import write_mask

    rows = []
    os.makedirs(mask_dir, exist_ok=True)
    t0 = time.time()
    for e, m in zip(entries, score_settings(network, plan, entries, [{}], keep_masks=True)[0]):
        name = os.path.basename(e["image"]).split(".")[0]
        write_mask(os.path.join(mask_dir, f"{name}_la_mask.nii.gz"), m.pop("mask")[0], m.pop("affine").cpu().numpy())
        reasons = m.pop("reasons")
        rows.append(
            {
                "level": "volume",
                "fold": fold,
                "patient": e["patient"],
                "image": os.path.relpath(e["image"], dataset_dir),
                **m,
                "implausible": float(bool(reasons)),
                "reasons": "; ".join(reasons),
                "min_la_area_mm2": plan["min_la_area_mm2"],
            }
        )
        logger.info(
            f"fold {fold} {name}: dice {m['dice']:.3f} hd95 {m['hd95_mm']:.2f} mm slice F1 "
            f"{m['slice_f1']:.3f} volume error {m['volume_error_ml']:+.1f} ml"
        )
    for r in rows:
        r["seconds"] = (time.time() - t0) / max(1, len(rows))
    return rows


def cross_validate(
    output_dir: str,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    folds: int = 5,
    seed: int = 0,
    n_val: int = 4,
    val_fraction: float = 0.15,
    run_folds: Sequence[int] | None = None,
    overrides: dict | None = None,
    bundle_root: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str = "la_lge_qa",
    name: str = "detector_cv",
    command: str = "",
    train_only: bool = False,
    tune: bool = True,
) -> dict:
    """Cross-validate the LA detector: train and evaluate every fold, tabulate, log one MLflow parent run.

    Args:
        output_dir: the cross-validation's folder (reuse it to resume).
        dataset_dir: folder the datalist's paths are relative to (both None: the demo set).
        datalist: the datalist JSON.
        folds: K.
        seed: the folds' seed.
        n_val: fewest validation patients per fold.
        val_fraction: validation share of each fold's training patients.
        run_folds: only these folds (e.g. ``[0]`` for a quick ablation); None: all.
        overrides: config overrides of the training workflow (e.g. ``{"max_epochs": 10}``).
        bundle_root: the bundle root (the configs' folder's parent).
        tracking_uri: MLflow store; None: ``sqlite:///<output_dir>/mlruns.db``.
        experiment_name: MLflow experiment.
        name: the parent run's name prefix.
        command: the command line, logged with the parent run.
        train_only: train the folds but leave their evaluation to a later call.
        tune: choose the slice rule's minimum LA area on each fold's validation patients (else the config's).

    Returns:
        ``{"dir", "parent_run_id", "rows", "summary", "results_csv"}``.
    """
    from monai.utils import path_to_sqlite_uri

    from bundle.evaluation.runs import (
        bundle_workflow,
        default_bundle_root,
        mlflow_experiment,
        run_workflow,
        start_parent_run,
    )

    root = os.path.abspath(bundle_root or default_bundle_root())
    out = os.path.abspath(output_dir)
    os.makedirs(out, exist_ok=True)
    overrides = dict(overrides or {})
    fold_list, path, data_root = _make_folds(out, datalist, dataset_dir, folds, seed, n_val, val_fraction)
    tracking_uri = tracking_uri or path_to_sqlite_uri(os.path.join(out, "mlruns.db"))
    client, experiment_id = mlflow_experiment(tracking_uri, experiment_name)
    state_file = os.path.join(out, "cv_state.json")
    state = json.load(open(state_file, encoding="utf-8")) if os.path.isfile(state_file) else {}
    if not state.get("parent_run_id"):
        params = {"folds": len(fold_list), "seed": seed, "n_val": n_val, "datalist": path, "command": command}
        state["parent_run_id"] = start_parent_run(
            client,
            experiment_id,
            f"{name}_{time.strftime('%Y%m%d_%H%M%S')}",
            {"kind": "cross_validation"},
            params,
            overrides,
        )
        state["command"] = command
        with open(state_file, "w", encoding="utf-8") as f:
            json.dump(state, f)
    parent = state["parent_run_id"]
    logger.info(f"cross-validation {out}: {len(fold_list)} folds, MLflow parent run {parent}")
    from bundle.data.datalist import LIST_KEYS, load_datalist

    entries = load_datalist(path, data_root, LIST_KEYS)["segmentation"]
    todo = range(len(fold_list)) if run_folds is None else [int(k) for k in run_folds]
    status = "FAILED"
    try:
        for k in todo:
            fold_dir = os.path.join(out, f"fold{k}")
            done = os.path.join(fold_dir, "fold_metrics.json")
            if os.path.isfile(done):
                logger.info(f"--- fold {k}: finished already ({done})")
                continue
            os.makedirs(fold_dir, exist_ok=True)
            split_file = os.path.join(fold_dir, "split_in.json")
            with open(split_file, "w", encoding="utf-8") as f:
                json.dump(fold_list[k], f, indent=1)
            ckpt = os.path.join(fold_dir, "model.pt")
            trained = os.path.join(fold_dir, "trained.json")
            run_name = f"{name}_fold{k}"
            t0 = time.time()
            if not os.path.isfile(trained):
                logger.info(
                    f"--- fold {k}: training on {len(fold_list[k]['train'])} patients, validating on "
                    f"{len(fold_list[k]['val'])}"
                )
                wf = bundle_workflow(
                    root,
                    ["train.yaml"],
                    "train",
                    dataset_dir=data_root,
                    datalist=path,
                    split_file=split_file,
                    output_dir=out,
                    ckpt_dir=fold_dir,
                    ckpt_name="model.pt",
                    overwrite_checkpoint=True,
                    run_name=run_name,
                    run_dir=os.path.join(fold_dir, "run"),
                    tracking_uri=tracking_uri,
                    experiment_name=experiment_name,
                    parent_run_id=parent,
                    **overrides,
                )
                run_workflow(wf)
                del wf
                gc.collect()
                with open(trained, "w", encoding="utf-8") as f:
                    json.dump({"minutes": (time.time() - t0) / 60}, f)
            if train_only:
                continue
            minutes = json.load(open(trained, encoding="utf-8")).get("minutes", float("nan"))
            held = [e for e in entries if e["patient"] in set(fold_list[k]["test"])]
            val = [e for e in entries if e["patient"] in set(fold_list[k]["val"])] if tune else None
            rows = _evaluate_fold(ckpt, held, k, os.path.join(out, "oof_masks"), data_root, val)
            fold_row = {
                "level": "fold",
                "fold": k,
                "patient": "",
                "image": "",
                "train_minutes": minutes,
                **{m: _nanmean([r[m] for r in rows]) for m in CV_METRICS},
            }
            runs = client.search_runs([experiment_id], f"tags.mlflow.runName = '{run_name}'")
            for m in CV_METRICS:
                if runs and not math.isnan(fold_row[m]):
                    client.log_metric(runs[0].info.run_id, f"oof_{m}", fold_row[m])
            with open(done, "w", encoding="utf-8") as f:
                json.dump({"fold": fold_row, "volumes": rows}, f, indent=1, default=float)
        status = "FINISHED"
    finally:
        result = _tabulate(out, client, parent)
        client.set_terminated(parent, status if status == "FAILED" or result["complete"] else "FINISHED")
    return {"dir": out, "parent_run_id": parent, **result}


def _tabulate(out: str, client, parent: str) -> dict:
    """``cv_results.csv`` and ``cv_summary.json`` from the finished folds; logged to the parent run."""
    fold_rows, rows = [], []
    names = sorted((d for d in os.listdir(out) if d.startswith("fold") and d[4:].isdigit()), key=lambda d: int(d[4:]))
    for d in names:
        path = os.path.join(out, d, "fold_metrics.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                body = json.load(f)
            fold_rows.append(body["fold"])
            rows.extend(body["volumes"])
    n_folds = len(load_folds(os.path.join(out, FOLDS_FILE)))
    if not rows:
        return {"rows": [], "summary": {}, "results_csv": None, "complete": False}
    summary = summarise_folds(rows)
    minutes = [r["train_minutes"] for r in fold_rows if not math.isnan(float(r["train_minutes"]))]
    summary["train_minutes"] = {
        "fold_mean": float(np.mean(minutes)) if minutes else float("nan"),
        "fold_std": float(np.std(minutes)) if minutes else float("nan"),
    }
    csv_path = os.path.join(out, "cv_results.csv")
    columns = [
        "level",
        "fold",
        "patient",
        "image",
        *CV_METRICS,
        "volume_ml",
        "label_volume_ml",
        "n_la_slices",
        "min_la_area_mm2",
        "train_minutes",
        "seconds",
        "reasons",
    ]
    _write_results(csv_path, rows + fold_rows, columns)
    body = {"folds_done": len(fold_rows), "folds": n_folds, "volumes": len(rows), "summary": summary}
    with open(os.path.join(out, "cv_summary.json"), "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    for m, v in summary.items():
        for stat, x in v.items():
            if isinstance(x, float) and not math.isnan(x):
                client.log_metric(parent, f"{m}_{stat}", x)
    for p in (csv_path, os.path.join(out, "cv_summary.json"), os.path.join(out, FOLDS_FILE)):
        client.log_artifact(parent, p)
    line = ", ".join(
        f"{m} {summary[m]['fold_mean']:.3f}±{summary[m]['fold_std']:.3f}"
        for m in ("dice", "hd95_mm", "asd_mm", "slice_f1")
    )
    logger.info(f"cross-validation {len(fold_rows)}/{n_folds} folds, {len(rows)} volumes: {line}")
    return {"rows": rows, "summary": summary, "results_csv": csv_path, "complete": len(fold_rows) == n_folds}


def _group_member(plan: dict, base: dict, source: str) -> tuple[dict, float]:
    """A fold plan's network definition as a member of an ensemble run with ``base``'s preprocessing, and its scale.

    Raises:
        ValueError: when the two differ in anything but the pixel size (window in mm, 2.5D context, slice axis).
    """
    pre, ref = plan["preprocessing"], base["preprocessing"]
    same = ("context_slices", "context_mm", "slice_axis", "intensity")
    if pre.get("pixel_mm") is None or ref.get("pixel_mm") is None:
        if pre != ref:
            raise ValueError(f"{source}: slices resized (no pixel_mm) and a preprocessing other than the first's")
        return plan["network_def"], 1.0
    window, ref_window = pre["spatial_size"] * pre["pixel_mm"], ref["spatial_size"] * ref["pixel_mm"]
    if any(pre.get(k) != ref.get(k) for k in same) or abs(window - ref_window) > 1e-6:
        raise ValueError(
            f"{source}: its preprocessing differs from the first's in more than the pixel size (window "
            f"{window:g} against {ref_window:g} mm, or the context, slice axis or intensity); they cannot form one "
            "ensemble"
        )
    scale = float(ref["pixel_mm"]) / float(pre["pixel_mm"])
    if abs(scale - 1.0) < 1e-9:
        return plan["network_def"], 1.0
    return {"_target_": "bundle.networks.Rescaled", "network": plan["network_def"], "scale": scale}, scale


def export_ensemble(
    cv_dir: str,
    ckpt_path: str,
    overwrite: bool = False,
    half: bool = True,
    command: str = "",
    with_dirs: Sequence[str] = (),
    dataset_dir: str | None = None,
    datalist: str | None = None,
) -> str:
    """The K fold models of a finished cross-validation as one checkpoint (:class:`bundle.networks.Ensemble`).

    The members' weights go into one state dict (float16 with ``half``: they load into float32 networks); the plan
    beside it takes the folds' shared preprocessing, the median of their validation-chosen minimum LA areas, the
    cross-validated figures and the commands that produced them.

    With ``with_dirs``, other finished cross-validations on the same folds (e.g. the same recipe at another pixel
    size) join: their fold models run inside the first's inferer (:class:`bundle.networks.Rescaled` where their
    pixel size differs). The ensemble is then scored out of fold as it is shipped: fold ``k``'s models of every
    cross-validation (:meth:`bundle.networks.Ensemble.subset`) predict fold ``k``'s held-out patients, with the
    minimum LA area chosen on fold ``k``'s validation patients; the plan's figures and area come from that scoring,
    whose rows go to ``<cv_dir>/export_<name>/cv_results.csv`` (with ``cv_summary.json`` and the masks).

    Args:
        cv_dir: the cross-validation's folder (every fold evaluated); its preprocessing is the ensemble's.
        ckpt_path: the checkpoint to write (e.g. ``models/detector.pt``).
        overwrite: replace an existing checkpoint (otherwise refuse).
        half: store the weights as float16.
        command: the export command, recorded in the plan.
        with_dirs: more cross-validations whose fold models join.
        dataset_dir: with ``with_dirs``: the data the folds were drawn from (as for the cross-validation).
        datalist: with ``with_dirs``: its datalist.

    Returns:
        ``ckpt_path``.

    Raises:
        FileExistsError: when ``ckpt_path`` exists and ``overwrite`` is False.
        ValueError: when a fold is unfinished, the cross-validations' folds differ, or the folds' networks or
            preprocessing cannot form one ensemble.
    """
    from dataclasses import asdict

    import torch

    from bundle.networks.plan import plan_path, write_plan
    from bundle.transforms.selection import LABounds

    if os.path.exists(ckpt_path) and not overwrite:
        raise FileExistsError(f"{ckpt_path} exists: pass overwrite to replace it")
    dirs = [cv_dir, *with_dirs]
    folds = load_folds(os.path.join(cv_dir, FOLDS_FILE))
    n = len(folds)
    groups = []  # per cross-validation: its folds' plans and state dicts
    for d in dirs:
        if load_folds(os.path.join(d, FOLDS_FILE)) != folds:
            raise ValueError(f"{d}: its folds differ from {cv_dir}'s; only cross-validations on the same folds join")
        plans, states = [], []
        for k in range(n):
            fold = os.path.join(d, f"fold{k}")
            if not os.path.isfile(os.path.join(fold, "fold_metrics.json")):
                raise ValueError(f"{fold}: fold {k} is not finished; run the cross-validation to the end first")
            with open(plan_path(os.path.join(fold, "model.pt")), encoding="utf-8") as f:
                plans.append(json.load(f))
            states.append(read_state_dict(os.path.join(fold, "model.pt"), f"fold {k} model"))
        if any(
            p["network_def"] != plans[0]["network_def"] or p["preprocessing"] != plans[0]["preprocessing"]
            for p in plans
        ):
            raise ValueError(f"{d}: the folds' networks or preprocessing differ; they cannot form one ensemble")
        groups.append((plans, states))
    first = groups[0][0][0]
    members, scales = [], []
    for d, (plans, _) in zip(dirs, groups):
        member, scale = _group_member(plans[0], first, d)
        members.append(member)
        scales.append(scale)
    state = {}
    for g, (_, states) in enumerate(groups):
        prefix = "network." if scales[g] != 1.0 else ""  # Rescaled members hold the network under .network
        for k, sd in enumerate(states):
            for name, v in sd.items():
                state[f"members.{g * n + k}.{prefix}{name}"] = v.half() if half and v.is_floating_point() else v
    network_def = {
        "_target_": "bundle.networks.Ensemble",
        "network": members[0] if len(members) == 1 else members,
        "members": n,
    }
    body = {
        "kind": "detector",
        "network_def": network_def,
        "preprocessing": first["preprocessing"],
        "postprocessing": first["postprocessing"],
        "la_bounds": first.get("la_bounds") or asdict(LABounds()),
    }
    provenance = {
        **first.get("provenance", {}),
        "cross_validation_dir": os.path.abspath(cv_dir),
        "cross_validation_command": _cv_command(cv_dir),
        "export_command": command,
        "weights": "float16" if half else "float32",
    }
    os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
    stem = os.path.splitext(ckpt_path)[0]
    tmp = f"{stem}.{os.getpid()}.tmp.pt"  # the finished checkpoint replaces ckpt_path only once it is scored
    try:
        torch.save(state, tmp)
        if len(dirs) == 1:
            areas = [float(p["postprocessing"]["min_la_area_mm2"]) for p in groups[0][0]]
            with open(os.path.join(cv_dir, "cv_summary.json"), encoding="utf-8") as f:
                summary = json.load(f)
            rule = "median of the folds' validation choices"
            cross_validation = {"folds": n, "summary": summary["summary"], "volumes": summary["volumes"]}
        else:
            provenance["joined_cross_validations"] = [
                {"dir": os.path.abspath(d), "command": _cv_command(d), "scale": sc}
                for d, sc in zip(dirs[1:], scales[1:])
            ]
            write_plan(tmp, body)
            name = os.path.basename(stem)
            areas, summary = _score_export(tmp, folds, dataset_dir, datalist, os.path.join(cv_dir, f"export_{name}"))
            rule = "median of the ensemble's validation choices, fold by fold"
            cross_validation = {
                "folds": n,
                "summary": summary["summary"],
                "volumes": summary["volumes"],
                "scored": "fold k's members of every joined cross-validation on fold k's held-out patients",
            }
        body["postprocessing"] = {**first["postprocessing"], "min_la_area_mm2": float(np.median(areas))}
        body.update(
            tuning={"min_la_area_mm2": {"per_fold": areas, "rule": rule}},
            cross_validation=cross_validation,
            provenance=provenance,
        )
        os.replace(tmp, ckpt_path)
    finally:
        for leftover in (tmp, plan_path(tmp)):
            if os.path.exists(leftover):
                os.remove(leftover)
    write_plan(ckpt_path, body)
    logger.info(
        f"ensemble of {n} folds x {len(dirs)}: {ckpt_path} ({os.path.getsize(ckpt_path) / 1e6:.1f} MB), "
        f"plan {plan_path(ckpt_path)}"
    )
    return ckpt_path


def _cv_command(cv_dir: str) -> str:
    path = os.path.join(cv_dir, "cv_state.json")
    return json.load(open(path, encoding="utf-8")).get("command", "") if os.path.isfile(path) else ""


def _score_export(
    ckpt_path: str, folds: list[dict], dataset_dir: str | None, datalist: str | None, out: str
) -> tuple[list[float], dict]:
    """Score an exported ensemble out of fold as it is shipped: per fold, its members of that fold, the minimum LA
    area chosen on the fold's validation patients, the held-out patients scored; rows and summary written to ``out``.

    Returns:
        ``(per-fold minimum areas, {"summary", "volumes"})``.
    """
    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.data.prepare import resolve_datalist
    from bundle.inference.detector import load_detector

    if dataset_dir is None and datalist is None:
        raise ValueError("scoring a joined ensemble needs the data its folds were drawn from (dataset_dir/datalist)")
    path, root = resolve_datalist(dataset_dir, datalist, os.path.join(out, "demo"))
    entries = load_datalist(path, root, LIST_KEYS)["segmentation"]
    ensemble, plan = load_detector(ckpt_path)
    areas, rows = [], []
    for k, fold in enumerate(folds):
        val = [e for e in entries if e["patient"] in set(fold["val"])]
        held = [e for e in entries if e["patient"] in set(fold["test"])]
        fold_rows, best, _ = _tuned_fold_rows(
            ensemble.subset(k, len(folds)), plan, val, held, k, os.path.join(out, "masks"), root
        )
        areas.append(best)
        rows.extend(fold_rows)
    summary = summarise_folds(rows)
    os.makedirs(out, exist_ok=True)
    _write_results(
        os.path.join(out, "cv_results.csv"),
        rows,
        ["fold", "patient", "image", *CV_METRICS, "min_la_area_mm2", "reasons"],
    )
    result = {"summary": summary, "volumes": len(rows)}
    with open(os.path.join(out, "cv_summary.json"), "w", encoding="utf-8") as f:
        json.dump({**result, "min_la_area_mm2": areas}, f, indent=1)
    line = ", ".join(
        f"{m} {summary[m]['fold_mean']:.3f}±{summary[m]['fold_std']:.3f}" for m in ("dice", "hd95_mm", "slice_f1")
    )
    logger.info(f"export scored out of fold on {len(rows)} volumes: {line}")
    return areas, result
