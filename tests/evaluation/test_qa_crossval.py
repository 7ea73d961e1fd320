"""The QA cross-validation on tiny generated data: every strategy for one short epoch, Table 2, MLflow, resume,
the export as a shipped checkpoint and the inference workflow using it through its plan (region cut, mean-logit
verdict, calibrated probabilities)."""

import csv
import json
import os

import mlflow
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.evaluation.qa_crossval import QA_STRATEGIES, WORKFLOW_STRATEGIES, export_qa_ensemble, qa_cross_validate
from bundle.inference import qa_network, qa_plan
from tests.conftest import TINY_QA, write_known_detector

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "pixel_mm": 2.5,
    "size": 16,
    "margin": 2,
    "epochs": 1,
    "pretrain_epochs": 1,
    "slices_per_scan": 2,
    "scans_per_batch": 4,
    "network": {
        "block_inplanes": [4, 8, 8, 8],
        "head_channels": 4,
        "qa_channels": 4,
        "intensity_stats": True,
        "stats_skip": True,
    },
}  # the default recipe's heads
REGION_STRATEGIES = tuple(s for s in QA_STRATEGIES if s not in WORKFLOW_STRATEGIES)


@pytest.mark.slow
def test_every_strategy_table2_resume_export_and_inference(tiny_demo, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "qa_cv"
    recipe = {**TINY, "scan_prior": ["nulling"]}  # with a scan prior, which inference must feed too
    res = qa_cross_validate(str(out), datalist=tiny_demo, strategies=REGION_STRATEGIES, folds=2, n_val=1, recipe=recipe)
    table = res["table"]
    assert set(table) == set(REGION_STRATEGIES)
    for s in REGION_STRATEGIES:
        assert table[s]["runs"] == 2 and "balanced_accuracy" in table[s]["pooled"]["fibrosis"]
    with open(out / "oof_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    quality = json.load(open(tiny_demo))["quality"]
    assert len(rows) == len(REGION_STRATEGIES) * len(quality) * 4  # every scan out of fold once per strategy and label
    assert all(r["verdict"] == str(int(float(r["probability"]) >= 0.5)) for r in rows)  # the one threshold rule
    for name in ("table2.md", "table2.csv", "roc.png", "reliability.png", "recipe.json"):
        assert os.path.isfile(out / name), name
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    exp = client.get_experiment_by_name("qa_crossval")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 + 2 * len(REGION_STRATEGIES)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert "region.fibrosis.auroc" in parent.data.metrics or "region.fibrosis.balanced_accuracy" in parent.data.metrics
    # resume: nothing retrained
    stamp = os.path.getmtime(out / "region" / "fold0_seed0" / "model.pt")
    qa_cross_validate(str(out), datalist=tiny_demo, strategies=("region",), folds=2, n_val=1, recipe=recipe)
    assert os.path.getmtime(out / "region" / "fold0_seed0" / "model.pt") == stamp

    # the fold models as one shipped checkpoint with its plan; the inference config reads everything from the plan
    models = tmp_path / "models"
    ckpt = export_qa_ensemble(str(out), str(models / "qa.pt"))
    with pytest.raises(FileExistsError):
        export_qa_ensemble(str(out), ckpt)
    plan = qa_plan(ckpt)
    assert plan["rule"] == "mean_logit" and plan["region"] == {"pixel_mm": 2.5, "size": 16, "normalise": 0.5}
    assert len(plan["temperature"]) == 4 and plan["cam_layer"] == "members.0.encoder.layer4"
    net = qa_network(plan, None)
    assert len(net.members) == 2 and net.combine == "logit" and net.uses_scan_prior
    fitted = torch.load(ckpt)["members.0.scan_prior.weight"]
    assert float(fitted[0].abs().sum()) > 0 and float(fitted[1:].abs().sum()) == 0  # nulling only
    open_bounds = {"min_ml": 0.0, "max_ml": 1e9, "min_extent_mm": 0.0, "max_extent_mm": 1e9, "min_kept": 0.0}
    detector = write_known_detector(models, 0.6, name="detector.pt", spatial_size=32, la_bounds=open_bounds)
    image = os.path.join(os.path.dirname(tiny_demo), quality[0]["image"])
    report_dir = tmp_path / "report"
    wf = ConfigWorkflow(
        config_file=[os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml")],
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        workflow_type="infer",
        input=image,
        output_dir=str(report_dir),
        ckpt_path=detector,
        qa_ckpt=ckpt,
        min_slices=4,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    report = json.load(open(report_dir / "qa_report.json"))
    assert report["settings"]["qa_rule"] == "mean_logit" and report["settings"]["qa_region"]["size"] == 16
    scan = report["scans"][0]
    assert scan["status"] in ("ok", "implausible_la"), scan
    assert 0.0 <= scan["p_fibrosis"] <= 1.0 and scan["diagnostic"] == int(scan["p_fibrosis"] >= 0.5)


@pytest.mark.slow
def test_the_papers_whole_slice_strategies_run_on_the_same_folds(tiny_demo, tmp_path):
    import numpy as np
    import pandas as pd

    torch.set_num_threads(1)
    out = tmp_path / "qa_cv"
    strategies = ("reference", *WORKFLOW_STRATEGIES)
    recipe = {**TINY, "workflow": TINY_QA}
    res = qa_cross_validate(str(out), datalist=tiny_demo, strategies=strategies, folds=2, n_val=1, recipe=recipe)
    assert set(res["table"]) == set(strategies)
    quality = json.load(open(tiny_demo))["quality"]
    with open(out / "oof_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(strategies) * len(quality) * 4  # every scan out of fold once per strategy and label
    folds = json.load(open(out / "folds.json"))["folds"]
    saved = json.load(open(out / "recipe.json"))["recipe"]["workflow"]
    assert saved["qa_slices"] == "mask" and saved["max_epochs"] == 1  # the defaults kept beside the overrides
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    exp = client.get_experiment_by_name("qa_crossval")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 + 2 * len(strategies)  # a workflow's training run is its fold's child run
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0].info.run_id
    for s in WORKFLOW_STRATEGIES:
        for k in range(2):
            fold_dir = out / s / f"fold{k}_seed0"
            pred = json.load(open(fold_dir / "predictions.json"))
            ref = json.load(open(out / "reference" / f"fold{k}_seed0" / "predictions.json"))
            assert pred["test_scans"] == ref["test_scans"] and pred["val_scans"] == ref["val_scans"]
            assert json.load(open(fold_dir / "split_in.json"))["test"] == folds[k]["test"]
            assert os.path.isfile(fold_dir / f"qa_{s}.pt")
            # the scan logit is the mean logit of the scan's slices in the evaluation's predictions
            slices = pd.read_csv(fold_dir / "test" / "slice_predictions.csv")
            first = slices[[os.path.basename(x).startswith(pred["test_scans"][0] + ".") for x in slices["scan"]]]
            p = np.clip(first["fibrosis_prob"].to_numpy(float), 1e-6, 1 - 1e-6)
            assert len(first) > 0
            assert pred["test_logits"][0][3] == pytest.approx(float(np.log(p / (1 - p)).mean()), abs=1e-5)
            run = client.get_run(pred["mlflow_run_id"])
            assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["cv_fold"] == str(k)
            assert "fibrosis.balanced_accuracy" in run.data.metrics and "val_mse" in run.data.metrics
    stamp = os.path.getmtime(out / "baseline" / "fold0_seed0" / "qa_baseline.pt")
    qa_cross_validate(str(out), datalist=tiny_demo, strategies=("baseline",), folds=2, n_val=1, recipe=recipe)
    assert os.path.getmtime(out / "baseline" / "fold0_seed0" / "qa_baseline.pt") == stamp  # resumed, not retrained
    history = json.load(open(out / "recipe.json"))["history"]  # each go's strategies kept
    assert [h["strategies"] for h in history] == [list(strategies), ["baseline"]]


def test_seed_ensembles_average_the_seeds_of_each_fold():
    import numpy as np

    from bundle.evaluation.qa_crossval import seed_ensembles
    from bundle.metrics.calibration import fit_temperature

    def pred(fold, seed, val, test):
        return {
            "strategy": "region",
            "fold": fold,
            "seed": seed,
            "seconds": 10.0 + seed,
            "val_logits": [[v] * 4 for v in val],
            "test_logits": [[v] * 4 for v in test],
            "val_targets": [[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]],
            "test_targets": [[1, 1, 1, 1]],
            "val_scans": ["a", "b", "c"],
            "test_scans": ["t"],
            "val_patients": ["A", "B", "C"],
            "test_patients": ["T"],
        }

    preds = [pred(0, 0, [1.0, -2.0, 0.5], [3.0]), pred(0, 1, [3.0, 0.0, -0.5], [1.0]), pred(1, 0, [0, 0, 0], [0])]
    out = seed_ensembles(preds)
    assert len(out) == 1  # fold 1 has one seed: no ensemble
    ens = out[0]
    assert ens["strategy"] == "region_ensemble" and ens["fold"] == 0 and ens["seeds"] == [0, 1]
    assert ens["test_logits"] == [[2.0] * 4] and ens["val_logits"][1] == [-1.0] * 4 and ens["seconds"] == 21.0
    mean_val = np.array([[2.0] * 4, [-1.0] * 4, [0.0] * 4])
    targets = np.array(preds[0]["val_targets"], float)
    assert ens["temperature"] == [fit_temperature(mean_val[:, j], targets[:, j]) for j in range(4)]
    assert ens["test_targets"] == [[1, 1, 1, 1]] and ens["test_scans"] == ["t"]
    assert seed_ensembles(preds[2:]) == []


@pytest.mark.slow
def test_two_seeds_give_an_ensemble_row_and_the_export_takes_every_seed(tiny_demo, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "qa_cv"
    res = qa_cross_validate(
        str(out), datalist=tiny_demo, strategies=("region",), seeds=(0, 1), folds=2, n_val=1, recipe=TINY
    )
    assert set(res["table"]) == {"region", "region_ensemble"}
    assert res["table"]["region"]["runs"] == 4 and res["table"]["region_ensemble"]["runs"] == 2
    with open(out / "oof_predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["strategy"] == "region_ensemble"]
    assert len(rows) == len(json.load(open(tiny_demo))["quality"]) * 4
    ckpt = export_qa_ensemble(str(out), str(tmp_path / "qa.pt"))
    plan = json.load(open(tmp_path / "qa.json"))
    assert plan["network_def"]["members"] == 4 and plan["cross_validation"]["seeds"] == [0, 1, 0, 1]
    assert plan["network_def"]["network"]["stats_skip"] is True
    net = qa_network(qa_plan(ckpt), None)
    assert len(net.members) == 4
    first = export_qa_ensemble(str(out), str(tmp_path / "first.pt"), all_seeds=False)
    assert len(qa_network(qa_plan(first), None).members) == 2
    meta = json.load(open(out / "recipe.json"))
    meta["recipe"]["network"]["pooling"] = "attention"  # inference averages slice logits: no learned pooling
    json.dump(meta, open(out / "recipe.json", "w"))
    with pytest.raises(ValueError, match="attention pooling cannot be exported"):
        export_qa_ensemble(str(out), str(tmp_path / "attention.pt"))
    meta["recipe"]["network"] = {**TINY["network"], "la_stats": True, "in_channels": 2}
    json.dump(meta, open(out / "recipe.json", "w"))
    with pytest.raises(ValueError, match="la_stats cannot be exported"):
        export_qa_ensemble(str(out), str(tmp_path / "la_stats.pt"))


def test_table2_refits_the_temperature_from_validation_and_the_sweep_scores_each_range(tmp_path):
    import numpy as np

    from bundle.errors import DataError
    from bundle.evaluation.qa_crossval import calibration_sweep, write_table2

    d = tmp_path / "region" / "fold0_seed0"
    d.mkdir(parents=True)
    pred = {
        "strategy": "region",
        "fold": 0,
        "seed": 0,
        "seconds": 60.0,
        "temperature": [7.0] * 4,  # stale: stored at training time, not used by the table
        "val_logits": [[1.0] * 4, [-2.0] * 4],  # separated at logit 0: the fit is T_RANGE's lower bound, 0.25
        "val_targets": [[1] * 4, [0] * 4],
        "test_logits": [[1.0] * 4, [-1.0] * 4],
        "test_targets": [[1] * 4, [0] * 4],
        "val_scans": ["v1", "v0"],
        "test_scans": ["t1", "t0"],
        "val_patients": ["V", "W"],
        "test_patients": ["T", "U"],
    }
    (d / "predictions.json").write_text(json.dumps(pred))
    write_table2(str(tmp_path), ["region"])
    with open(tmp_path / "oof_predictions.csv", encoding="utf-8") as f:
        probs = [float(r["probability"]) for r in csv.DictReader(f) if r["label"] == "fibrosis"]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert probs == pytest.approx([sig(4.0), sig(-4.0)], rel=1e-3)  # logits / 0.25, not / 7

    rows = calibration_sweep(str(tmp_path), "region", [(1.0, 1.0), (0.25, 4.0)])
    # T = 1: p = 0.731 and 0.269, both right: log-loss -log(0.731) = 0.313; ECE: each scan alone in its bin, off by
    # 0.269; AUROC 1. T = 0.25: p = 0.982 and 0.018: log-loss 0.018, ECE 0.018.
    assert rows[0]["t_range"] == [1.0, 1.0] and rows[1]["t_range"] == [0.25, 4.0]
    assert rows[0]["fibrosis.log_loss"] == pytest.approx(-np.log(sig(1.0)), rel=1e-3)
    assert rows[0]["nulling.ece"] == pytest.approx(1 - sig(1.0), rel=1e-3)
    assert rows[1]["sharpness.log_loss"] == pytest.approx(-np.log(sig(4.0)), rel=1e-3)
    assert rows[1]["enhancement.ece"] == pytest.approx(1 - sig(4.0), rel=1e-3)
    assert rows[0]["fibrosis.auroc"] == rows[1]["fibrosis.auroc"] == 1.0
    with pytest.raises(DataError, match="no finished fold"):
        calibration_sweep(str(tmp_path), "artifact", [(1.0, 1.0)])
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "scripts", "qa_compare_runs.py")
    cli = [sys.executable, script, str(tmp_path), "--temperature_ranges"]
    out = subprocess.run([*cli, "0.25:4,1:1"], capture_output=True, text=True, check=True).stdout
    assert f"| {tmp_path.name} | [0.25, 4] |" in out and f"| {tmp_path.name} | [1, 1] |" in out
    for bad in ("1:x", "0.5:0.9"):  # not numbers; a range that does not hold T = 1
        res = subprocess.run([*cli, bad], capture_output=True, text=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr and "--temperature_ranges" in res.stderr
