"""The LA-detector training workflow end to end on tiny generated data, in-process and through the CLI."""

import glob
import json
import os
import subprocess

import mlflow
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.conftest import bundle_cmd, cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "train.yaml")]
TINY = {  # a small network and image size, so one epoch takes seconds on a CPU
    "spatial_size": 32,
    "batch_size": 16,
    "max_epochs": 1,
    "num_workers": 0,
    "test_size": 2,
    "val_fraction": 0.2,
    "network_def#channels": [4, 8, 16, 32, 64],
}


def _runs(output_dir):
    client = mlflow.MlflowClient(f"sqlite:///{output_dir}/mlruns.db")
    exp = client.get_experiment_by_name("la_lge_qa")
    return client, client.search_runs([exp.experiment_id])


def _artifacts(client, run_id, path=""):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


@pytest.mark.slow
def test_one_epoch_smoke(tiny_demo, tmp_path):
    out, models = tmp_path / "runs", tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"previous weights")  # must survive the run, with its plan
    (models / "model.json").write_text('{"previous": "plan"}')
    wf = ConfigWorkflow(
        config_file=CONFIG,
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=os.path.join(ROOT, "configs", "logging.conf"),
        workflow_type="train",
        datalist=tiny_demo,
        output_dir=str(out),
        ckpt_dir=str(models),
        **TINY,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()

    state = torch.load(models / "model.pt", map_location="cpu")
    assert "model.0.conv.unit0.conv.weight" in state or any(k.endswith("weight") for k in state)
    backups = glob.glob(str(models / "model.*.pt"))
    assert len(backups) == 1 and open(backups[0], "rb").read() == b"previous weights"
    assert json.load(open(backups[0][: -len(".pt")] + ".json")) == {"previous": "plan"}  # the kept one keeps its plan
    plan = json.load(open(models / "model.json"))  # the new checkpoint's plan
    assert plan["kind"] == "detector" and plan["checkpoint"] == "model.pt"
    assert plan["preprocessing"]["spatial_size"] == TINY["spatial_size"]

    client, runs = _runs(out)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["batch_size"] == "16" and params["seed"] == "0"
    assert params["network_channels"] == "[4, 8, 16, 32, 64]" and params["aug_prob"] == "0.5"
    assert params["la_threshold"] == "0.5"
    for key in (
        "train_loss",
        "train_epoch_loss",
        "val_mean_dice",
        "val_volume_dice",
        "val_slice_f1",
        "val_slice_precision",
        "val_slice_recall",
        "best_val_mean_dice",
    ):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["val_mean_dice"] <= 1.0
    assert run.data.tags["version.monai"] == "1.6.1" and "git_commit" in run.data.tags
    arts = _artifacts(client, run.info.run_id)
    for name in (
        "split.json",
        "config.json",
        "model.pt",
        "best_metrics.json",
        "first_train_batch.png",
        "first_val_predictions.png",
    ):
        assert name in arts, (name, arts)
    run_dir = out / run.info.run_name
    split = json.load(open(run_dir / "split.json"))
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert json.load(open(run_dir / "config.json"))["datalist"] == tiny_demo


@pytest.mark.slow
def test_cli_with_tracking_flag_keeps_one_run(tiny_demo, tmp_path):
    out = tmp_path / "runs"
    overrides = cli_args(TINY)
    cmd = bundle_cmd(
        "training",
        CONFIG,
        "--meta_file",
        os.path.join(ROOT, "configs", "metadata.json"),
        "--datalist",
        tiny_demo,
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--tracking",
        "mlflow",
        *overrides,
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best validation (epoch 1): val_volume_dice=" in res.stdout
    assert os.path.isfile(tmp_path / "models" / "model.pt") and os.path.isfile(tmp_path / "models" / "model.json")
    client, runs = _runs(out)
    assert len(runs) == 1 and "val_slice_f1" in runs[0].data.metrics


@pytest.mark.slow
def test_bad_datalist_stops_before_training(toy_dataset, tmp_path):
    path = toy_dataset(seg=[{"image": "images/missing.nii.gz", "label": "labels/a.nii.gz", "patient": "a"}])
    cmd = bundle_cmd(
        "training",
        CONFIG,
        "--datalist",
        path,
        "--output_dir",
        str(tmp_path / "runs"),
        "--ckpt_dir",
        str(tmp_path / "models"),
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR data: dataset.json: segmentation[0] (patient a): image not found"), last
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_speed_switches_smoke(tiny_demo, tmp_path):
    switches = {
        "cache_dtype": "uint8",
        "cache_mmap": True,
        "augment_on_device": True,
        "channels_last": True,
        "autocast": "bf16",
    }
    wf = ConfigWorkflow(
        config_file=CONFIG,
        workflow_type="train",
        datalist=tiny_demo,
        output_dir=str(tmp_path / "r"),
        ckpt_dir=str(tmp_path / "m"),
        **TINY,
        **switches,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    state = torch.load(tmp_path / "m" / "model.pt", map_location="cpu")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    client, runs = _runs(tmp_path / "r")
    assert runs[0].data.params["autocast"] == "bf16" and "val_mean_dice" in runs[0].data.metrics
