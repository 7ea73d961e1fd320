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

from bundle.evaluation.qa_crossval import QA_STRATEGIES, export_qa_ensemble, qa_cross_validate
from bundle.inference import qa_network, qa_plan
from tests.conftest import write_known_detector

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"pixel_mm": 2.5, "size": 16, "margin": 2, "epochs": 1, "pretrain_epochs": 1, "slices_per_scan": 2,
        "scans_per_batch": 4, "network": {"block_inplanes": [4, 8, 8, 8], "head_channels": 4, "qa_channels": 4}}


@pytest.mark.slow
def test_every_strategy_table2_resume_export_and_inference(tiny_demo, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "qa_cv"
    res = qa_cross_validate(str(out), datalist=tiny_demo, strategies=QA_STRATEGIES, folds=2, n_val=1, recipe=TINY)
    table = res["table"]
    assert set(table) == set(QA_STRATEGIES)
    for s in QA_STRATEGIES:
        assert table[s]["runs"] == 2 and "balanced_accuracy" in table[s]["pooled"]["fibrosis"]
    with open(out / "oof_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    quality = json.load(open(tiny_demo))["quality"]
    assert len(rows) == len(QA_STRATEGIES) * len(quality) * 4  # every scan out of fold once per strategy and label
    assert all(r["verdict"] == str(int(float(r["probability"]) >= 0.5)) for r in rows)  # the one threshold rule
    for name in ("table2.md", "table2.csv", "roc.png", "reliability.png", "recipe.json"):
        assert os.path.isfile(out / name), name
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    exp = client.get_experiment_by_name("qa_crossval")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 + 2 * len(QA_STRATEGIES)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert "region.fibrosis.auroc" in parent.data.metrics or "region.fibrosis.balanced_accuracy" in parent.data.metrics
    # resume: nothing retrained
    stamp = os.path.getmtime(out / "region" / "fold0_seed0" / "model.pt")
    qa_cross_validate(str(out), datalist=tiny_demo, strategies=("region",), folds=2, n_val=1, recipe=TINY)
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
    assert len(net.members) == 2 and net.combine == "logit"
    open_bounds = {"min_ml": 0.0, "max_ml": 1e9, "min_extent_mm": 0.0, "max_extent_mm": 1e9, "min_kept": 0.0}
    detector = write_known_detector(models, 0.6, name="detector.pt", spatial_size=32, la_bounds=open_bounds)
    image = os.path.join(os.path.dirname(tiny_demo), quality[0]["image"])
    report_dir = tmp_path / "report"
    wf = ConfigWorkflow(config_file=[os.path.join(ROOT, "configs", "common.yaml"),
                                     os.path.join(ROOT, "configs", "inference.yaml")],
                        meta_file=os.path.join(ROOT, "configs", "metadata.json"), workflow_type="infer",
                        input=image, output_dir=str(report_dir), ckpt_path=detector, qa_ckpt=ckpt,
                        min_slices=4)  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    report = json.load(open(report_dir / "qa_report.json"))
    assert report["settings"]["qa_rule"] == "mean_logit" and report["settings"]["qa_region"]["size"] == 16
    scan = report["scans"][0]
    assert scan["status"] in ("ok", "implausible_la"), scan
    assert 0.0 <= scan["p_fibrosis"] <= 1.0 and scan["diagnostic"] == int(scan["p_fibrosis"] >= 0.5)
