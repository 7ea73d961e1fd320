"""The shared workflow and MLflow helpers of the comparisons and cross-validations, on a real SQLite MLflow store."""

import os

from bundle.evaluation.runs import (
    bundle_configs,
    default_bundle_root,
    mlflow_experiment,
    start_parent_run,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_configs_stack_on_common_and_root_is_this_bundle():
    assert default_bundle_root() == ROOT
    assert bundle_configs("/b", ["qa_baseline.yaml", "evaluate.yaml"]) == [
        "/b/configs/common.yaml",
        "/b/configs/qa_baseline.yaml",
        "/b/configs/evaluate.yaml",
    ]
    assert all(os.path.isfile(p) for p in bundle_configs(ROOT, ["train.yaml"]))


def test_experiment_made_once_artifacts_beside_the_store_and_parent_params(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client, exp = mlflow_experiment(uri, "cmp")
    assert mlflow_experiment(uri, "cmp")[1] == exp  # found, not made twice
    assert client.get_experiment(exp).artifact_location.endswith(f"{tmp_path.name}/mlruns")
    run_id = start_parent_run(client, exp, "parent", {"workflow": "t"}, {"seeds": [0, 1]}, {"train#lr": 0.5})
    run = client.get_run(run_id)
    assert run.info.run_name == "parent" and run.data.tags["workflow"] == "t"
    assert run.data.params == {"seeds": "[0, 1]", "override.train::lr": "0.5"}
