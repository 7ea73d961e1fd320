"""Retrain on the curated datalist and compare with the full one: same strategy, split, seeds and settings; one table.

Each (datalist, seed) trains with the bundle's own workflow and is evaluated on the test patients (which curation
never touches), as the strategy comparison does (:mod:`bundle.evaluation.compare`); every run is an MLflow child of
one parent run holding the table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bundle.errors import DataError
from bundle.evaluation.compare import STRATEGIES, publish_tables
from bundle.evaluation.runs import bundle_configs, mlflow_experiment, start_parent_run, train_and_evaluate

__all__ = ["compare_curation"]

logger = logging.getLogger(__name__)


def compare_curation(
    curation_dir: str,
    overrides: dict | None = None,
    seeds: int | Sequence[int] = 1,
    strategy: str = "baseline",
    output_dir: str | None = None,
    bundle_root: str = ".",
    command: str = "",
) -> dict:
    """Train ``strategy`` on the full and on the curated datalist of a curation run and tabulate their test scores.

    Args:
        curation_dir: a ``curate_<time>`` run folder (``curation_summary.json``, ``split.json``,
            ``datalist_curated.json``).
        overrides: config overrides for every run (``spatial_size``, ``qa_slices``, ``max_epochs``, ...): pass the
            ones the curation ran with. ``datalist``, ``dataset_dir`` and ``split_file`` are the curation's.
        seeds: K (seeds ``0..K-1``) or the seeds; each seed trains both datalists.
        strategy: among :data:`bundle.evaluation.compare.STRATEGIES`.
        output_dir: the bundle's ``output_dir`` (default: the curation run's parent folder); everything goes to
            ``<output_dir>/curate_compare_<time>/``.
        bundle_root: the bundle (repository root).
        command: the command line, recorded with the results.

    Returns:
        ``{"dir", "parent_run_id", "results", "tables"}``.

    Raises:
        DataError: one line, when ``curation_dir`` is not a finished curation run.
    """
    from monai.bundle import ConfigParser

    curation_dir = os.path.abspath(curation_dir)
    summary_file = os.path.join(curation_dir, "curation_summary.json")
    split_file = os.path.join(curation_dir, "split.json")
    for f in (summary_file, split_file):
        if not os.path.isfile(f):
            raise DataError(f"{curation_dir}: no {os.path.basename(f)} (not a finished curation run)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    summary = json.loads(Path(summary_file).read_text(encoding="utf-8"))
    datalists = {"full": summary["datalist"], "curated": summary["curated_datalist"]}
    overrides = {k: v for k, v in dict(overrides or {}).items() if k not in ("datalist", "split_file")}
    bundle_root = os.path.abspath(bundle_root)
    output_dir = os.path.abspath(output_dir or os.path.dirname(curation_dir))
    stamp = time.strftime("%Y%m%d_%H%M%S")
    out = os.path.join(output_dir, f"curate_compare_{stamp}")
    os.makedirs(out, exist_ok=True)

    parser = ConfigParser()
    parser.read_config(bundle_configs(bundle_root, STRATEGIES[strategy]))
    parser.update({"bundle_root": bundle_root, "output_dir": output_dir, **overrides})
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or parser.get_parsed_content("tracking_uri")
    client, experiment_id = mlflow_experiment(tracking_uri, parser.get_parsed_content("experiment_name"))
    shared = {
        **overrides,
        "bundle_root": bundle_root,
        "output_dir": output_dir,
        "split_file": split_file,
        "dataset_dir": summary["dataset_dir"],
        "detector_ckpt": parser.get_parsed_content("detector_ckpt"),
        "overwrite_checkpoint": True,
    }
    settings = {
        "command": command,
        "curation": curation_dir,
        "seeds": seeds,
        "strategy": strategy,
        "datalists": datalists,
        "overrides": overrides,
    }
    Path(out, "settings.json").write_text(json.dumps(settings, indent=1, default=str), encoding="utf-8")
    tags = {"workflow": "curate_compare", "curation": curation_dir, "command": command[:5000]}
    params = {"seeds": seeds, "strategy": strategy, "curation": curation_dir, **datalists}
    parent_id = start_parent_run(client, experiment_id, f"curate_compare_{stamp}", tags, params, overrides)
    logger.info(f"curation comparison {out}: MLflow parent run {parent_id}; {strategy}, seeds {seeds}")

    results: dict[str, list[dict]] = {name: [] for name in datalists}
    train_sizes: dict[str, str] = {}
    status = "FAILED"
    try:
        for seed in seeds:
            for name, datalist in datalists.items():
                run = f"{name}_seed{seed}"
                run_dir, run_name = os.path.join(out, run), f"curate_compare_{run}_{stamp}"
                common = {**shared, "datalist": datalist, "seed": seed, "ckpt_dir": os.path.join(out, "models", run)}
                logger.info(f"--- {run}: training {strategy} on {datalist}, then evaluation on the test split")
                scored, child = train_and_evaluate(
                    bundle_root, STRATEGIES[strategy], client, experiment_id, run_name, run_dir, parent_id, **common
                )
                client.set_tag(child.info.run_id, "datalist_kind", name)
                train_sizes[name] = child.data.params.get("train_slices", "?")
                scored["seed"], scored["mlflow_run_id"] = seed, child.info.run_id
                results[name].append(scored)
        note = (
            f"Training slices: full {train_sizes.get('full')}, curated {train_sizes.get('curated')} "
            f"({summary['flagged_scans']} of {summary['scans']} training scans flagged and "
            f"{summary.get('excluded_slices', 0)} slices of kept scans left out by the curation {curation_dir}). "
            f"Same split, seeds {seeds}, strategy {strategy}."
        )
        if command:
            note += f"\n\nCommand: `{command}`"
        tables = publish_tables(
            client,
            parent_id,
            out,
            results,
            note,
            ("f1", "specificity", "precision", "recall", "balanced_accuracy"),
            (os.path.join(out, "settings.json"), summary_file, split_file),
        )
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status)
    print(Path(tables["markdown"]).read_text(encoding="utf-8"), flush=True)
    logger.info(f"curation comparison written to {out}")
    return {"dir": out, "parent_run_id": parent_id, "results": results, "tables": tables}
