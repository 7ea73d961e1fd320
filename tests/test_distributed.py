"""Data-parallel training with real torchrun processes on the CPU (gloo)."""

import json
import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = [os.path.join(ROOT, "configs", name) for name in ("common.yaml", "train.yaml", "multi_gpu.yaml")]


@pytest.mark.slow
def test_torchrun_two_ranks_one_checkpoint_one_run(tiny_demo, tmp_path):
    out, models = tmp_path / "runs", tmp_path / "models"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training",
           "--config_file", json.dumps(CONFIG + [os.path.join(ROOT, "tests", "configs", "save_rank_weights.yaml")]),
           "--datalist", tiny_demo, "--output_dir", str(out), "--ckpt_dir", str(models), "--spatial_size", "32",
           "--batch_size", "8", "--max_epochs", "1", "--num_workers", "0", "--test_size", "2", "--val_fraction", "0.2",
           "--network_def#channels", "[4, 8, 16, 32, 64]"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    ranks = [torch.load(out / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]  # both ranks ran to the end
    ckpt = torch.load(models / "model.pt", map_location="cpu")
    assert set(ckpt) == set(ranks[0]) == set(ranks[1])
    for key in ckpt:
        torch.testing.assert_close(ckpt[key], ranks[0][key])
        torch.testing.assert_close(ckpt[key], ranks[1][key])

    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val_mean_dice" in runs[0].data.metrics
    assert len(list(out.glob("detector_*/split.json"))) == 1  # rank 0 alone wrote the run folder
