"""The strategy comparison (the paper's Table 2): every strategy over K seeds on one patient split, in MLflow.

Each strategy-seed trains with the bundle's own workflow (``configs/qa_*.yaml``, as ``monai.bundle run training``)
and is evaluated on the test patients with ``configs/evaluate.yaml``; its training curves and test scores are one
MLflow run, a child (MLflow's ``mlflow.parentRunId`` tag) of one parent run that holds the tables and the pictures.
The non-deep reference (:mod:`bundle.evaluation.reference`) adds a row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.data.datalist import SCORE_KEYS
from bundle.errors import DataError
from bundle.evaluation.runs import (
    bundle_configs,
    default_bundle_root,
    evaluate_workflow,
    mlflow_experiment,
    reference_row,
    start_parent_run,
    strategy_configs,
    train_and_evaluate,
)

__all__ = ["STRATEGIES", "compare_strategies", "publish_tables", "reevaluate", "summarise", "write_tables"]

logger = logging.getLogger(__name__)

_CONFIGS = strategy_configs()  # the strategies are the configs' own: configs/qa_*.yaml
STRATEGIES = {s: c["files"] for s, c in _CONFIGS.items()}  # strategy: config files stacked on configs/common.yaml
DISPLAY = {"reference": "Logistic regression (reference)", **{s: c["title"] for s, c in _CONFIGS.items()}}
TABLE_METRICS = ("precision", "recall", "f1", "specificity", "auroc", "balanced_accuracy")
METRIC_NAMES = {
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1-Score",
    "specificity": "Specificity",
    "auroc": "AUROC",
    "balanced_accuracy": "Balanced acc.",
}


def summarise(results: dict[str, list[dict]], level: str = "mode") -> dict[str, dict[str, dict[str, tuple]]]:
    """Mean and sample standard deviation over seeds of each strategy's test scores.

    Args:
        results: ``{strategy: [metrics.json content per seed]}``.
        level: ``"mode"``, ``"mean"`` or ``"slice"``.

    Returns:
        ``{strategy: {label: {metric: (mean, std, runs)}}}``; std is NaN for a single run; NaN scores are left out.
    """
    out: dict = {}
    for strategy, runs in results.items():
        out[strategy] = {}
        for label in SCORE_KEYS:
            out[strategy][label] = {}
            for m in TABLE_METRICS:
                v = np.array([r["metrics"][level][label][m] for r in runs], dtype=float)
                v = v[~np.isnan(v)]
                mean = float(v.mean()) if len(v) else float("nan")
                std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
                out[strategy][label][m] = (mean, std, len(v))
    return out


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def write_tables(results: dict[str, list[dict]], output_dir: str, note: str = "") -> dict[str, str]:
    """Write the comparison as markdown (``comparison.md``) and CSV (``comparison.csv``: the table;
    ``comparison_runs.csv``: every score of every run, long format).

    Returns:
        ``{"markdown": path, "csv": path, "runs_csv": path}``.
    """
    import pandas as pd

    order = [s for s in ("reference", *STRATEGIES) if s in results] + [s for s in results if s not in DISPLAY]
    rows = []
    for strategy in order:
        for seed, r in enumerate(results[strategy]):
            for level, per in r["metrics"].items():
                for label, ms in per.items():
                    rows += [
                        {
                            "strategy": strategy,
                            "run": seed,
                            "seed": r.get("seed", seed),
                            "level": level,
                            "label": label,
                            "metric": m,
                            "value": v,
                        }
                        for m, v in ms.items()
                    ]
    runs_csv = os.path.join(output_dir, "comparison_runs.csv")
    pd.DataFrame(rows).to_csv(runs_csv, index=False)

    mode, mean = summarise(results, "mode"), summarise(results, "mean")
    table = []
    for s in order:
        n_runs = len(results[s])
        row = {"method": DISPLAY.get(s, s), "strategy": s, "runs": n_runs}
        for m in TABLE_METRICS:
            row[m], row[f"{m}_std"] = mode[s]["fibrosis"][m][:2]
        table.append(row)
    csv = os.path.join(output_dir, "comparison.csv")
    pd.DataFrame(table).to_csv(csv, index=False)

    n_scans = results[order[0]][0]["n_scans"]
    lines = [
        f"Quality of fibrosis assessment on the test split ({n_scans} scans): verdict per scan by the mode of its "
        f"slices (ties non-diagnostic); mean ± standard deviation over runs.",
        "",
    ]
    head = ["Method", "runs", *[METRIC_NAMES[m] for m in TABLE_METRICS]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in order:
        cells = [DISPLAY.get(s, s), str(len(results[s]))] + [_fmt(*mode[s]["fibrosis"][m][:2]) for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "F1 per label (verdict by mode), and QA by the mean slice probability:", ""]
    head = ["Method", *[f"F1 {lb}" for lb in SCORE_KEYS], "QA F1 (mean prob.)", "QA AUROC (mean prob.)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in order:
        cells = [DISPLAY.get(s, s)] + [_fmt(*mode[s][lb]["f1"][:2]) for lb in SCORE_KEYS]
        cells += [_fmt(*mean[s]["fibrosis"]["f1"][:2]), _fmt(*mean[s]["fibrosis"]["auroc"][:2])]
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    md = os.path.join(output_dir, "comparison.md")
    Path(md).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"markdown": md, "csv": csv, "runs_csv": runs_csv}


def publish_tables(
    client,
    parent_id: str,
    out: str,
    results: dict[str, list[dict]],
    note: str = "",
    mean_metrics: Sequence[str] = (),
    artifacts: Sequence[str] = (),
) -> dict[str, str]:
    """Write a comparison's tables and ``results.json`` into ``out`` and log them to its parent MLflow run.

    Args:
        client: the MLflow client.
        parent_id: the comparison's parent run.
        out: the comparison's folder.
        results: ``{row: [metrics.json content per seed]}``.
        note: text under the tables.
        mean_metrics: fibrosis metrics whose mean over seeds is logged per row (``<row>_fibrosis_<metric>_mean``).
        artifacts: further files logged to the parent run (settings, split).

    Returns:
        the tables' paths (:func:`write_tables`).
    """
    tables = write_tables(results, out, note)
    Path(out, "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    for name, per in summarise(results).items():
        for m in mean_metrics:
            mean = per["fibrosis"][m][0]
            if not math.isnan(mean):
                client.log_metric(parent_id, f"{name}_fibrosis_{m}_mean", mean)
    for path in (*tables.values(), os.path.join(out, "results.json"), *artifacts):
        client.log_artifact(parent_id, path)
    return tables


def compare_strategies(
    output_dir: str = "runs",
    seeds: int | Sequence[int] = 5,
    strategies: Sequence[str] = tuple(STRATEGIES),
    overrides: dict | None = None,
    bundle_root: str = ".",
    split_seed: int = 0,
    reference: bool = True,
    projection: str = "tsne",
    command: str = "",
) -> dict:
    """Train and evaluate every strategy for every seed on one patient split, with MLflow parent and child runs.

    Args:
        output_dir: the bundle's ``output_dir``; everything goes to ``<output_dir>/compare_<time>/`` (checkpoints
            included, under ``models/seed<k>/``) and the MLflow store of the bundle's settings.
        seeds: K (seeds ``0..K-1``) or the seeds.
        strategies: among :data:`STRATEGIES`.
        overrides: config overrides for every run (``dataset_dir``, ``datalist``, ``test_size``, ``max_epochs``,
            ``qa_slices``, ...): the reduced budget is given here.
        bundle_root: the bundle (repository root).
        split_seed: seed of the patient split shared by all runs (``split_file`` in overrides reuses a saved one).
        reference: add the logistic-regression reference row.
        projection: ``"tsne"``, ``"umap"`` (where installed) or ``"none"``: embeddings picture of the first seed.
        command: the command line, recorded with the results.

    Returns:
        ``{"dir", "parent_run_id", "results", "tables"}``.
    """
    from monai.bundle import ConfigParser

    from bundle.data import prepare_data
    from bundle.evaluation.plots import plot_embeddings, project_embeddings
    from bundle.evaluation.report import flatten_metrics

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be among {list(STRATEGIES)}, got {list(strategies)}")
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    overrides = dict(overrides or {})
    bundle_root = os.path.abspath(bundle_root)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    out = os.path.join(os.path.abspath(output_dir), f"compare_{stamp}")
    os.makedirs(out, exist_ok=True)

    # the settings every run shares, resolved once from the baseline config (the detector stays where it is)
    parser = ConfigParser()
    parser.read_config(bundle_configs(bundle_root, STRATEGIES["baseline"]))
    parser.update({"bundle_root": bundle_root, "output_dir": os.path.abspath(output_dir), **overrides})
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or parser.get_parsed_content("tracking_uri")
    experiment_name = parser.get_parsed_content("experiment_name")
    detector_ckpt = parser.get_parsed_content("detector_ckpt")
    split_file = overrides.get("split_file") or os.path.join(out, "split.json")
    if not overrides.get("split_file"):
        prepare_data(
            parser.get_parsed_content("dataset_dir"),
            parser.get_parsed_content("datalist"),
            os.path.abspath(output_dir),
            None,
            parser.get_parsed_content("test_size"),
            parser.get_parsed_content("val_fraction"),
            split_seed,
            split_file,
        )
    shared = {
        **overrides,
        "bundle_root": bundle_root,
        "output_dir": os.path.abspath(output_dir),
        "split_file": split_file,
        "detector_ckpt": detector_ckpt,
        "overwrite_checkpoint": True,
    }
    settings = {
        "command": command,
        "seeds": seeds,
        "strategies": list(strategies),
        "split_seed": split_seed,
        "overrides": overrides,
    }
    Path(out, "settings.json").write_text(json.dumps(settings, indent=1, default=str), encoding="utf-8")

    client, experiment_id = mlflow_experiment(tracking_uri, experiment_name)
    tags = {"workflow": "compare", **({"command": command[:5000]} if command else {})}
    params = {"seeds": seeds, "strategies": list(strategies), "split_seed": split_seed, "reference": reference}
    parent_id = start_parent_run(client, experiment_id, f"compare_{stamp}", tags, params, overrides)
    logger.info(f"comparison {out}: MLflow parent run {parent_id}; strategies {list(strategies)}, seeds {seeds}")

    results: dict[str, list[dict]] = {s: [] for s in strategies}
    embeddings: dict[str, str] = {}
    status = "FAILED"
    try:
        for seed in seeds:
            for strategy in strategies:
                name = f"{strategy}_seed{seed}"
                run_dir = os.path.join(out, name)
                run_name = f"{name}_{stamp}"
                common = {**shared, "seed": seed, "ckpt_dir": os.path.join(out, "models", f"seed{seed}")}
                logger.info(f"--- {name}: training, then evaluation on the test split")
                summary, child = train_and_evaluate(
                    bundle_root, STRATEGIES[strategy], client, experiment_id, run_name, run_dir, parent_id, **common
                )
                summary["seed"], summary["mlflow_run_id"] = seed, child.info.run_id
                results[strategy].append(summary)
                if seed == seeds[0]:
                    embeddings[strategy] = os.path.join(run_dir, "test", "embeddings.npz")
        if reference:
            logger.info("--- reference: logistic regression on LA statistics")
            row = reference_row(parser, os.path.abspath(output_dir), split_file, detector_ckpt, split_seed)
            results = {"reference": [row], **results}
            for k, v in flatten_metrics(row["metrics"], "reference_test").items():
                if not math.isnan(v):
                    client.log_metric(parent_id, k, v)
        tables = publish_tables(
            client,
            parent_id,
            out,
            results,
            f"Command: `{command}`" if command else "",
            ("f1", "specificity", "precision", "recall"),
            (os.path.join(out, "settings.json"), split_file),
        )
        if projection != "none" and embeddings:
            panels = []
            used = "tsne"
            for strategy, path in embeddings.items():
                z = np.load(path)
                pts, used = project_embeddings(z["embeddings"], projection, seeds[0])
                panels.append(
                    (f"{DISPLAY[strategy]} (seed {seeds[0]})", pts, z["target"][:, SCORE_KEYS.index("fibrosis")])
                )
            tables["embeddings"] = plot_embeddings(
                panels, os.path.join(out, f"embeddings_{used}.png"), {"tsne": "t-SNE", "umap": "UMAP"}[used]
            )
            client.log_artifact(parent_id, tables["embeddings"])
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status)
    print(Path(tables["markdown"]).read_text(encoding="utf-8"), flush=True)
    logger.info(f"comparison written to {out}")
    return {"dir": out, "parent_run_id": parent_id, "results": results, "tables": tables}


def reevaluate(
    compare_dir: str,
    overrides: dict | None = None,
    tag: str = "reeval",
    reference: bool = True,
    command: str = "",
    bundle_root: str | None = None,
) -> dict:
    """Evaluate the checkpoints of a finished comparison again with other settings, and tabulate as it did.

    E.g. models trained on the ground-truth LA slices (``qa_slices: mask``), verdicts from the slices the trained
    LA detector selects (``{"qa_slices": "detector", "detector_ckpt": ...}``): the pipeline as a user runs it. Nothing
    is trained; the comparison's split, seeds, strategies and overrides are reused with ``overrides`` on top.

    Args:
        compare_dir: a ``compare_<time>`` folder written by :func:`compare_strategies`.
        overrides: config overrides on top of the comparison's.
        tag: name of the evaluation (folder ``<compare_dir>/<tag>_<time>/``, each run's ``<run>/<tag>/``).
        reference: add the reference row (with the new slice selection; the solver seeded with the comparison's
            split seed, as there).
        command: the command line, recorded.
        bundle_root: the bundle (default: the one this package sits in).

    Returns:
        ``{"dir", "parent_run_id", "results", "tables"}``.
    """
    from monai.bundle import ConfigParser

    compare_dir = os.path.abspath(compare_dir)
    settings_file = os.path.join(compare_dir, "settings.json")
    if not os.path.isfile(settings_file):
        raise DataError(f"{compare_dir}: no settings.json (not a folder written by the comparison)")
    settings = json.load(open(settings_file))
    bundle_root = os.path.abspath(bundle_root or default_bundle_root())
    output_dir = os.path.dirname(compare_dir)
    merged = {**settings["overrides"], **dict(overrides or {})}
    split_file = merged.get("split_file") or os.path.join(compare_dir, "split.json")
    stamp = time.strftime("%Y%m%d_%H%M%S")
    out = os.path.join(compare_dir, f"{tag}_{stamp}")
    os.makedirs(out, exist_ok=True)
    parser = ConfigParser()
    parser.read_config(bundle_configs(bundle_root, STRATEGIES["baseline"]))
    parser.update({"bundle_root": bundle_root, "output_dir": output_dir, **merged})
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or parser.get_parsed_content("tracking_uri")
    detector_ckpt = parser.get_parsed_content("detector_ckpt")
    client, experiment_id = mlflow_experiment(tracking_uri, parser.get_parsed_content("experiment_name"))
    tags = {"workflow": "reevaluate", "comparison": compare_dir, "command": command[:5000]}
    parent_id = start_parent_run(
        client,
        experiment_id,
        f"{tag}_{os.path.basename(compare_dir)}_{stamp}",
        tags,
        {"comparison": compare_dir},
        overrides,
    )
    settings_text = json.dumps(
        {"command": command, "comparison": compare_dir, "overrides": overrides or {}}, indent=1, default=str
    )
    Path(out, "settings.json").write_text(settings_text, encoding="utf-8")
    results: dict[str, list[dict]] = {s: [] for s in settings["strategies"]}
    status = "FAILED"
    try:
        for seed in settings["seeds"]:
            for strategy in settings["strategies"]:
                name = f"{strategy}_seed{seed}"
                eval_dir = os.path.join(compare_dir, name, tag)
                common = {
                    **merged,
                    "bundle_root": bundle_root,
                    "output_dir": output_dir,
                    "split_file": split_file,
                    "detector_ckpt": detector_ckpt,
                    "seed": seed,
                    "ckpt_dir": os.path.join(compare_dir, "models", f"seed{seed}"),
                }
                logger.info(f"--- {name}: evaluation ({tag})")
                summary = evaluate_workflow(
                    bundle_root,
                    STRATEGIES[strategy],
                    eval_dir,
                    run_name=f"{name}_{tag}_{stamp}",
                    parent_run_id=parent_id,
                    projection="none",
                    **common,
                )
                summary["seed"] = seed
                results[strategy].append(summary)
        if reference:
            row = reference_row(parser, output_dir, split_file, detector_ckpt, settings.get("split_seed", 0))
            results = {"reference": [row], **results}
        note = f"Command: `{command}`" if command else ""
        tables = publish_tables(client, parent_id, out, results, note, artifacts=[os.path.join(out, "settings.json")])
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status)
    print(Path(tables["markdown"]).read_text(encoding="utf-8"), flush=True)
    return {"dir": out, "parent_run_id": parent_id, "results": results, "tables": tables}
