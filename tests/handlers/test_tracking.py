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
