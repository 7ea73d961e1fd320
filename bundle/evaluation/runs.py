"""Running the bundle's own workflows from Python, tracked in MLflow: the one place the comparisons build them.

The strategy comparison (:mod:`bundle.evaluation.compare`), its re-evaluation, the curated-vs-full comparison
(:mod:`bundle.curation.compare`) and the cross-validations (:mod:`bundle.evaluation.crossval`,
:mod:`bundle.evaluation.qa_crossval`) all train and evaluate through these functions: the same config stacking, the same
property check, the same parent/child MLflow runs and the same reference row.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "bundle_configs",
    "bundle_workflow",
    "default_bundle_root",
    "evaluate_workflow",
    "mlflow_experiment",
    "reference_row",
    "run_workflow",
    "start_parent_run",
    "strategy_configs",
    "train_and_evaluate",
]


def default_bundle_root() -> str:
    """The bundle (repository root) this package sits in."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bundle_configs(root: str, files: Sequence[str]) -> list[str]:
    """``configs/common.yaml`` and ``files`` (names under ``configs/``), in stacking order, as paths."""
    return [os.path.join(root, "configs", f) for f in ("common.yaml", *files)]


def strategy_configs(root: str | None = None) -> dict[str, dict]:
    """The QA strategies the bundle's configs define, in one place: ``configs/qa_baseline.yaml`` (every QA workflow's
    base) and each other ``configs/qa_<name>.yaml``, stacked on it. A strategy is named by its file's ``strategy``,
    titled by its ``strategy_title`` and ordered by its ``strategy_rank`` (then by file name).

    Args:
        root: the bundle (default: the one this package sits in).

    Returns:
        ``{strategy: {"files": config files stacked on common.yaml, "title": ...}}``, in rank order.

    Raises:
        ConfigError: for a ``qa_*.yaml`` without a ``strategy``.
    """
    import glob

    import yaml

    from bundle.errors import ConfigError

    base = "qa_baseline.yaml"
    found = []
    for path in sorted(glob.glob(os.path.join(root or default_bundle_root(), "configs", "qa_*.yaml"))):
        with open(path, encoding="utf-8") as f:
            body = yaml.safe_load(f) or {}
        if not body.get("strategy"):
            raise ConfigError(f"{path}: a QA strategy config names its strategy (strategy: <name>)")
        found.append((float(body.get("strategy_rank", float("inf"))), os.path.basename(path), body))
    out = {}
    for _, name, body in sorted(found, key=lambda x: x[:2]):
        files = [base] if name == base else [base, name]
        out[str(body["strategy"])] = {"files": files, "title": str(body.get("strategy_title", body["strategy"]))}
    return out


def bundle_workflow(root: str, files: Sequence[str], workflow_type: str, /, **overrides):
    """A MONAI ``ConfigWorkflow`` of ``configs/common.yaml`` + ``files`` with ``overrides``, as ``monai.bundle run``.

    Args:
        root: the bundle (repository root).
        files: config files under ``configs/`` stacked on ``common.yaml``.
        workflow_type: ``"train"`` or ``"infer"`` (MONAI's property set to check).
        overrides: config ids and values.
    """
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=bundle_configs(root, files),
        workflow_type=workflow_type,
        meta_file=os.path.join(root, "configs", "metadata.json"),
        **overrides,
    )


def run_workflow(wf) -> None:
    """``initialize``, MONAI's property check, ``run``, ``finalize``. The caller drops the workflow and runs
    ``gc.collect()`` (its engines and data hold reference cycles), as :func:`train_and_evaluate` does.

    Raises:
        RuntimeError: when the workflow misses required properties.
    """
    wf.initialize()
    missing = wf.check_properties()
    if missing:
        raise RuntimeError(f"workflow misses properties {missing}")
    wf.run()
    wf.finalize()


def mlflow_experiment(tracking_uri: str, experiment_name: str):
    """The MLflow client of ``tracking_uri`` and the id of ``experiment_name`` (created where absent).

    A new experiment in a SQLite store keeps its artifacts next to the database, as MONAI's ``MLFlowHandler`` does.

    Returns:
        ``(client, experiment_id)``.
    """
    import mlflow
    from monai.utils import path_to_uri

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = path_to_uri(Path(tracking_uri[len("sqlite:///") :]).parent / "mlruns")
        exp = client.get_experiment(client.create_experiment(experiment_name, artifact_location=location))
    return client, exp.experiment_id


def start_parent_run(
    client, experiment_id: str, run_name: str, tags: dict, params: dict, overrides: dict | None
) -> str:
    """Create the parent MLflow run of a comparison and log ``params`` and every config override (``override.<id>``).

    Returns:
        the run id.
    """
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    for k, v in {**params, **{f"override.{k.replace('#', '::')}": v for k, v in (overrides or {}).items()}}.items():
        client.log_param(run_id, k, str(v)[:6000])
    return run_id


def evaluate_workflow(root: str, files: Sequence[str], run_dir: str, /, **overrides) -> dict:
    """Evaluate a trained checkpoint on the test patients with ``configs/evaluate.yaml`` stacked on ``files``.

    Args:
        root: the bundle.
        files: the training workflow's config files (``evaluate.yaml`` is appended).
        run_dir: where the evaluation writes (its ``metrics.json`` among them).
        overrides: config overrides (``run_name``, ``mlflow_run_id`` or ``parent_run_id``, ``ckpt_dir``, ...).

    Returns:
        the evaluation's ``metrics.json`` content.
    """
    run_workflow(bundle_workflow(root, [*files, "evaluate.yaml"], "infer", run_dir=run_dir, **overrides))
    gc.collect()  # the workflow is unreferenced now: free its cycles before the next one
    return json.loads(Path(run_dir, "metrics.json").read_text(encoding="utf-8"))


def train_and_evaluate(
    root: str,
    files: Sequence[str],
    client,
    experiment_id: str,
    run_name: str,
    run_dir: str,
    parent_run_id: str,
    /,
    **overrides,
) -> tuple[dict, object]:
    """Train ``files`` as an MLflow child run of ``parent_run_id``, then evaluate it on the test patients into that run.

    Args:
        root: the bundle.
        files: the training workflow's config files under ``configs/`` (stacked on ``common.yaml``).
        client: the MLflow client of the store the workflows track into.
        experiment_id: the experiment of ``parent_run_id``.
        run_name: the child run's name (unique in the experiment: the child is found by it).
        run_dir: the training's folder; the evaluation writes to ``<run_dir>/test``.
        parent_run_id: the parent MLflow run.
        overrides: config overrides of both workflows (``seed``, ``ckpt_dir``, ``split_file``, ...).

    Returns:
        ``(the evaluation's metrics.json content, the child MLflow run)``.
    """
    run_workflow(
        bundle_workflow(
            root, files, "train", run_name=run_name, run_dir=run_dir, parent_run_id=parent_run_id, **overrides
        )
    )
    gc.collect()  # the training workflow is unreferenced now: free its cycles before the evaluation
    child = client.search_runs([experiment_id], f"tags.mlflow.runName = '{run_name}'")[0]
    summary = evaluate_workflow(
        root,
        files,
        os.path.join(run_dir, "test"),
        run_name=run_name,
        mlflow_run_id=child.info.run_id,
        projection="none",
        **overrides,
    )
    return summary, child


def reference_row(parser, output_dir: str, split_file: str, detector_ckpt: str, seed: int) -> dict:
    """The logistic-regression reference on the same split and LA slices as the networks: one results row.

    Args:
        parser: a ``ConfigParser`` of the QA baseline config with the comparison's overrides.
        output_dir: the bundle's ``output_dir``.
        split_file: the split every run shares.
        detector_ckpt: the LA detector that selects the slices.
        seed: the solver's random state (the comparison's split seed).

    Returns:
        the row as the networks' rows: ``n_slices``, ``n_scans``, ``seed``, ``metrics``.
    """
    from bundle.data import prepare_data
    from bundle.evaluation.reference import fit_predict_reference
    from bundle.evaluation.report import score_predictions
    from bundle.inference import select_qa_slices

    data = prepare_data(
        parser.get_parsed_content("dataset_dir"), parser.get_parsed_content("datalist"), output_dir, split_file
    )
    args = {**parser.get_parsed_content("qa_slice_args"), "detector_ckpt": detector_ckpt}
    train, test = select_qa_slices(data, "train", **args), select_qa_slices(data, "test", **args)
    probs, volumes, targets = fit_predict_reference(train, test, seed=seed)
    scored = score_predictions(volumes, probs, targets)
    return {"n_slices": scored["n_slices"], "n_scans": scored["n_scans"], "seed": seed, "metrics": scored["metrics"]}
