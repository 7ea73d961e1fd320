"""The curate workflow end to end on the tiny demo set, and the retrain comparison (full vs curated datalist)."""

import glob
import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.curation import curation_encoder
from bundle.errors import WeightsError
from bundle.networks import QANet
from tests.conftest import bundle_cmd, cli_args
from tests.error_helpers import raises_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = [os.path.join(ROOT, "configs", n) for n in ("common.yaml", "qa_baseline.yaml", "curate.yaml")]
NET = {"encoder_layers": [1, 1, 1, 1], "encoder_widths": [8, 16, 32, 64], "head_channels": 8, "qa_channels": 4}
TINY = {"spatial_size": 32, "num_workers": 0, "test_size": 2, "val_fraction": 0.2, "qa_slices": "mask", **NET}
OUTPUTS = ("curation.csv", "curation.png", "curation_summary.json", "datalist_curated.json", "embeddings.npz")
pytestmark = pytest.mark.slow


def _tiny_qanet():
    torch.manual_seed(0)
    return QANet(layers=NET["encoder_layers"], block_inplanes=NET["encoder_widths"], head_channels=8, qa_channels=4)


def _artifacts(client, run_id, path=""):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_curate_workflow(tiny_demo, tmp_path):
    """A QA checkpoint's encoder embeds the training slices; with a tiny eps every slice is DBSCAN noise, so every
    training scan is flagged and the curated datalist keeps only the validation and test scans."""
    ckpt = tmp_path / "qa_baseline.pt"
    torch.save(_tiny_qanet().state_dict(), ckpt)
    out = tmp_path / "runs"
    wf = ConfigWorkflow(
        config_file=CONFIGS,
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=os.path.join(ROOT, "configs", "logging.conf"),
        workflow_type="infer",
        datalist=tiny_demo,
        output_dir=str(out),
        qa_ckpt=str(ckpt),
        dbscan_eps=1e-6,
        **TINY,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    (run_dir,) = glob.glob(str(out / "curate_*"))
    for f in OUTPUTS:
        assert os.path.getsize(os.path.join(run_dir, f)) > 0, f
    summary = json.load(open(os.path.join(run_dir, "curation_summary.json")))
    split = json.load(open(os.path.join(run_dir, "split.json")))
    source = json.load(open(tiny_demo))
    train_scans = [e for e in source["quality"] if e["patient"] in split["train"]]
    assert summary["projection"] == "tsne" and summary["scans"] == len(train_scans) == 10  # 5 patients x 2 scans
    assert summary["flagged_scans"] == 10 and summary["flagged_slices"] == summary["slices"] > 0
    curated = json.load(open(os.path.join(run_dir, "datalist_curated.json")))
    assert curated["segmentation"] == source["segmentation"]
    assert curated["quality"] == [e for e in source["quality"] if e["patient"] not in split["train"]]
    table = pd.read_csv(os.path.join(run_dir, "curation.csv"))
    assert (table["level"] == "slice").sum() == summary["slices"] and (table["level"] == "scan").sum() == 10
    assert table["flagged"].all() and table[table["level"] == "scan"]["share"].eq(1.0).all()

    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("curate_")
    assert run.data.params["qa_ckpt"] == str(ckpt) and run.data.params["dbscan_eps"] == "1e-06"
    assert run.data.params["embedded_slices"] == str(summary["slices"]) and run.data.tags["workflow"] == "curate"
    assert "git_commit" in run.data.tags
    m = run.data.metrics
    assert m["flagged_scans"] == 10 and m["flagged_slices"] == summary["slices"] and m["flagged_slice_share"] == 1.0
    assert {"flagged_slices_class0", "flagged_slices_class1", "eps_class1"} <= set(m)
    assert set(OUTPUTS) | {"split.json", "config.json"} <= set(_artifacts(client, run.info.run_id))


def test_curate_cli_with_an_encoder_checkpoint(tiny_demo, tmp_path):
    """`monai.bundle run curate` with a SupCon-style encoder-only checkpoint and the default (k-distance) eps."""
    ckpt = tmp_path / "supcon_encoder.pt"
    torch.save(_tiny_qanet().encoder.state_dict(), ckpt)
    args = cli_args(TINY)
    cmd = bundle_cmd(
        "curate",
        CONFIGS,
        "--meta_file",
        os.path.join(ROOT, "configs", "metadata.json"),
        "--datalist",
        tiny_demo,
        "--output_dir",
        str(tmp_path / "runs"),
        "--qa_ckpt",
        str(ckpt),
        "--projection",
        "none",
        *args,
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("curation (fibrosis): ") and "of 10 scans flagged" in line, line
    (summary,) = glob.glob(str(tmp_path / "runs" / "curate_*" / "curation_summary.json"))
    s = json.load(open(summary))
    assert s["projection"] == "none" and all(v["eps"] > 0 for v in s["by_class"].values())
    # the k-distance default leaves at most 1 - eps_quantile of each class non-core: most slices are kept
    assert s["flagged_slices"] <= 0.05 * s["slices"] + 2


def test_curation_encoder_errors(tmp_path):
    with raises_error(WeightsError, r"^ERROR weights: no QA checkpoint at .*missing.pt"):
        curation_encoder(_tiny_qanet(), str(tmp_path / "missing.pt"))
    bad = tmp_path / "other.pt"
    torch.save(QANet(layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32]).state_dict(), bad)
    with raises_error(WeightsError, r"other.pt: does not fit the QA encoder"):
        curation_encoder(_tiny_qanet(), str(bad))


def test_curate_compare(tiny_demo, tmp_path):
    """Retrain on a curated datalist (two training scans dropped, as a curation run leaves it) and on the full one:
    same split and seed, one table, MLflow parent and children."""
    from bundle.data import split_patients

    source = json.load(open(tiny_demo))
    split = split_patients({e["patient"] for e in source["quality"]}, test_size=2, val_fraction=0.2, seed=0)
    cur_dir = tmp_path / "runs" / "curate_x"
    cur_dir.mkdir(parents=True)
    dropped = [e["image"] for e in source["quality"] if e["patient"] in split["train"]][:2]
    curated = {**source, "quality": [e for e in source["quality"] if e["image"] not in dropped]}
    (cur_dir / "datalist_curated.json").write_text(json.dumps(curated))
    (cur_dir / "split.json").write_text(json.dumps(split))
    summary = {
        "datalist": tiny_demo,
        "dataset_dir": os.path.dirname(tiny_demo),
        "scans": 10,
        "flagged_scans": 2,
        "curated_datalist": str(cur_dir / "datalist_curated.json"),
    }
    (cur_dir / "curation_summary.json").write_text(json.dumps(summary))
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from curate_compare import main

    args = ["--curation", str(cur_dir), "--seeds", "1", "--max_epochs", "1", "--batch_size", "16"]
    args += [a for k, v in TINY.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
    assert main(args) == 0
    (cmp_dir,) = glob.glob(str(tmp_path / "runs" / "curate_compare_*"))
    table = pd.read_csv(os.path.join(cmp_dir, "comparison.csv"))
    assert table["strategy"].tolist() == ["full", "curated"] and ((table["f1"] >= 0) & (table["f1"] <= 1)).all()
    md = open(os.path.join(cmp_dir, "comparison.md")).read()
    assert "| full |" in md and "| curated |" in md and "2 of 10 training scans flagged and 0 slices" in md
    for run in ("full_seed0", "curated_seed0"):  # both on the curation's split, evaluated on the same test scans
        assert json.load(open(os.path.join(cmp_dir, run, "split.json")))["test"] == split["test"]
    for r in ("full_seed0", "curated_seed0"):
        assert json.load(open(os.path.join(cmp_dir, r, "test", "metrics.json")))["n_scans"] == 4
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs'}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("la_lge_qa").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("workflow") == "curate_compare"]
    children = {
        r.data.tags["datalist_kind"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"full", "curated"} and all(r.info.status == "FINISHED" for r in children.values())
    assert int(children["curated"].data.params["train_slices"]) < int(children["full"].data.params["train_slices"])
    assert children["curated"].data.params["datalist"] == summary["curated_datalist"]
    assert parent.info.status == "FINISHED" and "curated_fibrosis_f1_mean" in parent.data.metrics
    assert {"comparison.md", "comparison.csv", "curation_summary.json"} <= set(_artifacts(client, parent.info.run_id))
