"""The Optuna search of the QA recipe: the validation objective by hand, and a two-trial search on tiny generated
data (the default recipe first, one MLflow parent run per trial, resume without retraining)."""

import json
import os

import mlflow
import pytest
import torch

from bundle.evaluation.qa_search import qa_search, validation_objective
from tests.evaluation.test_qa_crossval import TINY


def _pred(val_logits, val_targets, test_logits=((9.0, 9.0, 9.0, 9.0),)):
    return {
        "val_logits": [list(v) for v in val_logits],
        "val_targets": [list(t) for t in val_targets],
        "test_logits": [list(v) for v in test_logits],  # never read: a huge logit would change nothing
        "test_targets": [[0, 0, 0, 0]],
    }


def test_validation_objective_pools_the_folds_validation_parts_by_hand():
    # labels nulling, sharpness, enhancement, fibrosis; pooled logits per attribute 1, -1, 2, 0.5 for targets 1 0 1 0
    # -> decisions 1 0 1 1: recall 1, specificity 0.5, balanced accuracy 0.75; AUROC 1 (both positives above both
    # negatives); per label (0.75 + 1) / 2 = 0.875. Fibrosis logits 1, -1, -2, 0.5 -> decisions 1 0 0 1: BA 0.5;
    # AUROC: 1 beats -1 and 0.5, -2 beats neither -> 2/4 = 0.5; per label 0.5.
    a = _pred([[1, 1, 1, 1], [-1, -1, -1, -1]], [[1, 1, 1, 1], [0, 0, 0, 0]])
    b = _pred([[2, 2, 2, -2], [0.5, 0.5, 0.5, 0.5]], [[1, 1, 1, 1], [0, 0, 0, 0]])
    out = validation_objective([a, b])
    assert out["n_val"] == 4
    assert out["nulling.balanced_accuracy"] == pytest.approx(0.75) and out["nulling.auroc"] == pytest.approx(1.0)
    assert out["fibrosis.balanced_accuracy"] == pytest.approx(0.5) and out["fibrosis.auroc"] == pytest.approx(0.5)
    assert out["objective"] == pytest.approx((3 * 0.875 + 0.5) / 4)
    assert validation_objective([a, b], "fibrosis")["objective"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown objective"):
        validation_objective([a], "test")
    with pytest.raises(ValueError, match="no validation predictions"):
        validation_objective([])


def test_search_refuses_a_space_key_that_is_not_a_recipe_key(tmp_path):
    with pytest.raises(ValueError, match=r"search space keys \['dropout_rate'\] are not recipe keys"):
        qa_search(str(tmp_path), space={"dropout_rate": ("categorical", [0.1])})
    with pytest.raises(ValueError, match="region or artifact"):
        qa_search(str(tmp_path), strategy="reference")


@pytest.mark.slow
def test_two_trial_search_starts_with_the_default_recipe_logs_each_trial_and_resumes(tiny_demo, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "search"
    space = {"lr": ("log", 1e-4, 1e-2), "slices_per_scan": ("categorical", [1, 2])}
    kw = dict(datalist=tiny_demo, base_recipe=TINY, space=space, folds=2, n_val=1, startup_trials=1)
    res = qa_search(str(out), n_trials=2, **kw)
    trials = res["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert trials[0]["params"] == {"lr": 2e-3, "slices_per_scan": 2}  # the default recipe's lr, TINY's slices
    assert res["best"]["value"] == max(t["value"] for t in trials)
    best = json.load(open(out / "best_recipe.json"))
    assert best["size"] == TINY["size"] and best["lr"] == res["best"]["recipe"]["lr"]  # base overrides kept
    for t in trials:  # each trial a one-seed cross-validation of the two folds, judged on validation only
        folder = out / t["folder"]
        assert sorted(os.listdir(folder / "region")) == ["fold0_seed0", "fold1_seed0"]
        assert 0.0 <= t["scores"]["objective"] <= 1.0
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    exp = client.get_experiment_by_name("qa_crossval")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["search.trial"] for r in parents) == ["0", "1"]
    assert all("search.val.objective" in r.data.metrics for r in parents)
    lines = open(out / "trials.csv").read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("number,value,lr,slices_per_scan,minutes")
    stamp = os.path.getmtime(out / trials[0]["folder"] / "region" / "fold0_seed0" / "model.pt")
    again = qa_search(str(out), n_trials=2, **kw)  # complete: nothing trained again
    assert [t["number"] for t in again["trials"]] == [0, 1]
    assert os.path.getmtime(out / trials[0]["folder"] / "region" / "fold0_seed0" / "model.pt") == stamp
    import optuna

    study = optuna.load_study(study_name="qa_search", storage=f"sqlite:///{out}/optuna.db")
    stale = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})  # a trial left RUNNING
    stale.suggest_categorical("slices_per_scan", [1, 2])
    third = qa_search(str(out), n_trials=3, **kw)["trials"]  # the stale trial failed and its parameters rerun
    assert len(third) == 3 and third[2]["params"] == stale.params
    states = [
        t.state.name for t in optuna.load_study(study_name="qa_search", storage=f"sqlite:///{out}/optuna.db").trials
    ]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]


def test_compare_runs_scores_each_runs_seed_ensembles_on_validation_and_held_out_parts(tmp_path):
    import subprocess
    import sys

    from bundle.errors import DataError
    from bundle.evaluation.qa_search import compare_runs

    def write(run, fold, seed, val, test):
        d = tmp_path / run / "region" / f"fold{fold}_seed{seed}"
        d.mkdir(parents=True)
        pred = {"fold": fold, "seed": seed, "seconds": 60.0 * (seed + 1), "strategy": "region", "temperature": [1] * 4}
        for part, logits in (("val", val), ("test", test)):
            pred[f"{part}_logits"] = [[v] * 4 for v in logits]
            pred[f"{part}_targets"] = [[1] * 4, [0] * 4]
            pred[f"{part}_scans"] = [f"f{fold}{part}a", f"f{fold}{part}b"]
            pred[f"{part}_patients"] = ["p", "q"]
        (d / "predictions.json").write_text(json.dumps(pred))

    # fold 0, two seeds: mean validation logits (1 + 3) / 2 = 2 for the positive, (-3 + 1) / 2 = -1 for the negative:
    # both right. Fold 1, one seed so far: validation 0.5 (positive, right) and 0.2 (negative, wrong). Pooled:
    # positives 2, 0.5 (both > 0), negatives -1, 0.2: recall 1, specificity 0.5 -> balanced accuracy 0.75; AUROC:
    # 2 and 0.5 beat -1 and 0.2 -> 1.0. Held out: fold 0 mean (-1 + -1) / 2 = -1 for the positive (wrong), -2 for the
    # negative; fold 1 positive 1, negative -1: recall 0.5, specificity 1 -> 0.75; AUROC over the four pairs:
    # -1 > -2, -1 = -1 (a tie counts 0.5), 1 > -2, 1 > -1 -> (1 + 0.5 + 1 + 1) / 4 = 0.875.
    write("a", 0, 0, [1, -3], [-1, -2])
    write("a", 0, 1, [3, 1], [-1, -2])
    write("a", 1, 0, [0.5, 0.2], [1, -1])
    (row,) = compare_runs([str(tmp_path / "a")])
    assert row["runs"] == 3 and row["minutes"] == pytest.approx((1 + 2 + 1) / 3)
    assert row["val"]["fibrosis.balanced_accuracy"] == pytest.approx(0.75) and row["val"]["n_val"] == 4
    assert row["val"]["nulling.auroc"] == pytest.approx(1.0)
    assert row["test"]["sharpness.balanced_accuracy"] == pytest.approx(0.75)
    assert row["test"]["sharpness.auroc"] == pytest.approx(0.875)
    with pytest.raises(DataError, match="no finished fold"):
        compare_runs([str(tmp_path / "missing")])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cli = [sys.executable, os.path.join(root, "scripts", "qa_compare_runs.py"), str(tmp_path / "a")]
    out = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "| a |" in out and "0.750 / 1.000" in out
    bad = subprocess.run([*cli[:2], str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("ERROR") and len(bad.stderr.strip().splitlines()) == 1
