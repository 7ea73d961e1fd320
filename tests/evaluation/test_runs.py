"""The shared workflow and MLflow helpers of the comparisons and cross-validations, on a real SQLite MLflow store."""

import os

import pytest

from bundle.errors import ConfigError
from bundle.evaluation.runs import (
    bundle_configs,
    default_bundle_root,
    mlflow_experiment,
    start_parent_run,
    strategy_configs,
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


def test_the_strategies_are_the_configs_qa_files(tmp_path):
    found = strategy_configs()  # this bundle's: the paper's three, each stacked on the baseline
    assert list(found) == ["baseline", "multitask", "contrastive"]  # the paper's order, by strategy_rank
    assert found["multitask"] == {"files": ["qa_baseline.yaml", "qa_multitask.yaml"], "title": "Multi-Task QA"}
    assert all(os.path.isfile(p) for c in found.values() for p in bundle_configs(ROOT, c["files"]))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "qa_baseline.yaml").write_text("strategy: baseline\nstrategy_rank: 1\n")
    (configs / "qa_alpha.yaml").write_text("strategy: mine\nstrategy_title: My QA\n")  # named by its key, not file
    (configs / "qa_zeta.yaml").write_text("strategy: zeta\nstrategy_rank: 2\n")  # ranked before the unranked
    (configs / "train.yaml").write_text("strategy: not_a_qa_file\n")
    assert strategy_configs(str(tmp_path)) == {
        "baseline": {"files": ["qa_baseline.yaml"], "title": "baseline"},
        "zeta": {"files": ["qa_baseline.yaml", "qa_zeta.yaml"], "title": "zeta"},
        "mine": {"files": ["qa_baseline.yaml", "qa_alpha.yaml"], "title": "My QA"},
    }
    assert list(strategy_configs(str(tmp_path))) == ["baseline", "zeta", "mine"]
    (configs / "qa_broken.yaml").write_text("max_epochs: 3\n")
    with pytest.raises(ConfigError, match="qa_broken.yaml"):
        strategy_configs(str(tmp_path))


def test_experiment_made_once_artifacts_beside_the_store_and_parent_params(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client, exp = mlflow_experiment(uri, "cmp")
    assert mlflow_experiment(uri, "cmp")[1] == exp  # found, not made twice
    assert client.get_experiment(exp).artifact_location.endswith(f"{tmp_path.name}/mlruns")
    run_id = start_parent_run(client, exp, "parent", {"workflow": "t"}, {"seeds": [0, 1]}, {"train#lr": 0.5})
    run = client.get_run(run_id)
    assert run.info.run_name == "parent" and run.data.tags["workflow"] == "t"
    assert run.data.params == {"seeds": "[0, 1]", "override.train::lr": "0.5"}
