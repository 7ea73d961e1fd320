"""Cross-validated Table 2 of the QA strategies on the stage-1 folds: out-of-fold scan predictions, calibration,
one MLflow parent run, resumable; and the export of the fold models as the shipped QA checkpoint.

Strategies (``docs/qa_crossval.md``):

- ``reference``: :data:`bundle.evaluation.reference.REGION_FEATURES` of the LA region with a class-balanced
  logistic regression, fitted on each fold's training and validation patients;
- ``region``: the LA-region network (:func:`bundle.engines.region_qa.train_region_qa`) trained on the training
  patients; its temperature per label is fitted on the fold's validation patients;
- ``artifact``: the same network, its encoder first pretrained without any score to recognise simulated acquisition
  artifacts on the training patients' clean images (:mod:`bundle.engines.artifact_pretrain`);
- ``baseline``, ``multitask``, ``contrastive``: the paper's whole-slice networks, trained and evaluated by the
  bundle's own workflows (``configs/qa_*.yaml`` through :func:`bundle.evaluation.runs.bundle_workflow`, with the
  recipe's ``workflow`` overrides) on the fold's split; a scan's logit is the mean logit of its LA slices
  (:func:`bundle.metrics.scan_verdict`'s ``mean_logit`` rule), its temperature fitted on the validation patients.

Every fold and seed writes ``<output_dir>/<strategy>/fold<k>_seed<s>/`` (``predictions.json``, and for networks
``model.pt``); a finished one is skipped on rerun. ``oof_predictions.csv`` holds every scan's test logit,
calibrated probability and verdict (:func:`bundle.metrics.scan_verdict`'s threshold rule on the scan probability);
``table2.csv`` / ``table2.md`` the metrics per strategy and label, mean ± std over folds x seeds and pooled out of
fold; ``roc.png`` and ``reliability.png`` the pictures.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np
import torch

from bundle.data.datalist import SCORE_KEYS
from bundle.evaluation.compare import STRATEGIES
from bundle.networks.loading import read_state_dict

__all__ = [
    "QA_STRATEGIES",
    "TABLE2_METRICS",
    "WORKFLOW_STRATEGIES",
    "calibration_sweep",
    "export_qa_ensemble",
    "load_predictions",
    "qa_cross_validate",
    "score_predictions",
    "seed_ensembles",
]

logger = logging.getLogger(__name__)

WORKFLOW_STRATEGIES = tuple(STRATEGIES)  # the paper's whole-slice networks: the configs' (configs/qa_*.yaml)
QA_STRATEGIES = ("reference", "region", "artifact", *WORKFLOW_STRATEGIES)
TABLE2_METRICS = ("precision", "recall", "f1", "specificity", "balanced_accuracy", "auroc", "ece")
TTA_FLIPS = ((), (0,), (1,), (0, 1))
DEFAULT_RECIPE = {
    "pixel_mm": 1.0,
    "size": 64,
    "margin": 4,
    "normalise": 0.5,
    "epochs": 100,
    "slices_per_scan": 8,
    "scans_per_batch": 8,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "ema_decay": 0.98,
    "loss_level": "slice",
    "ordinal": True,
    "network": {"intensity_stats": True, "stats_skip": True},
    "threshold": 0.5,
    "pretrain_epochs": 60,
    "stats_prior": True,
    "scan_prior": ["nulling"],
    "workflow": {  # overrides of the whole-slice strategies' configs (a CPU budget: the paper trains 128 px, longer)
        "spatial_size": 64,
        "train_slice_step": 2,
        "max_epochs": 15,
        "pretrain_epochs": 10,
        "pos_weight": "balanced",
        "qa_slices": "mask",
    },
}


def score_predictions(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per label (:data:`bundle.data.datalist.SCORE_KEYS`) the :data:`TABLE2_METRICS` of scan probabilities
    ``(n, 4)`` against binary targets, the verdict by :func:`bundle.metrics.is_diagnostic` at ``threshold``."""
    from bundle.metrics.calibration import expected_calibration_error
    from bundle.metrics.qa import binary_metrics, is_diagnostic

    out = {}
    for j, label in enumerate(SCORE_KEYS):
        m = binary_metrics(targets[:, j], is_diagnostic(probs[:, j], threshold), probs[:, j])
        m["ece"] = expected_calibration_error(probs[:, j], targets[:, j]) if len(targets) else float("nan")
        out[label] = {k: m[k] for k in TABLE2_METRICS}
    return out


def _fit_temperatures(logits: np.ndarray, targets: np.ndarray, t_range: Sequence[float] | None = None) -> list[float]:
    from bundle.metrics.calibration import T_RANGE, fit_temperature

    return [fit_temperature(logits[:, j], targets[:, j], t_range or T_RANGE) for j in range(logits.shape[1])]


def _run_fold(
    strategy: str, fold: dict, scans: list, clean: list | None, recipe: dict, seed: int, out: str, ctx: dict
) -> dict:
    from bundle.engines.region_qa import scan_logits, train_region_qa

    part = {k: [s for s in scans if s.patient in set(fold[k])] for k in ("train", "val", "test")}
    y = {k: np.stack([s.target for s in v]) if v else np.zeros((0, 4)) for k, v in part.items()}
    t0 = time.time()
    extra = {}
    if strategy == "reference":
        from bundle.evaluation.reference import fit_predict_region_reference, region_features
        from bundle.transforms.region import center_window

        # the window the networks see (the cut's centre), not the wider cut that training shifts within
        feats = {
            k: np.stack([region_features(center_window(s.images, recipe["size"])) for s in v]) for k, v in part.items()
        }
        fit_x, fit_y = np.concatenate([feats["train"], feats["val"]]), np.concatenate([y["train"], y["val"]])
        logits = {
            "test": fit_predict_region_reference(fit_x, fit_y, feats["test"], seed),
            "val": fit_predict_region_reference(feats["train"], y["train"], feats["val"], seed),
        }
        temperature = [1.0] * 4  # a logistic regression's own probabilities
    elif strategy in WORKFLOW_STRATEGIES:
        run = _run_workflow_fold(strategy, fold, part, recipe, seed, out, ctx)
        logits, extra["mlflow_run_id"] = run["logits"], run["mlflow_run_id"]
        temperature = _fit_temperatures(logits["val"], y["val"])
    else:
        init = None
        if strategy == "artifact":
            from bundle.engines.artifact_pretrain import pretrain_encoder

            train_clean = [c for c in clean if c.patient in set(fold["train"])]
            init, extra["pretrain"] = pretrain_encoder(
                train_clean, network=recipe["network"], size=recipe["size"], epochs=recipe["pretrain_epochs"], seed=seed
            )
        model = train_region_qa(
            part["train"],
            network=recipe["network"],
            size=recipe["size"],
            epochs=recipe["epochs"],
            slices_per_scan=recipe["slices_per_scan"],
            scans_per_batch=recipe["scans_per_batch"],
            lr=recipe["lr"],
            weight_decay=recipe["weight_decay"],
            ema_decay=recipe["ema_decay"],
            loss_level=recipe["loss_level"],
            ordinal=recipe["ordinal"],
            stats_prior=recipe.get("stats_prior", False),
            scan_prior=recipe.get("scan_prior"),
            seed=seed,
            init=init,
        )
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        logits = {k: scan_logits(model, part[k], recipe["size"], TTA_FLIPS) for k in ("val", "test")}
        temperature = _fit_temperatures(logits["val"], y["val"])
    seconds = time.time() - t0
    pred = {
        "strategy": strategy,
        "seed": seed,
        "seconds": seconds,
        "temperature": temperature,
        **extra,
        **{f"{k}_scans": [s.name for s in part[k]] for k in ("val", "test")},
        **{f"{k}_patients": [s.patient for s in part[k]] for k in ("val", "test")},
        **{f"{k}_logits": logits[k].tolist() for k in ("val", "test")},
        **{f"{k}_targets": y[k].tolist() for k in ("val", "test")},
    }
    return pred


def _workflow_scan_logits(pred_dir: str, part: list) -> np.ndarray:
    """``(n, 4)`` scan logits of ``part``'s scans (in its order) from an evaluation's ``slice_predictions.csv``: each
    scan's slice probabilities through :func:`bundle.metrics.scan_verdict`'s ``mean_logit`` rule.

    Raises:
        DataError: when the evaluation misses one of the part's scans.
    """
    import pandas as pd

    from bundle.data.region_cache import scan_name
    from bundle.errors import DataError
    from bundle.metrics.qa import scan_verdict

    table = pd.read_csv(os.path.join(pred_dir, "slice_predictions.csv"))
    table["name"] = [scan_name(str(x)) for x in table["scan"]]
    groups = dict(tuple(table.groupby("name")))
    missing = [s.name for s in part if s.name not in groups]
    if missing:
        raise DataError(f"{pred_dir}: the evaluation has no slices of {missing[:3]} (its LA slices were not selected)")
    probs = [
        [scan_verdict(groups[s.name][f"{label}_prob"], rule="mean_logit")[0] for label in SCORE_KEYS] for s in part
    ]
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1, 4), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _run_workflow_fold(strategy: str, fold: dict, part: dict, recipe: dict, seed: int, out: str, ctx: dict) -> dict:
    """Train the whole-slice ``strategy`` with the bundle's workflow on the fold's split (an MLflow child of the
    cross-validation's parent), evaluate it on the validation and the test patients into the same run; returns the
    scan logits per part and the child run's id."""
    from bundle.data.split import save_split
    from bundle.evaluation.runs import bundle_workflow, default_bundle_root, evaluate_workflow, run_workflow

    root = default_bundle_root()
    files = STRATEGIES[strategy]
    split_file = save_split({p: list(fold[p]) for p in ("train", "val", "test")}, os.path.join(out, "split_in.json"))
    run_name = f"{os.path.basename(out)}_{strategy}_{time.strftime('%Y%m%d_%H%M%S')}"
    common = {
        **recipe["workflow"],
        "dataset_dir": ctx["dataset_dir"],
        "datalist": ctx["datalist"],
        "split_file": split_file,
        "seed": seed,
        "output_dir": ctx["output_dir"],
        "cache_dir": os.path.join(ctx["output_dir"], "slice_cache"),
        "ckpt_dir": out,
        "overwrite_checkpoint": True,
        "tracking_uri": ctx["tracking_uri"],
        "experiment_name": "qa_crossval",
    }
    run_workflow(
        bundle_workflow(
            root,
            files,
            "train",
            run_name=run_name,
            run_dir=os.path.join(out, "train"),
            parent_run_id=ctx["parent"],
            **common,
        )
    )
    gc.collect()
    child = ctx["client"].search_runs([ctx["experiment_id"]], f"tags.mlflow.runName = '{run_name}'")[0].info.run_id
    logits = {}
    for k in ("val", "test"):
        evaluate_workflow(
            root,
            files,
            os.path.join(out, k),
            eval_part=k,
            run_name=run_name,
            mlflow_run_id=child,
            projection="none",
            **common,
        )
        logits[k] = _workflow_scan_logits(os.path.join(out, k), part[k])
    return {"logits": logits, "mlflow_run_id": child}


def qa_cross_validate(
    output_dir: str,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    strategies: Sequence[str] = ("reference", "region"),
    seeds: Sequence[int] = (0,),
    folds: int = 5,
    fold_seed: int = 0,
    n_val: int = 4,
    run_folds: Sequence[int] | None = None,
    recipe: dict | None = None,
    cache_dir: str | None = None,
    mask_dir: str | None = None,
    tracking_uri: str | None = None,
    folds_from: str | None = None,
    name: str = "qa_cv",
    command: str = "",
) -> dict:
    """Run (or resume) the QA cross-validation and write Table 2.

    Args:
        output_dir: the run's folder; its ``folds.json`` (a stage-1 cross-validation's, copied in or shared) fixes
            the folds, otherwise they are drawn as stage 1 draws them.
        dataset_dir, datalist: the data (the datalist's ``quality`` list; ``segmentation`` images are the clean
            scans of the artifact pretraining).
        strategies: of :data:`QA_STRATEGIES`.
        seeds: training seeds; the table's std is over folds x seeds.
        folds, fold_seed, n_val: the folds (:func:`bundle.data.split.cv_folds`).
        run_folds: folds to run now (default all); the table covers what is finished.
        recipe: overrides of :data:`DEFAULT_RECIPE`.
        cache_dir: LA-region cache (default ``<output_dir>/cache``).
        mask_dir: predicted LA masks to cut the region around (e.g. a stage-1 cross-validation's ``oof_masks``);
            None: the datalist's labels. The whole-slice strategies choose their LA slices by the recipe's
            ``workflow`` ``qa_slices`` instead (``mask``: the labels; ``detector``: a ``detector_ckpt`` as inference).
        tracking_uri: MLflow store (default sqlite ``<output_dir>/mlruns.db``).
        folds_from: a ``folds.json`` (e.g. a stage-1 cross-validation's) copied into ``output_dir`` when it has none,
            so the run uses those folds.
        name: the MLflow parent run's name.
        command: the command line, recorded.

    Returns:
        ``{"table": ..., "files": {...}}``.

    Raises:
        ValueError: for an unknown strategy or recipe key.
    """
    from bundle.data.datalist import LIST_KEYS, load_datalist, validate_datalist
    from bundle.evaluation.crossval import _make_folds
    from bundle.evaluation.runs import mlflow_experiment, start_parent_run

    unknown = [s for s in strategies if s not in QA_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown QA strategies {unknown}; choose from {QA_STRATEGIES}")
    bad = set(recipe or {}) - set(DEFAULT_RECIPE)
    if bad:
        raise ValueError(f"unknown recipe keys {sorted(bad)}; known: {sorted(DEFAULT_RECIPE)}")
    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    recipe["workflow"] = {**DEFAULT_RECIPE["workflow"], **recipe["workflow"]}  # a change of one override keeps the rest
    os.makedirs(output_dir, exist_ok=True)
    if folds_from and not os.path.isfile(os.path.join(output_dir, "folds.json")):
        shutil.copyfile(folds_from, os.path.join(output_dir, "folds.json"))
    fold_list, path, root = _make_folds(output_dir, datalist, dataset_dir, folds, fold_seed, n_val, 0.15)
    lists = load_datalist(path, root, LIST_KEYS)
    validate_datalist(lists)
    from bundle.data.region_cache import region_scans

    scans = region_scans(lists["quality"], cache_dir or os.path.join(output_dir, "cache"), recipe, mask_dir)
    clean = None
    if "artifact" in strategies:
        from bundle.engines.artifact_pretrain import clean_region_scans

        clean = clean_region_scans(lists["segmentation"], cache_dir or os.path.join(output_dir, "cache"), recipe)
    recipe_file = os.path.join(output_dir, "recipe.json")
    history = []  # every invocation of this folder, so a table run in several goes keeps each go's command
    if os.path.isfile(recipe_file):
        with open(recipe_file, encoding="utf-8") as f:
            before = json.load(f)
        history = before.get("history") or [{k: before.get(k) for k in ("strategies", "seeds", "command")}]
    this = {"strategies": list(strategies), "seeds": list(seeds), "command": command}
    body = {"recipe": recipe, **this, "datalist": path, "mask_dir": mask_dir, "history": [*history, this]}
    with open(recipe_file, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    tracking_uri = tracking_uri or f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'mlruns.db'))}"
    client, experiment_id = mlflow_experiment(tracking_uri, "qa_crossval")
    state_file = os.path.join(output_dir, "mlflow_parent.json")
    if os.path.isfile(state_file):
        with open(state_file, encoding="utf-8") as f:
            parent = json.load(f)["parent_run_id"]
    else:
        parent = start_parent_run(
            client,
            experiment_id,
            f"{name}_{time.strftime('%Y%m%d_%H%M%S')}",
            {"kind": "qa_crossval", "command": command[:5000]},
            {
                "folds": len(fold_list),
                "seeds": list(seeds),
                "strategies": list(strategies),
                **{f"recipe.{k}": v for k, v in recipe.items()},
            },
            None,
        )
        with open(state_file, "w", encoding="utf-8") as f:
            json.dump({"parent_run_id": parent}, f)
    todo = range(len(fold_list)) if run_folds is None else [int(k) for k in run_folds]
    ctx = {
        "dataset_dir": root,
        "datalist": path,
        "output_dir": os.path.abspath(output_dir),
        "tracking_uri": tracking_uri,
        "client": client,
        "experiment_id": experiment_id,
        "parent": parent,
    }
    for strategy in strategies:
        for seed in seeds if strategy != "reference" else seeds[:1]:
            for k in todo:
                out = os.path.join(output_dir, strategy, f"fold{k}_seed{seed}")
                done = os.path.join(out, "predictions.json")
                if os.path.isfile(done):
                    continue
                os.makedirs(out, exist_ok=True)
                logger.info(f"QA cross-validation: {strategy}, fold {k}, seed {seed}")
                pred = _run_fold(strategy, fold_list[k], scans, clean, recipe, seed, out, ctx)
                pred["fold"] = k
                tmp = done + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(pred, f)
                os.replace(tmp, done)
                _log_child(client, experiment_id, parent, pred, recipe["threshold"])
                logger.info(f"QA cross-validation: {strategy} fold {k} seed {seed} in {pred['seconds']:.0f} s")
    result = write_table2(output_dir, QA_STRATEGIES, recipe["threshold"])  # every finished strategy of the folder
    for strategy, row in result["table"].items():
        for label, metrics in row["pooled"].items():
            for m, v in metrics.items():
                if v == v:
                    client.log_metric(parent, f"{strategy}.{label}.{m}", float(v))
    for f in result["files"].values():
        client.log_artifact(parent, f)
    client.set_terminated(parent, "FINISHED")
    return result


def _log_child(client, experiment_id: str, parent: str, pred: dict, threshold: float) -> None:
    """The fold's calibrated out-of-fold scores as an MLflow child run (the workflow strategies' own training run)."""
    probs, targets = _calibrated(pred)
    own = pred.get("mlflow_run_id")  # the training run logged its own params: the fold's go beside them
    rid = (
        own
        or client.create_run(
            experiment_id,
            run_name=f"{pred['strategy']}_fold{pred['fold']}_seed{pred['seed']}",
            tags={"mlflow.parentRunId": parent},
        ).info.run_id
    )
    for k in ("strategy", "fold", "seed"):
        client.log_param(rid, f"cv_{k}" if own else k, str(pred[k]))
    client.log_metric(rid, "seconds", float(pred["seconds"]))
    for label, metrics in score_predictions(targets, probs, threshold).items():
        for m, v in metrics.items():
            if v == v:
                client.log_metric(rid, f"{label}.{m}", float(v))
    client.set_terminated(rid, "FINISHED")


def _temperature(pred: dict, t_range: Sequence[float] | None = None) -> list[float]:
    """A fold's temperatures, fitted now on its stored validation logits (so a change of the calibration rule
    re-scores finished runs without retraining); the reference keeps its logistic regression's own probabilities."""
    if pred["strategy"] == "reference" or not pred.get("val_logits"):
        return [1.0] * 4
    return _fit_temperatures(
        np.asarray(pred["val_logits"], dtype=np.float64).reshape(-1, 4),
        np.asarray(pred["val_targets"], dtype=np.float64).reshape(-1, 4),
        t_range,
    )


def _calibrated(pred: dict, t_range: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    from bundle.metrics.calibration import apply_temperature

    logits = np.asarray(pred["test_logits"], dtype=np.float64).reshape(-1, 4)
    t = np.asarray(_temperature(pred, t_range), dtype=np.float64)
    return apply_temperature(logits, t), np.asarray(pred["test_targets"], dtype=np.float64).reshape(-1, 4)


def seed_ensembles(preds: Sequence[dict]) -> list[dict]:
    """Per fold, the ensemble of the seeds that finished it (at least two): the mean of their validation and test
    logits, its temperatures fitted on the mean validation logits (the fold's validation patients only). Returns
    predictions shaped as a fold's (``seed`` 0, ``seconds`` the seeds' sum, ``seeds`` the members); none where no
    fold has two seeds."""
    by_fold: dict[int, list[dict]] = {}
    for p in preds:
        by_fold.setdefault(int(p["fold"]), []).append(p)
    out = []
    for k, members in sorted(by_fold.items()):
        if len(members) < 2:
            continue
        mean = {
            f"{part}_logits": np.mean([np.asarray(m[f"{part}_logits"]).reshape(-1, 4) for m in members], 0)
            for part in ("val", "test")
        }
        first = members[0]
        temperature = _fit_temperatures(mean["val_logits"], np.asarray(first["val_targets"]).reshape(-1, 4))
        out.append(
            {
                **{key: first[key] for key in first if key.startswith(("val_", "test_"))},
                "strategy": f"{first['strategy']}_ensemble",
                "fold": k,
                "seed": 0,
                "seeds": sorted(m["seed"] for m in members),
                "seconds": float(sum(m["seconds"] for m in members)),
                "val_logits": mean["val_logits"].tolist(),
                "test_logits": mean["test_logits"].tolist(),
                "temperature": temperature,
            }
        )
    return out


def calibration_sweep(
    output_dir: str, strategy: str, t_ranges: Sequence[Sequence[float]]
) -> list[dict[str, float | list[float]]]:
    """What the temperature range does to a finished QA cross-validation's held-out probabilities: for each
    ``(lowest, highest)`` range, each fold's temperatures refitted on its validation logits within it and the
    out-of-fold probabilities pooled; per label the ECE, the log-loss and the AUROC.

    Args:
        output_dir: a finished run's folder.
        strategy: a network strategy, or its seed ensemble (``region_ensemble``).
        t_ranges: the ranges to compare; ``(1, 1)`` is no calibration.

    Returns:
        One row per range: ``{"t_range": [lo, hi], "<label>.ece": ..., "<label>.log_loss": ..., "<label>.auroc": ...}``.

    Raises:
        DataError: where the run has no finished fold of ``strategy``.
    """
    from sklearn.metrics import log_loss

    from bundle.errors import DataError

    base = strategy.removesuffix("_ensemble")
    preds = load_predictions(output_dir, base)
    if strategy != base:
        preds = seed_ensembles(preds)
    if not preds:
        raise DataError(f"{output_dir} has no finished fold of {strategy}")
    rows = []
    for t_range in t_ranges:
        parts = [_calibrated(p, t_range) for p in preds]
        probs, targets = np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])
        scored = score_predictions(targets, probs)  # Table 2's ECE and AUROC
        row: dict[str, float | list[float]] = {"t_range": [float(t) for t in t_range]}
        for j, label in enumerate(SCORE_KEYS):
            row[f"{label}.ece"], row[f"{label}.auroc"] = scored[label]["ece"], scored[label]["auroc"]
            row[f"{label}.log_loss"] = float(
                log_loss(targets[:, j], np.clip(probs[:, j], 1e-7, 1 - 1e-7), labels=[0, 1])
            )
        rows.append(row)
    return rows


def _fmt(values: list[float]) -> str:
    v = np.array([x for x in values if x == x], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def load_predictions(output_dir: str, strategy: str) -> list[dict]:
    """The finished folds' predictions of ``strategy`` in a QA cross-validation's folder (every fold and seed whose
    ``predictions.json`` exists), in folder order."""
    folder = os.path.join(output_dir, strategy)
    preds = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, "predictions.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                preds.append(json.load(f))
    return preds


def write_table2(output_dir: str, strategies: Sequence[str], threshold: float = 0.5) -> dict:
    """Table 2 from the finished folds: ``table2.csv``, ``table2.md``, ``oof_predictions.csv``, ``roc.png``,
    ``reliability.png``; returns ``{"table": {strategy: {"folds": ..., "pooled": ...}}, "files": {...}}``."""
    from bundle.metrics.qa import is_diagnostic

    table, rows, curves = {}, [], {}
    runs = []
    for strategy in strategies:
        preds = load_predictions(output_dir, strategy)
        runs.append((strategy, preds))
        ensemble = seed_ensembles(preds)
        if ensemble:
            runs.append((f"{strategy}_ensemble", ensemble))
    for strategy, preds in runs:
        if not preds:
            continue
        per_run = []
        pooled_p, pooled_y = {}, {}
        for pred in preds:
            probs, targets = _calibrated(pred)
            per_run.append(score_predictions(targets, probs, threshold))
            pooled_p.setdefault(pred["seed"], []).append(probs)
            pooled_y.setdefault(pred["seed"], []).append(targets)
            logits = np.asarray(pred["test_logits"]).reshape(-1, 4)
            for i, scan in enumerate(pred["test_scans"]):
                for j, label in enumerate(SCORE_KEYS):
                    rows.append(
                        {
                            "strategy": strategy,
                            "seed": pred["seed"],
                            "fold": pred["fold"],
                            "scan": scan,
                            "patient": pred["test_patients"][i],
                            "label": label,
                            "target": int(targets[i, j]),
                            "logit": float(logits[i, j]),
                            "probability": float(probs[i, j]),
                            "verdict": int(is_diagnostic(probs[i, j], threshold)),
                        }
                    )
        pooled = {}
        for seed in pooled_p:
            pooled[seed] = score_predictions(np.concatenate(pooled_y[seed]), np.concatenate(pooled_p[seed]), threshold)
        curves[strategy] = (np.concatenate(pooled_y[min(pooled_y)]), np.concatenate(pooled_p[min(pooled_p)]))
        table[strategy] = {
            "runs": len(preds),
            "minutes_per_fold": float(np.mean([p["seconds"] for p in preds]) / 60),
            "folds": {label: {m: _fmt([r[label][m] for r in per_run]) for m in TABLE2_METRICS} for label in SCORE_KEYS},
            "pooled": {
                label: {m: float(np.nanmean([pooled[s][label][m] for s in pooled])) for m in TABLE2_METRICS}
                for label in SCORE_KEYS
            },
        }
    files = {}
    files["oof"] = os.path.join(output_dir, "oof_predictions.csv")
    with open(files["oof"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "strategy",
                "seed",
                "fold",
                "scan",
                "patient",
                "label",
                "target",
                "logit",
                "probability",
                "verdict",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    files["csv"] = os.path.join(output_dir, "table2.csv")
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "label", "aggregate", *TABLE2_METRICS, "runs", "minutes_per_fold"])
        for s, t in table.items():
            for label in SCORE_KEYS:
                w.writerow(
                    [
                        s,
                        label,
                        "folds",
                        *[t["folds"][label][m] for m in TABLE2_METRICS],
                        t["runs"],
                        f"{t['minutes_per_fold']:.2f}",
                    ]
                )
                w.writerow(
                    [
                        s,
                        label,
                        "pooled",
                        *[f"{t['pooled'][label][m]:.3f}" for m in TABLE2_METRICS],
                        t["runs"],
                        f"{t['minutes_per_fold']:.2f}",
                    ]
                )
    files["md"] = os.path.join(output_dir, "table2.md")
    with open(files["md"], "w", encoding="utf-8") as f:
        f.write(
            f"Out-of-fold scan verdicts at threshold {threshold} (mean ± std over folds x seeds; pooled in "
            "brackets: all out-of-fold scans at once).\n\n"
        )
        f.write("| strategy | label | " + " | ".join(TABLE2_METRICS) + " | min/fold |\n")
        f.write("|" + "---|" * (len(TABLE2_METRICS) + 3) + "\n")
        for s, t in table.items():
            for label in SCORE_KEYS:
                cells = [f"{t['folds'][label][m]} ({t['pooled'][label][m]:.3f})" for m in TABLE2_METRICS]
                f.write(f"| {s} | {label} | " + " | ".join(cells) + f" | {t['minutes_per_fold']:.1f} |\n")
    if curves:
        files.update(_pictures(output_dir, curves))
    return {"table": table, "files": files}


def _pictures(output_dir: str, curves: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from bundle.metrics.calibration import reliability_curve

    files = {}
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for j, label in enumerate(SCORE_KEYS):
        ax = axes[j]
        for s, (y, p) in curves.items():
            if len(np.unique(y[:, j])) == 2:
                fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
                ax.plot(fpr, tpr, label=s)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"{label}: ROC, out of fold", xlabel="1 - specificity", ylabel="sensitivity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    files["roc"] = os.path.join(output_dir, "roc.png")
    fig.savefig(files["roc"], dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for j, label in enumerate(SCORE_KEYS):
        ax = axes[j]
        for s, (y, p) in curves.items():
            r = reliability_curve(p[:, j], y[:, j], n_bins=5)
            ax.plot(r["mean_prob"], r["frac_pos"], "o-", label=s)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(
            title=f"{label}: reliability (5 bins)",
            xlabel="mean predicted probability",
            ylabel="fraction diagnostic",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    files["reliability"] = os.path.join(output_dir, "reliability.png")
    fig.savefig(files["reliability"], dpi=90)
    plt.close(fig)
    return files


def export_qa_ensemble(
    cv_dir: str,
    ckpt_path: str,
    strategy: str = "region",
    overwrite: bool = False,
    command: str = "",
    all_seeds: bool = True,
) -> str:
    """The fold models of a finished QA cross-validation (every seed, or the first) as one checkpoint with its plan.

    The ensemble averages the members' logits (:class:`bundle.networks.Ensemble`, ``combine="logit"``); its
    temperature per label is fitted on the pooled validation predictions of the fold models (with several seeds, of
    each fold's seed ensemble, :func:`seed_ensembles`; each on its own validation patients: no test scan is used);
    the threshold is the recipe's.

    Raises:
        FileExistsError: when ``ckpt_path`` exists and not ``overwrite``.
        ValueError: when no fold of ``strategy`` is finished, or the recipe needs what inference does not do (slices
            pooled by attention, the LA mask as an input channel).
    """
    from bundle.networks.plan import INTENSITY, write_plan
    from bundle.utils import git_commit

    if os.path.exists(ckpt_path) and not overwrite:
        raise FileExistsError(f"{ckpt_path} exists; pass overwrite to replace it")
    with open(os.path.join(cv_dir, "recipe.json"), encoding="utf-8") as f:
        meta = json.load(f)
    recipe = meta["recipe"]
    if recipe["network"].get("pooling", "none") != "none":
        raise ValueError(
            f"{cv_dir}: a recipe with {recipe['network']['pooling']} pooling cannot be exported: "
            "inference takes the mean of the slice logits (bundle.metrics.scan_verdict), not a learned "
            "pooling"
        )
    if recipe["network"].get("la_stats"):
        raise ValueError(
            f"{cv_dir}: a recipe with la_stats cannot be exported: inference gives the QA network the "
            "LA region alone, not its mask as a second channel"
        )
    preds = []
    folder = os.path.join(cv_dir, strategy)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        p = os.path.join(folder, name, "predictions.json")
        if os.path.isfile(p) and os.path.isfile(os.path.join(folder, name, "model.pt")):
            with open(p, encoding="utf-8") as f:
                pred = json.load(f)
            pred["dir"] = os.path.join(folder, name)
            preds.append(pred)
    if not preds:
        raise ValueError(f"{folder}: no finished fold with a model to export")
    first_seed = min(p["seed"] for p in preds)
    preds = sorted((p for p in preds if all_seeds or p["seed"] == first_seed), key=lambda p: (p["fold"], p["seed"]))
    states = [read_state_dict(os.path.join(p["dir"], "model.pt"), "fold model") for p in preds]
    ens = {
        f"members.{k}.{n}": (v.half() if v.is_floating_point() else v)
        for k, s in enumerate(states)
        for n, v in s.items()
    }
    ensembled = {e["fold"]: e for e in seed_ensembles(preds)}
    calibrated = [*ensembled.values(), *(p for p in preds if p["fold"] not in ensembled)]  # folds with one seed
    val_logits = np.concatenate([np.asarray(p["val_logits"]).reshape(-1, 4) for p in calibrated])
    val_targets = np.concatenate([np.asarray(p["val_targets"]).reshape(-1, 4) for p in calibrated])
    temperature = _fit_temperatures(val_logits, val_targets)
    os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
    tmp = ckpt_path + ".tmp"
    torch.save(ens, tmp)
    os.replace(tmp, ckpt_path)
    net = {
        "_target_": "bundle.networks.QANet",
        "layers": [1, 1, 1, 1],
        "block_inplanes": [16, 32, 64, 128],
        "head_channels": 32,
        "qa_channels": 16,
        **recipe["network"],
        **({"scan_prior": True} if recipe.get("scan_prior") else {}),
    }
    table = {}
    t2 = os.path.join(cv_dir, "table2.csv")
    if os.path.isfile(t2):
        with open(t2, encoding="utf-8") as f:
            table = [r for r in csv.DictReader(f) if r["strategy"] in (strategy, f"{strategy}_ensemble")]
    plan = {
        "kind": "qa",
        "network_def": {
            "_target_": "bundle.networks.Ensemble",
            "network": net,
            "members": len(states),
            "combine": "logit",
        },
        "labels": list(SCORE_KEYS),
        "preprocessing": {
            "intensity": INTENSITY,
            "region": {"pixel_mm": recipe["pixel_mm"], "size": recipe["size"], "normalise": recipe["normalise"]},
            "slices": "the LA slices of the detected mask (bundle.inference.la_slices)",
        },
        "decision": {
            "rule": "mean_logit",
            "threshold": recipe["threshold"],
            "temperature": temperature,
            "refer_uncertainty": 0.05,
        },
        "cam_layer": "members.0.encoder.layer4",
        "calibration": {
            "method": "temperature scaling per label on the pooled validation folds",
            "validation_scans": len(val_logits),
        },
        "cross_validation": {
            "dir": os.path.abspath(cv_dir),
            "strategy": strategy,
            "folds": [p["fold"] for p in preds],
            "seeds": [p["seed"] for p in preds],
            "table2": table,
        },
        "provenance": {
            "data": meta.get("datalist"),
            "recipe": recipe,
            "cv_command": meta.get("command"),
            "export_command": command,
            "git_commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
            "torch": torch.__version__,
        },
    }
    write_plan(ckpt_path, plan)
    return ckpt_path
