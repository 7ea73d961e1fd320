"""Curation on hand-made embeddings: DBSCAN noise per class, the k-distance eps, the scan-level share rule, outputs."""

import json

import numpy as np
import pandas as pd
import pytest

from bundle.curation import cluster_classes, curate_embeddings, flag_scans, k_distance_eps, write_curated_datalist
from bundle.curation.curate import write_curation


def _blob(rng, center, n, scale=0.1):
    return np.asarray(center, float) + rng.normal(0, scale, (n, len(center)))


def test_planted_outlier_is_the_only_noise():
    rng = np.random.default_rng(0)
    pts = np.concatenate([_blob(rng, [0, 0], 40), [[10.0, 10.0]], _blob(rng, [5, 0], 40), [[-8.0, 7.0]]])
    classes = np.array([0] * 41 + [1] * 41)
    res = cluster_classes(pts, classes, eps=0.5, min_samples=5)
    assert np.flatnonzero(res["noise"]).tolist() == [40, 81]  # the two planted points, one per class
    assert res["classes"][0]["n_clusters"] == 1 and res["classes"][1]["n_clusters"] == 1
    assert res["cluster"][40] == -1 and set(res["cluster"][:40]) == {0}


def test_classes_are_clustered_separately():
    """A class-1 point inside a class-0 blob is noise for its own class (alone there), not a member of the blob."""
    rng = np.random.default_rng(1)
    pts = np.concatenate([_blob(rng, [0, 0], 30), _blob(rng, [6, 0], 30), [[0.0, 0.0]]])
    classes = np.array([0] * 30 + [1] * 31)
    res = cluster_classes(pts, classes, eps=0.5, min_samples=4)
    assert np.flatnonzero(res["noise"]).tolist() == [60]
    # pooled into one clustering, the same point would be a core member of the class-0 blob
    pooled = cluster_classes(pts, np.zeros(61, int), eps=0.5, min_samples=4)
    assert not pooled["noise"][60]


def test_small_class_is_not_clustered():
    rng = np.random.default_rng(2)
    pts = np.concatenate([_blob(rng, [0, 0], 30), [[9.0, 9.0], [9.1, 9.0]]])
    res = cluster_classes(pts, np.array([0] * 30 + [1, 1]), eps=0.5, min_samples=5)
    assert not res["noise"][30:].any() and res["classes"][1]["clustered"] is False


def test_k_distance_eps():
    # five points on a line, spacing 1, and one 10 beyond; min_samples=3: the k-distance is the distance to the
    # 2nd nearest other point (DBSCAN counts the point itself)
    pts = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [14.0]])
    # k-distances: 0->2, 1->1, 2->1, 3->1, 4->2, 14->11
    assert k_distance_eps(pts, min_samples=3, quantile=0.5) == pytest.approx(1.5)
    assert k_distance_eps(pts, min_samples=3, quantile=1.0) == pytest.approx(11.0)
    # with the default eps (a quantile below the outlier's k-distance) the far point is noise, the rest are not
    res = cluster_classes(pts, np.zeros(6, int), eps=None, min_samples=3, eps_quantile=0.8)
    assert res["noise"].tolist() == [False] * 5 + [True]


@pytest.mark.parametrize(
    "noise, share, flagged",
    [
        ([1, 1, 0, 0], 0.5, True),  # exactly half: flagged (>=)
        ([1, 0, 0, 0], 0.5, False),
        ([1, 0, 0, 0], 0.25, True),
        ([1, 1, 1, 0], 1.0, False),
        ([1, 1, 1, 1], 1.0, True),
    ],
)
def test_scan_share_rule(noise, share, flagged):
    volumes = np.array([7, 7, 7, 7, 3, 3])
    scans = flag_scans(volumes, np.array(noise + [0, 0], bool), share)
    assert scans[7]["flagged"] is flagged and scans[7]["share"] == pytest.approx(sum(noise) / 4)
    assert scans[3] == {"slices": 2, "flagged_slices": 0, "share": 0.0, "flagged": False}


def test_bad_options():
    with pytest.raises(ValueError, match="share"):
        flag_scans(np.zeros(3), np.zeros(3, bool), 0.0)
    with pytest.raises(ValueError, match="eps"):
        cluster_classes(np.zeros((3, 2)), np.zeros(3), eps=-1.0)
    with pytest.raises(ValueError, match="projection"):
        curate_embeddings(np.zeros((5, 4)), np.zeros(5), np.zeros(5), projection="pca")


def test_curation_end_to_end_flags_the_odd_scan(tmp_path):
    """Four scans of 12 slices in 8-d embeddings; scan 2's slices lie far from every other slice of their class: the
    pipeline (PCA, then DBSCAN on the PCA features) flags its slices and the scan, and the curated datalist drops it."""
    rng = np.random.default_rng(3)
    emb = np.concatenate(
        [
            _blob(rng, np.zeros(8), 12),
            _blob(rng, np.zeros(8), 12),
            rng.uniform(-30, 30, (12, 8)),
            _blob(rng, np.full(8, 3.0), 12),
        ]
    )
    volumes = np.repeat([0, 1, 2, 3], 12)
    classes = np.repeat([1, 1, 1, 0], 12)
    res = curate_embeddings(emb, classes, volumes, pca_components=4, projection="none", min_samples=5, eps=2.0)
    assert res["noise"][24:36].all() and not res["noise"][:24].any() and not res["noise"][36:].any()
    assert [v for v, s in res["scans"].items() if s["flagged"]] == [2]

    entries = [
        {"image": str(tmp_path / f"s{v}.nii.gz"), "patient": f"p{v}", "_index": v + 1, "fibrosis": 4} for v in range(4)
    ]
    quality = [{"image": "val.nii.gz", "patient": "pv"}]
    quality += [{"image": f"s{v}.nii.gz", "patient": f"p{v}"} for v in range(4)]
    raw = {"segmentation": [{"image": "seg.nii.gz", "label": "lab.nii.gz", "patient": "p0"}], "quality": quality}
    datalist = tmp_path / "dataset.json"
    datalist.write_text(json.dumps(raw))
    out = tmp_path / "out"
    out.mkdir()
    (out / "datalist_curated.json").write_text("earlier")  # kept, not overwritten
    summary = write_curation(
        str(out),
        res,
        classes,
        volumes,
        np.tile(np.arange(12), 4),
        entries,
        str(datalist),
        str(tmp_path),
        "fibrosis",
        {"scan_share": 0.5},
    )
    curated = json.loads((out / "datalist_curated.json").read_text())
    assert curated["segmentation"] == raw["segmentation"]  # untouched
    assert [e["image"] for e in curated["quality"]] == ["val.nii.gz", "s0.nii.gz", "s1.nii.gz", "s3.nii.gz"]
    assert [p.read_text() for p in out.glob("datalist_curated.*.json")] == ["earlier"]
    table = pd.read_csv(out / "curation.csv")
    scans = table[table["level"] == "scan"].set_index("scan")
    assert scans["flagged"].tolist() == [False, False, True, False] and scans.loc["s2.nii.gz", "share"] == 1.0
    slices = table[table["level"] == "slice"]
    assert len(slices) == 48 and slices["flagged"].sum() == 12
    assert slices[slices["flagged"]]["reason"].str.startswith("DBSCAN noise in class 1").all()
    assert summary["flagged_scans"] == 1 and summary["flagged_slices"] == 12
    assert summary["flagged_scan_names"] == ["s2.nii.gz"] and summary["by_class"]["diagnostic"]["flagged_scans"] == 1
    assert summary["by_class"]["non-diagnostic"]["flagged_slices"] == 0
    assert (out / "curation.png").stat().st_size > 0


def test_write_curated_datalist_drops_only_the_given_entries(tmp_path):
    src = tmp_path / "d.json"
    quality = [{"image": "a"}, {"image": "b"}, {"image": "c"}]
    src.write_text(json.dumps({"segmentation": [], "quality": quality, "x": 1}))
    write_curated_datalist(str(src), [1], str(tmp_path / "c.json"))
    curated = json.loads((tmp_path / "c.json").read_text())
    assert curated == {"segmentation": [], "quality": [quality[0], quality[2]], "x": 1}


def test_drop_slices_writes_exclude_slices_and_qa_training_honours_them(tiny_demo, tmp_path):
    """drop_slices: a kept scan's flagged slices go to its entry's exclude_slices, and QASlices leaves them out."""
    from bundle.data import prepare_data
    from bundle.inference import select_qa_slices

    data = prepare_data(datalist=tiny_demo, output_dir=str(tmp_path / "runs"), test_size=2, val_fraction=0.2)
    full = select_qa_slices(data, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"))
    rec = full.records()
    volumes = np.array([r["volume"] for r in rec])
    slices = np.array([r["slice"] for r in rec])
    noise = np.zeros(len(rec), bool)
    noise[np.flatnonzero(volumes == 0)[:1]] = True  # one slice of scan 0: the scan is kept (share < 0.5)
    noise[volumes == 1] = True  # all of scan 1: the scan is dropped
    res = {
        "noise": noise,
        "cluster": np.where(noise, -1, 0),
        "points": np.zeros((len(rec), 2)),
        "projection": "none",
        "classes": {
            0: {"n": 1, "eps": 1.0, "n_clusters": 1, "n_noise": 0, "clustered": True},
            1: {"n": 1, "eps": 1.0, "n_clusters": 1, "n_noise": 0, "clustered": True},
        },
        "scans": flag_scans(volumes, noise, 0.5),
    }
    classes = full.slice_targets()[:, 3].astype(int)
    summary = write_curation(
        str(tmp_path / "out"),
        res,
        classes,
        volumes,
        slices,
        full.cache.entries,
        tiny_demo,
        data.dataset_dir,
        "fibrosis",
        {"scan_share": 0.5},
        drop_slices=True,
    )
    assert summary["flagged_scans"] == 1 and summary["excluded_slices"] == 1
    curated_path = str(tmp_path / "out" / "datalist_curated.json")
    curated = json.load(open(curated_path))
    e0, e1 = full.cache.entries[0], full.cache.entries[1]
    excluded = [e.get("exclude_slices") for e in curated["quality"] if e["image"] in e0["image"]]
    assert excluded == [[int(slices[noise][0])]]
    assert not any(e1["image"].endswith(e["image"]) for e in curated["quality"])
    data2 = prepare_data(
        datalist=curated_path,
        dataset_dir=data.dataset_dir,
        output_dir=str(tmp_path / "runs"),
        split_file=None,
        test_size=2,
        val_fraction=0.2,
    )
    cur = select_qa_slices(data2, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"))
    assert len(cur) == len(full) - int(noise.sum())
    names = lambda s: {(s.cache.entries[r["volume"]]["image"], r["slice"]) for r in s.records()}  # noqa: E731
    assert names(cur) == {(full.cache.entries[v]["image"], int(s)) for v, s, n in zip(volumes, slices, noise) if not n}
    # with a reduced budget (every 2nd LA slice) the curated slices are the full budget's minus the excluded ones
    half_full = select_qa_slices(data, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"), step=2)
    half_cur = select_qa_slices(data2, "train", mode="mask", spatial_size=16, cache_dir=str(tmp_path / "cache"), step=2)
    assert names(half_cur) < names(half_full)
    flagged = {(full.cache.entries[v]["image"], int(s)) for v, s, n in zip(volumes, slices, noise) if n}
    assert names(half_full) - names(half_cur) <= flagged
