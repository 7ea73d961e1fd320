"""Data curation (Gahlot et al., data optimisation for large-batch training): embed the training slices with a trained
QA encoder, reduce (PCA, then t-SNE or UMAP), cluster each class with DBSCAN and flag the points it marks as noise,
per slice and per scan; write a curated datalist without the flagged scans.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.data.datalist import SCORE_KEYS, to_binary
from bundle.errors import DataError, WeightsError
from bundle.utils import backup_existing, save_figure

__all__ = [
    "PROJECTIONS",
    "Curation",
    "cluster_classes",
    "curate_embeddings",
    "curation_encoder",
    "curation_summary",
    "flag_scans",
    "k_distance_eps",
    "reduce_embeddings",
    "write_curated_datalist",
    "write_curation",
]

logger = logging.getLogger(__name__)

PROJECTIONS = ("tsne", "umap", "none")
CLASS_NAMES = ("non-diagnostic", "diagnostic")  # the binary classes of a QA label (score >= 3 is diagnostic)


def curation_encoder(network: torch.nn.Module, ckpt: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The encoder of a QA network, with the weights of a trained checkpoint: what embeds the slices.

    Args:
        network: a :class:`bundle.networks.QANet` built as the checkpoint was trained (same encoder layout).
        ckpt: a QA-network state dict (any strategy: its ``encoder.`` entries are used) or an encoder state dict
            (``supcon_encoder.pt``), see :func:`bundle.networks.load_encoder_weights`.
        device: where the encoder runs.

    Returns:
        ``network.encoder`` (pooled features ``(N, C)``), loaded, in eval mode, on ``device``.

    Raises:
        WeightsError: one line naming the file, when it is missing or does not fit the encoder.
    """
    from bundle.networks.qa import load_encoder_weights

    if not ckpt or not os.path.isfile(str(ckpt)):
        raise WeightsError(
            f"no QA checkpoint at {ckpt}; pass --qa_ckpt with a trained QA network or encoder "
            "(e.g. models/qa_baseline.pt or models/supcon_encoder.pt)"
        )
    try:
        load_encoder_weights(network.encoder, str(ckpt))
    except ValueError as e:
        raise WeightsError(
            f"{e}; build the network as it was trained (--spatial_size, --encoder_layers, --encoder_widths)"
        ) from None
    return network.encoder.to(device).eval()


def reduce_embeddings(
    embeddings: np.ndarray, pca_components: int = 50, projection: str = "tsne", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """PCA of the embeddings, then a 2D projection of the PCA features (the paper: PCA then t-SNE).

    Args:
        embeddings: ``(n, d)`` features, one row per slice.
        pca_components: PCA components kept (at most ``min(n, d)``).
        projection: ``"tsne"`` (scikit-learn), ``"umap"`` (where ``umap-learn`` is installed, else t-SNE) or
            ``"none"`` (no projection: the PCA features are clustered; the picture shows their first two).
        seed: random state.

    Returns:
        ``(PCA features (n, k), the points DBSCAN clusters, the projection used)``.
    """
    from sklearn.decomposition import PCA

    from bundle.evaluation.plots import project_embeddings

    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"need at least 3 embeddings (n, d), got shape {x.shape}")
    k = int(max(1, min(int(pca_components), x.shape[0], x.shape[1])))
    pca = PCA(n_components=k, random_state=seed).fit_transform(x)
    if projection == "none":
        return pca, pca, "none"
    pts, used = project_embeddings(pca, projection, seed)
    return pca, np.asarray(pts, dtype=np.float64), used


def k_distance_eps(points: np.ndarray, min_samples: int = 5, quantile: float = 0.95) -> float:
    """A DBSCAN ``eps`` from the k-distance of the points (Ester et al.'s heuristic, as a quantile).

    The k-distance of a point is its distance to its ``min_samples - 1``-th nearest other point (DBSCAN counts
    the point itself in ``min_samples``): a point is a core point exactly when its k-distance is <= ``eps``. The
    ``quantile`` of the k-distances therefore makes that share of the points core points, and at most
    ``1 - quantile`` of them can be noise.

    Args:
        points: ``(n, d)``.
        min_samples: DBSCAN's ``min_samples``.
        quantile: share of points that become core points, in (0, 1].

    Returns:
        eps (> 0).
    """
    from sklearn.neighbors import NearestNeighbors

    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    x = np.asarray(points, dtype=np.float64)
    k = int(min(max(int(min_samples), 2), len(x)))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    eps = float(np.quantile(dist[:, -1], quantile))
    return eps if eps > 0 else float(np.finfo(np.float32).eps)


def cluster_classes(
    points: np.ndarray,
    classes: np.ndarray,
    eps: float | None = None,
    min_samples: int = 5,
    eps_quantile: float = 0.95,
) -> dict:
    """DBSCAN on the points of each class separately (the paper: clustering each class individually).

    A class with fewer than ``min_samples`` points is not clustered (DBSCAN would call all of it noise) and
    nothing in it is flagged.

    Args:
        points: ``(n, d)`` points (e.g. the t-SNE projection).
        classes: class per point ``(n,)``.
        eps: DBSCAN's neighbourhood radius; None: per class, :func:`k_distance_eps` with ``eps_quantile``.
        min_samples: DBSCAN's ``min_samples``.
        eps_quantile: quantile of the k-distance giving the default eps.

    Returns:
        ``{"cluster": (n,) cluster id within the point's class (-1: noise), "noise": (n,) bool,
        "classes": {class: {"n", "eps", "n_clusters", "n_noise", "clustered"}}}``.
    """
    from sklearn.cluster import DBSCAN

    if int(min_samples) < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if eps is not None and float(eps) <= 0:
        raise ValueError(f"eps must be > 0 (or null for the k-distance default), got {eps}")
    points, classes = np.asarray(points, dtype=np.float64), np.asarray(classes)
    if len(points) != len(classes):
        raise ValueError(f"points ({len(points)}) and classes ({len(classes)}) differ in length")
    cluster = np.zeros(len(points), dtype=int)
    noise = np.zeros(len(points), dtype=bool)
    per_class: dict = {}
    for c in np.unique(classes):
        sel = np.flatnonzero(classes == c)
        info = {"n": int(len(sel)), "eps": None, "n_clusters": 0, "n_noise": 0, "clustered": False}
        if len(sel) < int(min_samples):
            logger.warning(f"class {c}: {len(sel)} points, fewer than min_samples={min_samples}: not clustered")
            per_class[int(c)] = info
            continue
        e = float(eps) if eps is not None else k_distance_eps(points[sel], min_samples, eps_quantile)
        lab = DBSCAN(eps=e, min_samples=int(min_samples)).fit_predict(points[sel])
        cluster[sel], noise[sel] = lab, lab < 0
        info.update(eps=e, n_clusters=int(len(set(lab.tolist()) - {-1})), n_noise=int((lab < 0).sum()), clustered=True)
        per_class[int(c)] = info
    return {"cluster": cluster, "noise": noise, "classes": per_class}


def flag_scans(volumes: np.ndarray, noise: np.ndarray, share: float = 0.5) -> dict[int, dict]:
    """Scan-level flags: a scan is flagged when the share of its slices marked noise is >= ``share``.

    Args:
        volumes: scan id per slice ``(n,)``.
        noise: noise flag per slice ``(n,)``.
        share: threshold on the share of flagged slices, in (0, 1].

    Returns:
        ``{scan id: {"slices", "flagged_slices", "share", "flagged"}}`` in scan order.
    """
    if not 0 < float(share) <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    volumes, noise = np.asarray(volumes), np.asarray(noise, dtype=bool)
    out = {}
    for v in np.unique(volumes):
        sel = volumes == v
        n, k = int(sel.sum()), int(noise[sel].sum())
        out[int(v)] = {"slices": n, "flagged_slices": k, "share": k / n, "flagged": bool(k / n >= float(share))}
    return out


def curate_embeddings(
    embeddings: np.ndarray,
    classes: np.ndarray,
    volumes: np.ndarray,
    pca_components: int = 50,
    projection: str = "tsne",
    eps: float | None = None,
    min_samples: int = 5,
    eps_quantile: float = 0.95,
    scan_share: float = 0.5,
    seed: int = 0,
) -> dict:
    """The whole curation of slice embeddings: reduce, cluster each class, flag slices and scans.

    Returns:
        ``{"pca", "points", "projection", "cluster", "noise", "classes", "scans"}`` (see :func:`reduce_embeddings`,
        :func:`cluster_classes`, :func:`flag_scans`).
    """
    pca, points, used = reduce_embeddings(embeddings, pca_components, projection, seed)
    clusters = cluster_classes(points, classes, eps, min_samples, eps_quantile)
    scans = flag_scans(volumes, clusters["noise"], scan_share)
    return {"pca": pca, "points": points, "projection": used, **clusters, "scans": scans}


def write_curated_datalist(
    datalist: str,
    flagged: Sequence[int],
    path: str,
    list_name: str = "quality",
    exclude_slices: dict[int, Sequence[int]] | None = None,
) -> str:
    """The input datalist without the flagged entries of one list; everything else as it was (relative paths too).

    Args:
        datalist: the input datalist JSON.
        flagged: indices of the flagged entries in its ``list_name`` list.
        path: the curated datalist JSON (an existing file is kept as ``<name>.<time>.json``).
        list_name: the list the indices refer to.
        exclude_slices: ``{entry index: [slice index, ...]}``: slices of kept entries that QA training leaves out,
            written to the entry's ``exclude_slices`` (merged with any it has; see :class:`bundle.data.QASlices`).

    Returns:
        ``path``.
    """
    with open(datalist) as f:
        raw = json.load(f)
    drop = {int(i) for i in flagged}
    for i, sl in (exclude_slices or {}).items():
        e = raw[list_name][int(i)]
        if sl and int(i) not in drop:
            e["exclude_slices"] = sorted({*map(int, e.get("exclude_slices", [])), *map(int, sl)})
    raw[list_name] = [e for i, e in enumerate(raw.get(list_name, [])) if i not in drop]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    backup_existing(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=1)
    return path


def _plot(points: np.ndarray, classes: np.ndarray, noise: np.ndarray, scan_flag: np.ndarray, path: str, title: str):
    from bundle.evaluation.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    for value, color in ((0, "tab:red"), (1, "tab:blue")):
        sel = classes == value
        ax.scatter(
            points[sel, 0], points[sel, 1], s=7, c=color, alpha=0.6, label=f"{CLASS_NAMES[value]} ({int(sel.sum())})"
        )
    ax.scatter(
        points[noise, 0],
        points[noise, 1],
        s=30,
        c="black",
        marker="x",
        linewidths=1.0,
        label=f"flagged slice: DBSCAN noise ({int(noise.sum())})",
    )
    ring = scan_flag & ~noise
    if ring.any():
        ax.scatter(
            points[ring, 0],
            points[ring, 1],
            s=30,
            facecolors="none",
            edgecolors="black",
            linewidths=0.6,
            label=f"other slice of a flagged scan ({int(ring.sum())})",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


def write_curation(
    output_dir: str,
    result: dict,
    classes: np.ndarray,
    volumes: np.ndarray,
    slices: np.ndarray,
    entries: Sequence[dict],
    datalist: str,
    dataset_dir: str | None = None,
    label: str = "fibrosis",
    settings: dict | None = None,
    drop_slices: bool = False,
) -> dict:
    """Write the curation's outputs to ``output_dir``: ``curation.csv`` (every slice and scan, flag and why),
    ``curation.png`` (the scatter), ``curation_summary.json`` and ``datalist_curated.json``.

    Args:
        output_dir: the run folder.
        result: the output of :func:`curate_embeddings`.
        classes, volumes, slices: class, scan id (index into ``entries``) and slice index per embedded slice.
        entries: the embedded part's quality entries (from :func:`bundle.data.load_datalist`: ``_index`` is the
            entry's position in the datalist's ``quality`` list).
        datalist: the input datalist JSON.
        dataset_dir: folder its paths are relative to (for the scan names).
        label: the QA label whose binary classes were clustered.
        settings: the curation settings, recorded in the summary.
        drop_slices: also leave out the flagged slices of the kept scans (``exclude_slices`` in the curated datalist).

    Returns:
        the summary (``curation_summary.json``'s content).
    """
    import pandas as pd

    classes, volumes, slices = np.asarray(classes).astype(int), np.asarray(volumes).astype(int), np.asarray(slices)

    def name(v: int) -> str:
        return os.path.relpath(entries[v]["image"], dataset_dir) if dataset_dir else entries[v]["image"]

    scans, per_class = result["scans"], result["classes"]
    scan_flag = np.array([scans[int(v)]["flagged"] for v in volumes], dtype=bool)
    rows = []
    for i, (v, s, c) in enumerate(zip(volumes, slices, classes)):
        info = per_class[int(c)]
        if not info["clustered"]:
            why = f"not clustered: class {c} has {info['n']} slices (< min_samples)"
        elif result["noise"][i]:
            why = f"DBSCAN noise in class {c} ({CLASS_NAMES[c]}), eps={info['eps']:.4g}"
        else:
            why = f"cluster {result['cluster'][i]} of class {c} ({CLASS_NAMES[c]})"
        rows.append(
            {
                "level": "slice",
                "scan": name(v),
                "patient": entries[v].get("patient"),
                "slice": int(s),
                "class": int(c),
                "cluster": int(result["cluster"][i]),
                "noise": bool(result["noise"][i]),
                "x": float(result["points"][i, 0]),
                "y": float(result["points"][i, 1]),
                "flagged": bool(result["noise"][i]),
                "reason": why,
            }
        )
    share = float((settings or {}).get("scan_share", 0.5))
    seen = set(scans)
    for v, e in enumerate(entries):
        c = int(classes[volumes == v][0]) if v in seen else to_binary(e[label])
        if v not in seen:
            sc = {"slices": 0, "flagged_slices": 0, "share": 0.0, "flagged": False}
            why = "no LA slice selected: not embedded, kept"
        else:
            sc = scans[v]
            op = ">=" if sc["flagged"] else "<"
            why = f"{sc['flagged_slices']} of {sc['slices']} slices noise, share {sc['share']:.2f} {op} {share}"
            why = ("flagged: " if sc["flagged"] else "kept: ") + why
        rows.append(
            {
                "level": "scan",
                "scan": name(v),
                "patient": e.get("patient"),
                "slice": None,
                "class": c,
                "cluster": None,
                "noise": None,
                "n_slices": sc["slices"],
                "n_flagged": sc["flagged_slices"],
                "share": sc["share"],
                "flagged": sc["flagged"],
                "reason": why,
            }
        )
    os.makedirs(output_dir, exist_ok=True)
    for f in ("curation.csv", "curation.png", "curation_summary.json"):  # a rerun into the same folder keeps the old
        backup_existing(os.path.join(output_dir, f))
    columns = [
        "level",
        "scan",
        "patient",
        "slice",
        "class",
        "cluster",
        "noise",
        "x",
        "y",
        "n_slices",
        "n_flagged",
        "share",
        "flagged",
        "reason",
    ]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("slice", "cluster", "n_slices", "n_flagged"):  # integers with blanks (a scan row has no slice)
        table[col] = table[col].astype("Int64")
    table.to_csv(os.path.join(output_dir, "curation.csv"), index=False)

    flagged_scans = [v for v in sorted(scans) if scans[v]["flagged"]]
    exclude = {}
    if drop_slices:
        for v in scans:
            if not scans[v]["flagged"] and scans[v]["flagged_slices"]:
                exclude[entries[v]["_index"]] = slices[(volumes == v) & result["noise"]].astype(int).tolist()
    curated = os.path.join(output_dir, "datalist_curated.json")
    write_curated_datalist(datalist, [entries[v]["_index"] for v in flagged_scans], curated, exclude_slices=exclude)
    n_noise = int(result["noise"].sum())
    method = {"tsne": "t-SNE", "umap": "UMAP", "none": "PCA (first two components)"}[result["projection"]]
    title = (
        f"{method} of {len(volumes)} training slices, coloured by {label} class; "
        f"{n_noise} slices, {len(flagged_scans)} scans flagged"
    )
    _plot(result["points"], classes, result["noise"], scan_flag, os.path.join(output_dir, "curation.png"), title)

    by_class = {}
    for c, info in per_class.items():
        vs = [v for v in scans if int(classes[volumes == v][0]) == c]
        by_class[CLASS_NAMES[c]] = {
            "class": c,
            "slices": info["n"],
            "flagged_slices": info["n_noise"],
            "scans": len(vs),
            "flagged_scans": sum(scans[v]["flagged"] for v in vs),
            "eps": info["eps"],
            "clusters": info["n_clusters"],
            "clustered": info["clustered"],
        }
    summary = {
        "label": label,
        "projection": result["projection"],
        "datalist": os.path.abspath(datalist),
        "dataset_dir": dataset_dir,
        "curated_datalist": os.path.abspath(curated),
        "slices": int(len(volumes)),
        "flagged_slices": n_noise,
        "scans": len(scans),
        "flagged_scans": len(flagged_scans),
        "scans_without_la_slices": len(entries) - len(scans),
        "drop_slices": bool(drop_slices),
        "excluded_slices": int(sum(map(len, exclude.values()))),
        "by_class": by_class,
        "flagged_scan_names": [name(v) for v in flagged_scans],
        "settings": settings or {},
    }
    with open(os.path.join(output_dir, "curation_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def curation_summary(summary_file: str) -> str:
    """Print (and return) one line of a written curation: flagged slices and scans per class."""
    if not os.path.isfile(summary_file):
        line = f"no curation summary at {summary_file}"
        logger.warning(line)
        return line
    with open(summary_file) as f:
        s = json.load(f)
    per = "; ".join(
        f"{k}: {v['flagged_slices']}/{v['slices']} slices, {v['flagged_scans']}/{v['scans']} scans"
        for k, v in s["by_class"].items()
    )
    line = (
        f"curation ({s['label']}): {s['flagged_slices']} of {s['slices']} slices and {s['flagged_scans']} of "
        f"{s['scans']} scans flagged ({per}); curated datalist {s['curated_datalist']}"
    )
    logger.info(line)
    print(line, flush=True)
    return line


class Curation:
    """Gather an embedding evaluator's slice embeddings and curate them when its epoch completes.

    Attach to a ``SupervisedEvaluator`` whose network maps slices to pooled features (``QANet.encoder``) and whose
    batches carry ``volume``, ``slice`` and ``target`` (see :class:`bundle.data.QASlices`). At the end of the epoch
    :func:`curate_embeddings` and :func:`write_curation` run and the counts go to ``engine.state.metrics``
    (``flagged_slices``, ``flagged_scans``, ``flagged_slice_share``, ``flagged_<slices|scans>_class<0|1>``,
    ``eps_class<0|1>``, ``clusters_class<0|1>``) so the MLflow handler listed after it logs them.

    Args:
        output_dir: the run folder.
        entries: the embedded part's quality entries (``QASlices.cache.entries``).
        datalist: the input datalist JSON.
        dataset_dir: folder its paths are relative to.
        label: the QA label whose binary classes are clustered separately (one of ``SCORE_KEYS``).
        pca_components, projection, eps, min_samples, eps_quantile, scan_share, seed: see :func:`curate_embeddings`.
        drop_slices: the curated datalist also leaves out the flagged slices of the kept scans (``exclude_slices``).
    """

    def __init__(
        self,
        output_dir: str,
        entries: Sequence[dict],
        datalist: str,
        dataset_dir: str | None = None,
        label: str = "fibrosis",
        pca_components: int = 50,
        projection: str = "tsne",
        eps: float | None = None,
        min_samples: int = 5,
        eps_quantile: float = 0.95,
        scan_share: float = 0.5,
        seed: int = 0,
        drop_slices: bool = False,
    ) -> None:
        from bundle.utils import as_bool

        if label not in SCORE_KEYS:
            raise ValueError(f"label must be one of {SCORE_KEYS}, got {label!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if int(pca_components) < 1 or int(min_samples) < 1:
            raise ValueError(f"pca_components and min_samples must be >= 1, got {pca_components}, {min_samples}")
        if eps is not None and float(eps) <= 0:
            raise ValueError(f"eps must be > 0 or null, got {eps}")
        if not 0 < float(eps_quantile) <= 1 or not 0 < float(scan_share) <= 1:
            raise ValueError(f"eps_quantile and scan_share must be in (0, 1], got {eps_quantile}, {scan_share}")
        self.output_dir, self.entries = output_dir, list(entries)
        self.datalist, self.dataset_dir = datalist, dataset_dir
        self.label = label
        self.settings = {
            "label": label,
            "pca_components": int(pca_components),
            "projection": projection,
            "eps": None if eps is None else float(eps),
            "min_samples": int(min_samples),
            "eps_quantile": float(eps_quantile),
            "scan_share": float(scan_share),
            "seed": int(seed),
            "drop_slices": as_bool(drop_slices),
        }
        self.summary: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine) -> None:
        self._emb, self._vol, self._sl, self._tgt = [], [], [], []

    def collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        get = (lambda k: [b[k] for b in batch]) if isinstance(batch, list) else (lambda k: batch[k])  # noqa: E731
        pred = out["pred"] if isinstance(out, dict) else torch.stack([o["pred"] for o in out])
        self._emb.append(torch.flatten(torch.as_tensor(pred), 1).detach().float().cpu().numpy())
        self._vol.append(np.asarray(get("volume"), dtype=int).reshape(-1))
        self._sl.append(np.asarray(get("slice"), dtype=int).reshape(-1))
        self._tgt.append(np.asarray(torch.as_tensor(get("target")).cpu()).reshape(-1, len(SCORE_KEYS)))

    def complete(self, engine: Engine) -> None:
        if not self._emb:
            raise DataError("curation: no training slice was embedded (no LA slice selected?)")
        emb, vol, sl = np.concatenate(self._emb), np.concatenate(self._vol), np.concatenate(self._sl)
        classes = np.concatenate(self._tgt)[:, SCORE_KEYS.index(self.label)].astype(int)
        os.makedirs(self.output_dir, exist_ok=True)
        backup_existing(os.path.join(self.output_dir, "embeddings.npz"))  # a rerun into the same folder keeps the old
        np.savez_compressed(
            os.path.join(self.output_dir, "embeddings.npz"),
            embeddings=emb.astype(np.float32),
            volume=vol,
            slice=sl,
            target=classes.astype(np.int8),
        )
        s = self.settings
        result = curate_embeddings(
            emb,
            classes,
            vol,
            s["pca_components"],
            s["projection"],
            s["eps"],
            s["min_samples"],
            s["eps_quantile"],
            s["scan_share"],
            s["seed"],
        )
        self.summary = write_curation(
            self.output_dir,
            result,
            classes,
            vol,
            sl,
            self.entries,
            self.datalist,
            self.dataset_dir,
            self.label,
            s,
            s["drop_slices"],
        )
        m = {
            "slices": self.summary["slices"],
            "scans": self.summary["scans"],
            "flagged_slices": self.summary["flagged_slices"],
            "flagged_scans": self.summary["flagged_scans"],
            "flagged_slice_share": self.summary["flagged_slices"] / max(1, self.summary["slices"]),
            "excluded_slices": self.summary["excluded_slices"],
        }
        for v in self.summary["by_class"].values():
            c = v["class"]
            m.update(
                {
                    f"slices_class{c}": v["slices"],
                    f"flagged_slices_class{c}": v["flagged_slices"],
                    f"scans_class{c}": v["scans"],
                    f"flagged_scans_class{c}": v["flagged_scans"],
                    f"clusters_class{c}": v["clusters"],
                }
            )
            if v["eps"] is not None:
                m[f"eps_class{c}"] = v["eps"]
        engine.state.metrics.update({k: float(x) for k, x in m.items()})
