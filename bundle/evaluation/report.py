"""Evaluation of a QA network: slice predictions gathered from an evaluator, per-scan verdicts, scores, pictures."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.data.datalist import SCORE_KEYS
from bundle.metrics.qa import AGGREGATIONS, aggregate_scans, binary_metrics, qa_outputs

__all__ = ["QAReport", "flatten_metrics", "report_summary", "score_predictions", "write_report"]

logger = logging.getLogger(__name__)

LEVELS = ("slice", *AGGREGATIONS)  # slice-level, and per scan by the mode of the slices and by mean probability


def score_predictions(volumes: np.ndarray, probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """Scores of slice probabilities, per slice and per scan (mode and mean), for each label.

    Args:
        volumes: scan id per slice ``(n,)``.
        probs: probabilities ``(n, 4)``.
        targets: binary targets ``(n, 4)`` (a slice inherits its scan's).
        threshold: probability threshold.

    Returns:
        ``{"n_slices", "n_scans", "metrics": {level: {label: {metric: value}}}, "scans": aggregate_scans(...),
        "scan_targets": (s, 4)}`` with levels ``slice``, ``mode``, ``mean``.
    """
    volumes, probs, targets = np.asarray(volumes), np.asarray(probs, float), np.asarray(targets).astype(int)
    scans = aggregate_scans(volumes, probs, threshold)
    scan_targets = np.stack([targets[volumes == v][0] for v in scans["volume"]]) if len(volumes) else targets[:0]
    metrics: dict = {level: {} for level in LEVELS}
    for j, name in enumerate(SCORE_KEYS):
        metrics["slice"][name] = binary_metrics(targets[:, j], probs[:, j] > threshold, probs[:, j])
        metrics["mode"][name] = binary_metrics(scan_targets[:, j], scans["mode"][:, j], scans["mode_score"][:, j])
        metrics["mean"][name] = binary_metrics(scan_targets[:, j], scans["mean_pred"][:, j], scans["mean"][:, j])
    return {
        "n_slices": int(len(volumes)),
        "n_scans": int(len(scans["volume"])),
        "metrics": metrics,
        "scans": scans,
        "scan_targets": scan_targets,
    }


def flatten_metrics(metrics: dict, prefix: str = "test") -> dict[str, float]:
    """``{level: {label: {metric: v}}}`` as ``{"<prefix>_<level>_<label>_<metric>": v}`` (MLflow metric names)."""
    return {
        f"{prefix}_{level}_{label}_{m}": float(v)
        for level, per in metrics.items()
        for label, ms in per.items()
        for m, v in ms.items()
        if m != "n"
    }


def write_report(
    output_dir: str,
    volumes: np.ndarray,
    slices: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray,
    scan_names: Sequence[str],
    threshold: float = 0.5,
    part: str = "test",
    title: str = "",
) -> dict:
    """Score slice predictions and write ``metrics.json``, ``metrics.csv``, ``slice_predictions.csv``,
    ``scan_predictions.csv`` and ``confusion_<mode|mean>.png`` to ``output_dir``.

    Returns:
        the ``metrics.json`` content: ``{"part", "n_slices", "n_scans", "threshold", "metrics"}``.
    """
    import pandas as pd

    from bundle.evaluation.plots import plot_confusion_matrices

    os.makedirs(output_dir, exist_ok=True)
    scored = score_predictions(volumes, probs, targets, threshold)
    scans = scored["scans"]
    names = [scan_names[int(v)] if int(v) < len(scan_names) else str(v) for v in scans["volume"]]
    sp = {
        "scan": [scan_names[int(v)] if int(v) < len(scan_names) else str(v) for v in volumes],
        "slice": np.asarray(slices),
    }
    for j, name in enumerate(SCORE_KEYS):
        sp[f"{name}_true"], sp[f"{name}_prob"] = np.asarray(targets)[:, j].astype(int), np.asarray(probs)[:, j]
    pd.DataFrame(sp).to_csv(os.path.join(output_dir, "slice_predictions.csv"), index=False)
    sc = {"scan": names, "slices": scans["slices"]}
    for j, name in enumerate(SCORE_KEYS):
        sc[f"{name}_true"] = scored["scan_targets"][:, j]
        sc[f"{name}_mode"], sc[f"{name}_mode_share"] = scans["mode"][:, j], scans["mode_score"][:, j]
        sc[f"{name}_mean_prob"], sc[f"{name}_mean"] = scans["mean"][:, j], scans["mean_pred"][:, j]
    pd.DataFrame(sc).to_csv(os.path.join(output_dir, "scan_predictions.csv"), index=False)
    rows = [{"level": lv, "label": lb, **ms} for lv, per in scored["metrics"].items() for lb, ms in per.items()]
    pd.DataFrame(rows).to_csv(os.path.join(output_dir, "metrics.csv"), index=False)
    summary = {
        "part": part,
        "n_slices": scored["n_slices"],
        "n_scans": scored["n_scans"],
        "threshold": threshold,
        "metrics": scored["metrics"],
    }
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    for agg, key in (("mode", "mode"), ("mean", "mean_pred")):
        plot_confusion_matrices(
            scored["scan_targets"],
            scans[key],
            SCORE_KEYS,
            os.path.join(output_dir, f"confusion_{agg}.png"),
            f"{title} {part} scans ({scored['n_scans']}), verdict by {agg}".strip(),
        )
    return summary


def report_summary(metrics_file: str, level: str = "mode", label: str = "fibrosis") -> str:
    """Print (and return) one line of a written report: the paper's four scores of ``label`` at ``level``."""
    if not os.path.isfile(metrics_file):
        line = f"no evaluation report at {metrics_file}"
        logger.warning(line)
        return line
    with open(metrics_file) as f:
        s = json.load(f)
    m = s["metrics"][level][label]
    text = " ".join(
        f"{k}={m[k]:.3f}"
        for k in ("precision", "recall", "f1", "specificity", "auroc", "balanced_accuracy")
        if not math.isnan(m[k])
    )
    line = f"{s['part']} ({s['n_scans']} scans, {s['n_slices']} slices, verdict by {level}): {label} {text}"
    logger.info(line)
    print(line, flush=True)
    return line


class QAReport:
    """Gather a QA evaluator's slice predictions and write the evaluation report when its epoch completes.

    Attach to a ``SupervisedEvaluator`` whose batches carry ``volume``, ``slice`` and ``target`` (see
    :class:`bundle.data.QASlices`). At the end of the epoch :func:`write_report` runs; its scalar scores are added
    to ``engine.state.metrics`` as ``<part>_<level>_<label>_<metric>`` (list this handler before the MLflow handler
    so they are logged). With ``network`` given, the pooled encoder features of each slice (a hook on
    ``encoder.avgpool``) are saved to ``embeddings.npz`` and projected to ``embeddings_<method>.png``.

    Args:
        output_dir: folder of the report.
        scan_names: a name per volume index (``QASlices.scan_names()``).
        part: the split part evaluated (the metric-name prefix).
        threshold: probability threshold.
        network: the QA network (for the embeddings), or None.
        projection: ``"tsne"``, ``"umap"`` (where installed) or ``"none"``.
        seed: random state of the projection.
        title: title of the pictures (e.g. the strategy).
    """

    def __init__(
        self,
        output_dir: str,
        scan_names: Sequence[str],
        part: str = "test",
        threshold: float = 0.5,
        network: torch.nn.Module | None = None,
        projection: str = "tsne",
        seed: int = 0,
        title: str = "",
    ) -> None:
        if projection not in ("tsne", "umap", "none"):
            raise ValueError(f"projection must be 'tsne', 'umap' or 'none', got {projection!r}")
        self.output_dir, self.scan_names, self.part = output_dir, list(scan_names), part
        self.threshold, self.network, self.projection, self.seed, self.title = (
            threshold,
            network,
            projection,
            seed,
            title,
        )
        self.summary: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def _hook(self, module, inputs, output) -> None:
        self._emb.append(torch.flatten(output, 1).detach().float().cpu().numpy())

    def reset(self, engine: Engine) -> None:
        self._vol, self._sl, self._prob, self._tgt, self._emb = [], [], [], [], []
        self._handle = (
            self.network.encoder.avgpool.register_forward_hook(self._hook) if self.network is not None else None
        )

    def collect(self, engine: Engine) -> None:
        prob, target = qa_outputs(engine.state.output)
        batch = engine.state.batch
        get = (lambda k: [b[k] for b in batch]) if isinstance(batch, list) else (lambda k: batch[k])  # noqa: E731
        self._vol.append(np.asarray(get("volume"), dtype=int).reshape(-1))
        self._sl.append(np.asarray(get("slice"), dtype=int).reshape(-1))
        self._prob.append(prob.cpu().numpy())
        self._tgt.append(target.cpu().numpy())

    def complete(self, engine: Engine) -> None:
        if self._handle is not None:
            self._handle.remove()
        if not self._vol:
            logger.warning("QAReport: no slices were evaluated")
            return
        vol, sl = np.concatenate(self._vol), np.concatenate(self._sl)
        prob, tgt = np.concatenate(self._prob), np.concatenate(self._tgt)
        self.summary = write_report(
            self.output_dir, vol, sl, prob, tgt, self.scan_names, self.threshold, self.part, self.title
        )
        engine.state.metrics.update(flatten_metrics(self.summary["metrics"], self.part))
        if self._emb and sum(map(len, self._emb)) == len(vol):
            emb = np.concatenate(self._emb)
            np.savez_compressed(
                os.path.join(self.output_dir, "embeddings.npz"),
                embeddings=emb.astype(np.float32),
                volume=vol,
                slice=sl,
                target=tgt.astype(np.int8),
            )
            if self.projection != "none" and len(emb) >= 3:
                from bundle.evaluation.plots import plot_embeddings, project_embeddings

                pts, used = project_embeddings(emb, self.projection, self.seed)
                np.save(os.path.join(self.output_dir, f"embeddings_{used}.npy"), pts.astype(np.float32))
                panel = (f"{self.title} ({self.part})".strip(), pts, tgt[:, SCORE_KEYS.index("fibrosis")])
                name = {"tsne": "t-SNE", "umap": "UMAP"}[used]
                plot_embeddings([panel], os.path.join(self.output_dir, "embeddings.png"), name)
