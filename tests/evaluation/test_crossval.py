"""Cross-validation of the detector on tiny generated data: folds, MLflow parent/children, table, resume, ensemble."""

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from bundle.data.datalist import DatalistError
from bundle.data.split import cv_folds, patient_strata
from bundle.evaluation.crossval import CV_METRICS, cross_validate, export_ensemble, load_folds, summarise_folds
from bundle.inference import load_detector, load_volume, segment_la
from bundle.metrics import mask_metrics

TINY = {
    "max_epochs": 1,
    "spatial_size": 32,
    "train_crop": 32,
    "batch_size": 16,
    "num_workers": 0,
    "network_def#channels": [4, 8, 16, 32, 64],
}


def test_folds_are_disjoint_stratified_and_deterministic():
    patients = [f"p{i:02d}" for i in range(30)]
    strata = {p: (2 if i < 16 else 1 if i < 27 else 0) for i, p in enumerate(patients)}
    folds = cv_folds(patients, strata, folds=5, n_val=4, seed=0)
    tests = [p for f in folds for p in f["test"]]
    assert sorted(tests) == patients  # every patient held out exactly once
    for f in folds:
        assert not set(f["val"]) & set(f["test"]) and not set(f["train"]) & set(f["val"])
        assert len(f["val"]) >= 4 and set(f["train"]) | set(f["val"]) | set(f["test"]) == set(patients)
        assert len({strata[p] for p in f["val"]}) == 3  # every stratum (the rare one merged only for the folds)
    assert folds == cv_folds(list(reversed(patients)), strata, folds=5, n_val=4, seed=0)
    with pytest.raises(DatalistError, match="too few"):
        cv_folds(patients[:6], None, folds=5, n_val=4)
    assert patient_strata([{"patient": "a", "fibrosis": 3}, {"patient": "a", "fibrosis": 2}, {"patient": "b"}]) == {
        "a": 1,
        "b": 0,
    }


def test_mask_metrics_by_hand():
    g = np.zeros((10, 10, 6), bool)
    g[2:6, 2:6, 1:4] = True
    p = np.zeros_like(g)
    p[2:6, 2:6, 1:5] = True  # one extra slice: 16 voxels more
    m = mask_metrics(p, g, (1.0, 1.0, 2.0), 2)
    assert m["dice"] == pytest.approx(2 * 48 / (64 + 48))
    assert m["hd95_mm"] == pytest.approx(2.0)  # the extra slice lies one slice (2 mm) off the reference surface
    assert m["slice_precision"] == pytest.approx(0.75) and m["slice_recall"] == 1.0
    assert m["slice_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert m["volume_error_ml"] == pytest.approx(16 * 2 / 1000)
    same = mask_metrics(g, g, (1.0, 1.0, 2.0), 2)
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0 and same["asd_mm"] == 0.0
    empty = mask_metrics(np.zeros_like(g), g, (1, 1, 1), 2)
    assert empty["dice"] == 0.0 and np.isnan(empty["hd95_mm"]) and empty["slice_recall"] == 0.0


def test_summary_over_folds_and_pooled():
    rows = [{"fold": 0, "dice": 0.8}, {"fold": 0, "dice": 1.0}, {"fold": 1, "dice": 0.6}]
    s = summarise_folds(rows, ["dice"])["dice"]
    assert s["fold_mean"] == pytest.approx(0.75) and s["fold_std"] == pytest.approx(0.15)
    assert s["pooled_mean"] == pytest.approx(0.8) and s["n"] == 3


@pytest.mark.slow
def test_cross_validation_two_folds_resume_and_ensemble(tiny_demo, tmp_path):
    out = tmp_path / "cv"
    res = cross_validate(str(out), datalist=tiny_demo, folds=2, n_val=1, overrides=TINY, experiment_name="cv_test")
    folds = load_folds(str(out / "folds.json"))
    assert len(folds) == 2 and not set(folds[0]["test"]) & set(folds[1]["test"])
    for f in folds:
        assert not set(f["val"]) & set(f["test"])
    table = pd.read_csv(res["results_csv"])
    assert {"level", "fold", "patient", *CV_METRICS} <= set(table.columns)
    vols = table[table.level == "volume"]
    assert len(vols) == 8 and sorted(vols.patient) == sorted(p for f in folds for p in f["test"])
    assert len(table[table.level == "fold"]) == 2
    assert len(os.listdir(out / "oof_masks")) == 8
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    exp = client.get_experiment_by_name("cv_test")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == res["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res["parent_run_id"]]
    assert len(parent) == 1 and len(children) == 2 and "dice_fold_mean" in parent[0].data.metrics
    assert all("oof_dice" in c.data.metrics for c in children)
    summary = json.load(open(out / "cv_summary.json"))
    assert summary["folds_done"] == 2 and "hd95_mm" in summary["summary"]
    # the plan beside each fold's checkpoint records the minimum area chosen on that fold's validation part
    plan = json.load(open(out / "fold0" / "model.json"))
    assert "min_la_area_mm2" in plan["tuning"] and plan["network_def"]["in_channels"] == 3
    # resuming trains and evaluates nothing again
    stamps = {k: os.path.getmtime(out / f"fold{k}" / "model.pt") for k in (0, 1)}
    again = cross_validate(str(out), datalist=tiny_demo, folds=2, n_val=1, overrides=TINY, experiment_name="cv_test")
    assert {k: os.path.getmtime(out / f"fold{k}" / "model.pt") for k in (0, 1)} == stamps
    assert again["parent_run_id"] == res["parent_run_id"] and len(client.search_runs([exp.experiment_id])) == 3
    # the folds as one shipped detector: loads from its plan, predicts as the fold models average
    ckpt = export_ensemble(str(out), str(tmp_path / "models" / "detector.pt"))
    with pytest.raises(FileExistsError):
        export_ensemble(str(out), ckpt)
    network, plan = load_detector(ckpt)
    assert len(network.members) == 2 and plan["pixel_mm"] == 1.25 and plan["context_slices"] == 1
    demo_root = os.path.dirname(tiny_demo)
    image = os.path.join(demo_root, json.load(open(tiny_demo))["segmentation"][0]["image"])
    la = segment_la(network, plan, load_volume(image))
    assert la["mask"].shape == load_volume(image).shape and la["mask"].dtype == torch.uint8
    _joined_export(out, tmp_path, tiny_demo, image)


def _joined_export(out, tmp_path, tiny_demo, image):
    """A second cross-validation on the same folds at twice the pixel size joins the first's ensemble: its members run
    Rescaled inside the first's inferer, and the ensemble is scored out of fold as shipped."""
    import shutil

    from bundle.networks import Ensemble, Rescaled

    other = tmp_path / "cv_coarse"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("oof_masks", "mlruns*", "cache"))
    for k in (0, 1):  # the same window in mm (32 px at 1.25 mm = 16 px at 2.5 mm), other weights
        body = json.load(open(other / f"fold{k}" / "model.json"))
        body["preprocessing"].update(pixel_mm=2.5, spatial_size=16)
        json.dump(body, open(other / f"fold{k}" / "model.json", "w"))
        state = torch.load(other / f"fold{k}" / "model.pt")
        torch.save(
            {n: v * 0.5 if v.is_floating_point() else v for n, v in state.items()}, other / f"fold{k}" / "model.pt"
        )
    ckpt = str(tmp_path / "models" / "joined.pt")
    export_ensemble(str(out), ckpt, with_dirs=[str(other)], datalist=tiny_demo)
    plan = json.load(open(tmp_path / "models" / "joined.json"))
    first, second = plan["network_def"]["network"]
    assert plan["network_def"]["members"] == 2 and first["_target_"] == "UNet"
    assert second["_target_"] == "bundle.networks.Rescaled" and second["scale"] == 0.5
    assert plan["cross_validation"]["volumes"] == 8 and len(plan["tuning"]["min_la_area_mm2"]["per_fold"]) == 2
    assert plan["provenance"]["joined_cross_validations"][0]["scale"] == 0.5
    assert len(pd.read_csv(out / "export_joined" / "cv_results.csv")) == 8
    assert sorted(os.listdir(tmp_path / "models")) == ["detector.json", "detector.pt", "joined.json", "joined.pt"]
    network, flat = load_detector(ckpt)
    assert len(network.members) == 4 and isinstance(network.members[3], Rescaled)
    # fold 0's members are fold 0's two models: the same output as building that pair by hand
    fold0 = [load_detector(str(d / "fold0" / "model.pt"))[0] for d in (out, other)]
    pair = Ensemble.from_networks([fold0[0], Rescaled(fold0[1], 0.5)])
    volume = load_volume(image)
    a, b = segment_la(network.subset(0, 2), flat, volume), segment_la(pair, flat, volume)
    torch.testing.assert_close(a["logits"], b["logits"], atol=2e-2, rtol=0)  # float16 weights in the export
    # cross-validations on other folds, or with another window, do not join; nothing is left behind
    body = json.load(open(other / "fold1" / "model.json"))
    body["preprocessing"]["spatial_size"] = 32
    json.dump(body, open(other / "fold1" / "model.json", "w"))
    with pytest.raises(ValueError, match="networks or preprocessing differ"):
        export_ensemble(str(out), str(tmp_path / "models" / "bad.pt"), with_dirs=[str(other)], datalist=tiny_demo)
    body = json.load(open(other / "fold0" / "model.json"))
    body["preprocessing"]["spatial_size"] = 32  # both folds: a window of 80 mm against the first's 40 mm
    json.dump(body, open(other / "fold0" / "model.json", "w"))
    with pytest.raises(ValueError, match="more than the pixel size"):
        export_ensemble(str(out), str(tmp_path / "models" / "bad.pt"), with_dirs=[str(other)], datalist=tiny_demo)
    json.dump({"folds": [{"train": [], "val": [], "test": []}] * 2}, open(other / "folds.json", "w"))
    with pytest.raises(ValueError, match="folds differ"):
        export_ensemble(str(out), str(tmp_path / "models" / "bad.pt"), with_dirs=[str(other)], datalist=tiny_demo)
    assert not any(n.startswith("bad") for n in os.listdir(tmp_path / "models"))


def test_smoothing_along_the_slices_by_hand():
    from bundle.evaluation.crossval import _smooth_along

    logits = torch.full((1, 2, 2, 5), -20.0)
    logits[..., 2] = 20.0  # one slice of probability 1 among slices of probability 0
    assert _smooth_along(logits, 2, 0.0) is logits  # sigma 0: untouched
    out = torch.sigmoid(_smooth_along(logits, 2, 1.0))
    # scipy's Gaussian (truncated at 4 sigma, borders reflected: slice 2 mirrored at -3 and 7): normalised weights
    # w(d) = exp(-d^2 / 2) / sum; slice 2 gets w(0), slices 1 and 3 get w(1) + w(4) (the mirror image 4 away)
    w = np.exp(-0.5 * np.arange(0, 5) ** 2) / np.exp(-0.5 * np.arange(-4, 5) ** 2).sum()
    assert out[0, 0, 0, 2].item() == pytest.approx(w[0], abs=1e-6)
    assert out[0, 1, 1, 1].item() == pytest.approx(w[1] + w[4], abs=1e-6)
    assert out[0, 1, 1, 3].item() == pytest.approx(w[1] + w[4], abs=1e-6)
    assert torch.sigmoid(_smooth_along(logits, 0, 1.0))[0, 0, 0, 2].item() > 0.99  # along x: the slices unchanged


def test_averaging_a_second_detector_before_the_rule(tiny_demo, tmp_path):
    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.evaluation.crossval import score_settings
    from tests.conftest import write_known_detector

    # logits 20 (x - 0.3) and 20 (x - 0.7): their mean probability is >= 0.5 exactly where x >= 0.5 (the sigmoid's
    # symmetry), so the pair decides as the detector of level 0.5
    nets = {lv: load_detector(write_known_detector(tmp_path, lv, name=f"d{lv}.pt")) for lv in (0.3, 0.5, 0.7)}
    entries = load_datalist(tiny_demo, os.path.dirname(tiny_demo), LIST_KEYS)["segmentation"][:2]
    pair = score_settings(*nets[0.3], entries, [{}], keep_masks=True, others=[nets[0.7]])[0]
    middle = score_settings(*nets[0.5], entries, [{}], keep_masks=True)[0]
    low = score_settings(*nets[0.3], entries, [{}], keep_masks=True)[0]
    for a, b, c in zip(pair, middle, low):
        assert (a["mask"] != b["mask"]).float().mean() < 1e-3 and a["dice"] == pytest.approx(b["dice"], abs=1e-3)
        assert int(c["mask"].sum()) > int(a["mask"].sum())  # the first detector alone finds more


def test_an_alteration_reaches_the_detector_before_normalisation(tiny_demo, tmp_path):
    from bundle.data.datalist import LIST_KEYS, load_datalist
    from bundle.evaluation.crossval import score_settings
    from tests.conftest import write_known_detector

    net = load_detector(write_known_detector(tmp_path, 0.5))
    entries = load_datalist(tiny_demo, os.path.dirname(tiny_demo), LIST_KEYS)["segmentation"][:1]
    seen = []

    def flat(image, label):  # a constant image: nothing above the detector's level after normalisation
        seen.append((float(image.max()) > 1.0, tuple(label.shape) == tuple(image.shape)))
        return image * 0 + 7.0

    (plain,), (altered,) = (score_settings(*net, entries, [{}], alter=a)[0] for a in (None, flat))
    assert seen == [(True, True)]  # raw intensities (not yet normalised) and the label in the image's grid
    assert plain["n_la_slices"] > 0 and plain["dice"] > 0.1 and altered["n_la_slices"] == 0 and altered["dice"] == 0
