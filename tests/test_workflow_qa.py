"""The QA workflows end to end on tiny generated data: the three strategies, evaluation, the comparison."""

import glob
import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.conftest import TINY_QA, bundle_cmd, cli_args, write_known_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "baseline": ["common.yaml", "qa_baseline.yaml"],
    "multitask": ["common.yaml", "qa_baseline.yaml", "qa_multitask.yaml"],
    "contrastive": ["common.yaml", "qa_baseline.yaml", "qa_contrastive.yaml"],
}
TINY = {**TINY_QA, "test_size": 2, "val_fraction": 0.2, "qa_slices": "mask"}  # one epoch in seconds on a CPU
pytestmark = pytest.mark.slow


def _configs(names):
    return [os.path.join(ROOT, "configs", n) for n in names]


def _workflow(names, kind, **overrides):
    return ConfigWorkflow(
        config_file=_configs(names),
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=os.path.join(ROOT, "configs", "logging.conf"),
        workflow_type=kind,
        **{**TINY, **overrides},
    )


def _run(wf):
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()


def _client(out):
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    return client, client.get_experiment_by_name("la_lge_qa").experiment_id


def _artifacts(client, run_id, path=""):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


@pytest.fixture(scope="module")
def baseline_run(tiny_demo, tmp_path_factory):
    """One baseline training, shared by the evaluation tests."""
    tmp = tmp_path_factory.mktemp("qa_baseline")
    out, models = tmp / "runs", tmp / "models"
    models.mkdir()
    (models / "qa_baseline.pt").write_bytes(b"previous weights")  # must survive the run
    _run(_workflow(CONFIGS["baseline"], "train", datalist=tiny_demo, output_dir=str(out), ckpt_dir=str(models)))
    return out, models


def test_baseline_training(baseline_run, tiny_demo):
    out, models = baseline_run
    state = torch.load(models / "qa_baseline.pt", map_location="cpu")
    assert (
        "encoder.layer4.0.conv1.weight" in state
        and "qa_head.0.weight" in state
        and not any(k.startswith("decoder") for k in state)
    )
    backups = glob.glob(str(models / "qa_baseline.*.pt"))
    assert len(backups) == 1 and open(backups[0], "rb").read() == b"previous weights"
    client, exp = _client(out)
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("qa_baseline_")
    p = run.data.params
    assert p["strategy"] == "baseline" and p["qa_slices"] == "mask" and p["encoder_layers"] == "[1, 1, 1, 1]"
    assert p["learning_rate"] == "0.001" and p["loss"] == "QALoss" and int(p["train_slices"]) > 0
    for key in ("train_loss", "train_epoch_loss", "val_mse", "val_f1", "val_f1_nulling", "best_val_mse"):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["val_mse"] <= 1.0
    arts = _artifacts(client, run.info.run_id)
    for name in (
        "split.json",
        "config.json",
        "qa_baseline.pt",
        "best_metrics.json",
        "first_train_batch.png",
        "first_val_predictions.png",
    ):
        assert name in arts, (name, arts)
    assert json.load(open(out / run.info.run_name / "config.json"))["datalist"] == tiny_demo


def test_baseline_training_writes_the_plan_inference_builds_from(baseline_run):
    """The plan beside the checkpoint gives inference the network (no QA config parsed) and the paper's decision."""
    from bundle.inference import qa_network
    from bundle.networks import load_qa_plan

    _, models = baseline_run
    plan = json.load(open(models / "qa_baseline.json"))
    assert plan["kind"] == "qa" and plan["checkpoint"] == "qa_baseline.pt" and plan["strategy"] == "baseline"
    assert plan["network_def"]["layers"] == TINY["encoder_layers"] and plan["network_def"]["pretrained_path"] is None
    assert plan["labels"] == ["nulling", "sharpness", "enhancement", "fibrosis"]
    flat = load_qa_plan(str(models / "qa_baseline.pt"))
    assert (flat["rule"], flat["threshold"], flat["temperature"], flat["region"]) == ("mode", 0.5, None, None)
    assert flat["spatial_size"] == TINY["spatial_size"]
    net = qa_network(flat, qa_config=["no/such/config.yaml"])  # the plan is enough
    net.load_state_dict(torch.load(models / "qa_baseline.pt", map_location="cpu"))  # strict: every tensor fits
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


def test_multitask_training_with_detector_selection(tiny_demo, tmp_path):
    """Multi-task QA on the slices a (known) LA detector selects: the dict output, the Dice term, the masks."""
    models = tmp_path / "models"
    det = write_known_detector(models, 0.945, name="detector.pt", spatial_size=32)  # about half the demo slices
    out = tmp_path / "runs"
    _run(
        _workflow(
            CONFIGS["multitask"],
            "train",
            datalist=tiny_demo,
            output_dir=str(out),
            ckpt_dir=str(models),
            qa_slices="detector",
            detector_ckpt=det,
        )
    )
    state = torch.load(models / "qa_multitask.pt", map_location="cpu")
    assert any(k.startswith("decoder.") for k in state) and any(k.startswith("seg_head.") for k in state)
    plan = json.load(open(models / "qa_multitask.json"))
    assert plan["strategy"] == "multitask" and plan["network_def"]["segmentation"] is True
    client, exp = _client(out)
    (run,) = client.search_runs([exp])
    assert run.data.params["qa_slices"] == "detector" and run.data.params["loss"] == "MultiTaskLoss"
    assert "val_mean_dice" in run.data.metrics and run.data.params["seg_weight"] == "1.0"
    assert glob.glob(str(out / "cache" / "la_selection_*.npz"))


def test_contrastive_training_freezes_the_pretrained_encoder(tiny_demo, tmp_path):
    out, models = tmp_path / "runs", tmp_path / "models"
    _run(
        _workflow(
            CONFIGS["contrastive"], "train", datalist=tiny_demo, output_dir=str(out), ckpt_dir=str(models), max_epochs=2
        )
    )
    encoder = torch.load(models / "supcon_encoder.pt", map_location="cpu")
    full = torch.load(models / "qa_contrastive.pt", map_location="cpu")
    assert set(encoder) == {k[len("encoder.") :] for k in full if k.startswith("encoder.")}
    for k, v in encoder.items():  # weights and batch-norm statistics, after two epochs of step 2
        assert torch.equal(v, full["encoder." + k]), k
    client, exp = _client(out)
    (run,) = client.search_runs([exp])  # both steps in one run
    for key in ("pretrain_loss", "pretrain_epoch_loss", "train_loss", "val_mse", "best_val_mse"):
        assert key in run.data.metrics, key
    assert run.data.params["pretrain_optimizer"] == "LARS" and run.data.params["pretrain_lr"] == "0.5"
    arts = _artifacts(client, run.info.run_id)
    assert {"supcon_encoder.pt", "qa_contrastive.pt", "first_pretrain_views.png"} <= set(arts)


def test_evaluate_workflow(baseline_run, tiny_demo):
    out, models = baseline_run
    wf = _workflow(
        [*CONFIGS["baseline"], "evaluate.yaml"], "infer", datalist=tiny_demo, output_dir=str(out), ckpt_dir=str(models)
    )
    _run(wf)
    (run_dir,) = glob.glob(str(out / "evaluate_baseline_*"))
    for f in (
        "metrics.json",
        "metrics.csv",
        "scan_predictions.csv",
        "slice_predictions.csv",
        "confusion_mode.png",
        "confusion_mean.png",
        "embeddings.npz",
        "embeddings.png",
    ):
        assert os.path.getsize(os.path.join(run_dir, f)) > 0, f
    summary = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert summary["part"] == "test" and summary["n_scans"] == 4  # 2 test patients x 2 scored scans
    assert set(summary["metrics"]) == {"slice", "mode", "mean"}
    emb = np.load(os.path.join(run_dir, "embeddings.npz"))
    assert emb["embeddings"].shape == (summary["n_slices"], 64)
    client, exp = _client(out)
    run = [r for r in client.search_runs([exp]) if r.info.run_name.startswith("evaluate_baseline")][0]
    assert (
        run.info.status == "FINISHED" and "test_mode_fibrosis_f1" in run.data.metrics and "eval_mse" in run.data.metrics
    )
    assert {"test/metrics.json", "test/confusion_mode.png", "test/scan_predictions.csv"} <= set(
        _artifacts(client, run.info.run_id)
    )


def test_evaluate_logs_into_the_training_run_and_needs_a_checkpoint(baseline_run, tiny_demo, tmp_path):
    out, models = baseline_run
    client, exp = _client(out)
    train_run = [r for r in client.search_runs([exp]) if r.info.run_name.startswith("qa_baseline_")][0]
    _run(
        _workflow(
            [*CONFIGS["baseline"], "evaluate.yaml"],
            "infer",
            datalist=tiny_demo,
            output_dir=str(out),
            ckpt_dir=str(models),
            mlflow_run_id=train_run.info.run_id,
            eval_part="val",
            projection="none",
        )
    )
    run = client.get_run(train_run.info.run_id)
    assert (
        run.info.status == "FINISHED"
        and "val_mode_fibrosis_f1" in run.data.metrics
        and "best_val_mse" in run.data.metrics
    )
    assert "val/metrics.json" in _artifacts(client, run.info.run_id)
    cmd = bundle_cmd(
        "evaluating",
        _configs([*CONFIGS["baseline"], "evaluate.yaml"]),
        "--datalist",
        tiny_demo,
        "--output_dir",
        str(tmp_path / "runs"),
        "--ckpt_dir",
        str(tmp_path / "none"),
        "--qa_slices",
        "mask",
        "--spatial_size",
        "32",
        "--test_size",
        "2",
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: no QA checkpoint at ") and "qa_baseline.pt" in last, last


def test_cli_baseline_training(tiny_demo, tmp_path):
    overrides = cli_args(TINY)
    cmd = bundle_cmd(
        "training",
        _configs(CONFIGS["baseline"]),
        "--meta_file",
        os.path.join(ROOT, "configs", "metadata.json"),
        "--datalist",
        tiny_demo,
        "--output_dir",
        str(tmp_path / "runs"),
        "--ckpt_dir",
        str(tmp_path / "models"),
        *overrides,
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best validation (epoch 1): val_mse=" in res.stdout
    assert os.path.isfile(tmp_path / "models" / "qa_baseline.pt")


def test_comparison(tiny_demo, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from compare_strategies import main

    args = ["--seeds", "1", "--output_dir", str(tmp_path / "runs"), "--datalist", tiny_demo]
    args += cli_args(TINY)
    assert main(args) == 0
    (cmp_dir,) = glob.glob(str(tmp_path / "runs" / "compare_*"))
    md = open(os.path.join(cmp_dir, "comparison.md")).read()
    for name in (
        "Logistic regression (reference)",
        "| QA |",
        "Multi-Task QA",
        "QA & Contrastive",
        "F1-Score",
        "Specificity",
    ):
        assert name in md, name
    import pandas as pd

    table = pd.read_csv(os.path.join(cmp_dir, "comparison.csv"))
    assert table["strategy"].tolist() == ["reference", "baseline", "multitask", "contrastive"]
    assert ((table["f1"] >= 0) & (table["f1"] <= 1)).all()
    assert os.path.getsize(os.path.join(cmp_dir, "embeddings_tsne.png")) > 0
    split = json.load(open(os.path.join(cmp_dir, "split.json")))
    for s in ("baseline", "multitask", "contrastive"):  # every run used the comparison's split
        assert json.load(open(os.path.join(cmp_dir, f"{s}_seed0", "split.json")))["test"] == split["test"]
    client, exp = _client(tmp_path / "runs")
    runs = client.search_runs([exp])
    (parent,) = [r for r in runs if r.info.run_name.startswith("compare_")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name.split("_seed")[0] for r in children) == ["baseline", "contrastive", "multitask"]
    for r in children:
        assert r.info.status == "FINISHED" and "test_mode_fibrosis_f1" in r.data.metrics and "val_mse" in r.data.metrics
    assert parent.info.status == "FINISHED" and "baseline_fibrosis_f1_mean" in parent.data.metrics
    assert {"comparison.md", "comparison.csv", "embeddings_tsne.png"} <= set(_artifacts(client, parent.info.run_id))

    # the same checkpoints again, on the slices a (known) detector selects: nothing trains
    det = write_known_detector(tmp_path, 0.945, name="detector.pt", spatial_size=32)
    ckpts = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(cmp_dir, "models", "seed0", "*.pt"))}
    assert (
        main(
            [
                "--reevaluate",
                cmp_dir,
                "--tag",
                "detector",
                "--no_reference",
                "--qa_slices",
                "detector",
                "--detector_ckpt",
                det,
            ]
        )
        == 0
    )
    assert {p: os.path.getmtime(p) for p in ckpts} == ckpts  # nothing was trained again
    (re_dir,) = glob.glob(os.path.join(cmp_dir, "detector_*"))
    assert pd.read_csv(os.path.join(re_dir, "comparison.csv"))["strategy"].tolist() == [
        "baseline",
        "multitask",
        "contrastive",
    ]
    first = json.load(open(os.path.join(cmp_dir, "baseline_seed0", "test", "metrics.json")))
    again = json.load(open(os.path.join(cmp_dir, "baseline_seed0", "detector", "metrics.json")))
    assert again["n_scans"] == first["n_scans"] and again["n_slices"] != first["n_slices"]  # other slices, same scans
    runs = client.search_runs([exp])
    (re_parent,) = [r for r in runs if r.info.run_name.startswith("detector_compare_")]
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == re_parent.info.run_id]) == 3


def test_training_is_reproducible(tiny_demo, tmp_path):
    """The comparison's tables are reproducible: the same seed gives bitwise the same weights (data-loader worker
    and all)."""
    states = []
    for i in range(2):
        models = tmp_path / f"models{i}"
        _run(
            _workflow(
                CONFIGS["baseline"],
                "train",
                datalist=tiny_demo,
                output_dir=str(tmp_path / f"runs{i}"),
                ckpt_dir=str(models),
                num_workers=1,
                batch_size=8,
                seed=3,
            )
        )
        states.append(torch.load(models / "qa_baseline.pt", map_location="cpu"))
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
