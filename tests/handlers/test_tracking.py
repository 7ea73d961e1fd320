"""MLflowTracker's shared run settings (the configs' @mlflow_run): merged under explicit arguments, checked."""

import pytest

from bundle.handlers import MLflowTracker


def test_run_settings_are_merged_and_explicit_arguments_win(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    run = {"tracking_uri": uri, "experiment_name": "e", "run_name": "r", "parent_run_id": "p1", "bundle_root": "/b"}
    t = MLflowTracker(run=run)
    assert (t.client.tracking_uri, t.experiment_name, t.run_name, t.bundle_root) == (uri, "e", "r", "/b")
    assert t.tags["mlflow.parentRunId"] == "p1"
    t = MLflowTracker(run=run, run_name="mine", parent_run_id="p2", bundle_root="/c")
    assert (t.run_name, t.tags["mlflow.parentRunId"], t.bundle_root) == ("mine", "p2", "/c")
    assert MLflowTracker(run={**run, "parent_run_id": None}).tags == {}


def test_unknown_run_setting_is_refused():
    with pytest.raises(ValueError, match=r"run: unknown keys \['tracking'\]"):
        MLflowTracker(run={"tracking": "x"})


def test_config_tunables_are_the_plain_top_level_entries():
    from bundle.utils import config_tunables

    config = {
        "lr": 0.001,
        "epochs": 30,
        "amp": False,
        "ckpt": None,
        "name": "detector",
        "sizes": [4, 8, 16],
        "expr": "$@lr * 2",
        "ref": "@lr",
        "macro": "%configs/common.yaml#lr",
        "nested": [[1, 2]],
        "mixed": [1, "@lr"],
        "net": {"_target_": "UNet"},
        "_meta_": 1,
    }
    plain = ("lr", "epochs", "amp", "ckpt", "name", "sizes")  # numbers, booleans, null, a string, a flat list
    assert config_tunables(config) == {k: config[k] for k in plain}


def test_tunables_of_the_config_file_are_logged_with_the_derived_params_over_them(tmp_path):
    import json

    import mlflow
    from ignite.engine import Engine

    config = {f"knob{i:03d}": i for i in range(150)}  # more than MLflow's 100 parameters per call
    config.update(seed=0, workflow_name="detector", expr="$@seed + 1")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tracker = MLflowTracker(
        tracking_uri=uri,
        experiment_name="e",
        run_name="r",
        experiment_param={"seed": 7, "network": "UNet"},
        config_file=str(path),
        iteration_log=False,
        close_on_complete=True,
    )
    engine = Engine(lambda e, b: None)
    tracker.attach(engine)
    engine.run([0], max_epochs=1)
    (run,) = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("e").experiment_id])
    params = run.data.params
    assert params["knob000"] == "0" and params["knob149"] == "149" and params["workflow_name"] == "detector"
    assert params["seed"] == "7" and params["network"] == "UNet"  # the derived (explicit) value wins
    assert "expr" not in params and params["max_epochs"] == "1"
