"""Data-parallel training with real torchrun processes on the CPU (gloo)."""

import json
import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import torch

from tests.conftest import cli_args
from tests.test_workflow_qa import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = [os.path.join(ROOT, "configs", name) for name in ("common.yaml", "train.yaml", "multi_gpu.yaml")]
QA_CONFIG = [
    os.path.join(ROOT, "configs", name)
    for name in (
        "common.yaml",
        "qa_baseline.yaml",
        "qa_contrastive.yaml",
        "multi_gpu.yaml",
        "multi_gpu_contrastive.yaml",
    )
]
QA_TINY = {**TINY, "batch_size": 8, "pretrain_batch_size": 8}  # the QA workflow tests' settings, smaller batches


def _torchrun(configs, args):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        json.dumps(configs + [os.path.join(ROOT, "tests", "configs", "save_rank_weights.yaml")]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def _assert_same_weights(ckpt_file, out):
    ranks = [torch.load(out / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]  # both ranks ran to the end
    ckpt = torch.load(ckpt_file, map_location="cpu")
    assert set(ckpt) == set(ranks[0]) == set(ranks[1])
    for key in ckpt:
        torch.testing.assert_close(ckpt[key], ranks[0][key])
        torch.testing.assert_close(ckpt[key], ranks[1][key])


def _the_one_run(out, metric):
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert metric in runs[0].data.metrics
    return runs[0]


@pytest.mark.slow
def test_torchrun_two_ranks_one_checkpoint_one_run(tiny_demo, tmp_path):
    out, models = tmp_path / "runs", tmp_path / "models"
    _torchrun(
        CONFIG,
        [
            "--datalist",
            tiny_demo,
            "--output_dir",
            str(out),
            "--ckpt_dir",
            str(models),
            "--spatial_size",
            "32",
            "--batch_size",
            "8",
            "--max_epochs",
            "1",
            "--num_workers",
            "0",
            "--test_size",
            "2",
            "--val_fraction",
            "0.2",
            "--network_def#channels",
            "[4, 8, 16, 32, 64]",
        ],
    )
    _assert_same_weights(models / "model.pt", out)
    _the_one_run(out, "val_mean_dice")
    assert len(list(out.glob("detector_*/split.json"))) == 1  # rank 0 alone wrote the run folder


@pytest.mark.slow
def test_torchrun_multitask_qa(tiny_demo, tmp_path):
    """The multi-task strategy (QA heads and the LA decoder, a dict output) under DDP."""
    out, models = tmp_path / "runs", tmp_path / "models"
    configs = [QA_CONFIG[0], QA_CONFIG[1], os.path.join(ROOT, "configs", "qa_multitask.yaml"), QA_CONFIG[3]]
    _torchrun(configs, cli_args({**QA_TINY, "datalist": tiny_demo, "output_dir": str(out), "ckpt_dir": str(models)}))
    _assert_same_weights(models / "qa_multitask.pt", out)
    assert any(k.startswith("decoder") for k in torch.load(models / "qa_multitask.pt", map_location="cpu"))
    run = _the_one_run(out, "val_mean_dice")
    assert run.data.params["world_size"] == "2"


@pytest.mark.slow
def test_torchrun_contrastive_qa(tiny_demo, tmp_path):
    """Both steps of the contrastive strategy under DDP: pretraining (LARS) then QA heads on the frozen encoder."""
    out, models = tmp_path / "runs", tmp_path / "models"
    _torchrun(QA_CONFIG, cli_args({**QA_TINY, "datalist": tiny_demo, "output_dir": str(out), "ckpt_dir": str(models)}))
    _assert_same_weights(models / "qa_contrastive.pt", out)
    encoder = torch.load(models / "supcon_encoder.pt", map_location="cpu")
    final = torch.load(models / "qa_contrastive.pt", map_location="cpu")
    for key, value in encoder.items():  # step 2 kept the pretrained encoder frozen
        torch.testing.assert_close(final["encoder." + key], value)
    run = _the_one_run(out, "val_mse")
    assert "pretrain_epoch_loss" in run.data.metrics and run.data.params["world_size"] == "2"
