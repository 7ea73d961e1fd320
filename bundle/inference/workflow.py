"""The two-stage assessment as a MONAI evaluator: a dataset of volumes that never raises, and the iteration step.

``SupervisedEvaluator(..., iteration_update=TwoStageStep(...))`` runs, per volume: stage 1 (the evaluator's
``network`` through its ``inferer``, a :class:`~bundle.inference.stage1.ResizedSliceInferer`), LA-slice selection at
``la_threshold``, stage 2 (:class:`~bundle.inference.stage2.QAStage`) on the selected slices; its output ``pred`` is
the detector's logit map in the input's grid, which the evaluator's ``postprocessing`` turns into the LA mask and the
:class:`~bundle.inference.report.ReportWriter` handler writes with the per-scan result.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine

from monai.data import Dataset, MetaTensor, list_data_collate
from monai.engines.utils import IterationEvents

from bundle.inference.report import ScanResult
from bundle.inference.stage1 import ResizedSliceInferer
from bundle.inference.stage2 import QA_OUTPUTS, QAStage
from bundle.io.dicom import MIN_SLICES, DicomVolumeError, NotAVolume
from bundle.transforms.slicing import ExtractSlices, resolve_slice_axis

__all__ = ["TwoStageStep", "VolumeDataset", "describe_error", "volume_problem"]

logger = logging.getLogger(__name__)


def describe_error(e: BaseException, where: str = "") -> str:
    """One line for an exception: its root cause (MONAI wraps transform errors), starting with ``where``."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = lines[0] if lines else type(e).__name__
    if not isinstance(e, (DicomVolumeError, NotAVolume)):  # the bundle's own errors read as sentences already
        text = f"{type(e).__name__}: {text}"
    return text if not where or text.startswith(where) else f"{where}: {text}"


class VolumeDataset(Dataset):
    """A MONAI ``Dataset`` of volumes that reports a volume it cannot read instead of raising.

    Each item gets ``error`` ("" when read) and ``status`` (``skipped`` when the input is not a volume, ``error``
    when it cannot be read); a failed item's ``image`` is an empty tensor.
    """

    def _transform(self, index: int):
        data = self.data[index]
        try:
            out = super()._transform(index)
        except Exception as e:  # readers raise many types; the report gets one line naming the input
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            out = {k: v for k, v in data.items() if k != "image"}
            out.update(image=MetaTensor(torch.zeros((1, 0, 0, 0))), error=describe_error(e, str(data.get("input", ""))),
                       status="skipped" if isinstance(root, NotAVolume) else "error")  # fmt: skip
            return out
        out.setdefault("error", "")
        out.setdefault("status", "")
        return out


def volume_problem(volume: torch.Tensor, min_slices: int = MIN_SLICES, slice_axis: int | None = None) -> str | None:
    """Why a loaded channel-first image is not a volume to assess (None when it is one)."""
    if volume.ndim != 4:
        return f"a {volume.ndim - 1}D image, not a 3D volume"
    if volume.shape[0] != 1:
        return f"{volume.shape[0]} channels or time points, not a single 3D volume"
    spatial = tuple(int(s) for s in volume.shape[1:])
    if sum(s > 1 for s in spatial) < 3:
        return f"a 2D image (shape {spatial}), not a volume"
    axis = resolve_slice_axis(volume, slice_axis)
    if spatial[axis] < min_slices:
        return f"only {spatial[axis]} slices along the slice axis; a volume needs at least {min_slices}"
    return None


class TwoStageStep:
    """The evaluator's iteration: both stages on one volume, its result and its LA logit map.

    Args:
        qa_stage: stage 2; None runs LA detection only (results get status ``ok`` without QA probabilities).
        la_threshold: ``t``: a slice holds the LA when any pixel's sigmoid output is at or above it.
        min_slices: fewest slices a volume needs.
        montage_no_la: slices shown on the page of a scan without LA (those with the highest LA probability).
    """

    def __init__(
        self, qa_stage: QAStage | None = None, la_threshold: float = 0.5, min_slices: int = MIN_SLICES,
        montage_no_la: int = 4,
    ) -> None:  # fmt: skip
        if not 0 < float(la_threshold) < 1:
            raise ValueError(f"la_threshold must be in (0, 1), got {la_threshold}")
        self.qa_stage = qa_stage
        self.la_threshold = float(la_threshold)
        self.min_slices = int(min_slices)
        self.montage_no_la = int(montage_no_la)

    def __call__(self, engine: Engine, batchdata: dict) -> dict:
        if not hasattr(engine.inferer, "predict_slices"):  # a configuration error, not a data error: stop
            raise TypeError(f"the evaluator's inferer must be a bundle.inference.ResizedSliceInferer, got "
                            f"{type(engine.inferer).__name__}")  # fmt: skip
        if len(batchdata["name"]) != 1:
            n = len(batchdata["name"])
            raise ValueError(f"the inference dataloader's batch_size must be 1 (volumes differ in shape), got {n}")
        get = lambda k: batchdata[k][0] if k in batchdata else ""  # noqa: E731
        result = ScanResult(input=get("input"), series_uid=get("series_uid"), name=get("name"))
        if get("series_description"):
            result.detail["series_description"] = get("series_description")
        image = batchdata["image"]
        pred = None
        if get("error"):
            result.status, result.message = get("status") or "error", get("error")
        else:
            try:
                pred = self.assess(engine, image[0], result)
            except Exception as e:  # an unexpected failure on one scan must not stop the others
                logger.exception(f"{result.input}: assessment failed")
                result.status, result.message = "error", describe_error(e, result.input)
        if pred is None:
            pred = MetaTensor(torch.zeros((1, 0, 0, 0)))
        # the result rides on the engine state: MONAI decollates the output dict, which holds tensors only
        engine.state.scan_results = [result]
        engine.state.output = {"image": image, "pred": list_data_collate([pred])}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def assess(self, engine: Engine, volume: torch.Tensor, result: ScanResult) -> MetaTensor | None:
        """Both stages on one channel-first volume with the evaluator's network and inferer (:meth:`assess_volume`)."""
        with engine.mode(engine.network):
            return self.assess_volume(volume.to(engine.state.device), engine.network, engine.inferer, result)

    def assess_volume(
        self, volume: torch.Tensor, network: torch.nn.Module, inferer: ResizedSliceInferer, result: ScanResult
    ) -> MetaTensor | None:
        """Both stages on one channel-first volume; fills ``result``; returns the LA logits in the volume's grid.

        Args:
            volume: ``(1, X, Y, Z)``, preprocessed, on the detector's device.
            network: the LA detector, in eval mode.
            inferer: stage 1's slicing and restacking.
            result: the scan's row, filled here (status, counts, probabilities, per-slice detail, pictures).

        Returns:
            the detector's logits ``(1, X, Y, Z)`` with the volume's metadata; None when it is not a volume to assess.
        """
        problem = volume_problem(volume, self.min_slices, getattr(inferer, "slice_axis", None))
        if problem:
            result.status, result.message = "skipped", f"{result.input}: {problem}"
            return None
        s1 = inferer.predict_slices(volume, network)
        logits = inferer.to_volume(s1.logits, volume, s1.axis)
        probs = torch.sigmoid(s1.logits.float())
        la_prob = probs.flatten(1).amax(1).cpu().numpy()
        selected = np.flatnonzero(la_prob >= self.la_threshold)
        result.n_slices, result.n_la_slices = len(la_prob), len(selected)
        t = self.la_threshold
        result.detail["slice_axis"] = s1.axis
        result.detail["slices"] = [{"index": i, "la_prob": float(p), "selected": bool(p >= t)}
                                   for i, p in enumerate(la_prob)]  # fmt: skip
        show = selected if len(selected) else np.sort(np.argsort(-la_prob, kind="stable")[: self.montage_no_la])
        result.visuals = {"images": s1.slices[show, 0].float().cpu().numpy().astype(np.float16),
                          "masks": (probs[show, 0] >= t).cpu().numpy(), "indices": [int(i) for i in show]}  # fmt: skip
        if not len(selected):
            top = int(np.argmax(la_prob))
            result.status, result.refer = "no_left_atrium", 1
            result.message = (f"no slice with LA probability >= {self.la_threshold} (highest {la_prob[top]:.3f}, "
                              f"slice {top})")  # fmt: skip
        elif self.qa_stage is None:
            result.status, result.message = "ok", "stage 2 (QA) not run: LA detection only"
        else:
            slices = s1.slices
            if self.qa_stage.spatial_size and tuple(slices.shape[2:]) != self.qa_stage.spatial_size:
                # the QA network's own input size: cut again from the volume, as its training slices were
                slices = ExtractSlices(spatial_size=self.qa_stage.spatial_size)(volume, slice_axis=s1.axis)
            self._stage2(slices[torch.as_tensor(selected)], selected, result)
        return logits if isinstance(logits, MetaTensor) else MetaTensor(logits, meta=volume.meta)

    def _stage2(self, slices: torch.Tensor, selected: np.ndarray, result: ScanResult) -> None:
        qa = self.qa_stage.assess(slices)
        v = qa.verdict
        result.visuals["tta_probs"] = qa.probs  # (T, S, 4): lets a caller re-derive the verdict at other settings
        for k, p in zip(QA_OUTPUTS, v["p"]):
            setattr(result, f"p_{k}", float(p))
        result.diagnostic, result.uncertainty = int(v["diagnostic"]), float(v["uncertainty"])
        result.refer = int(v["refer"])
        result.status, result.message = "ok", "; ".join(v["refer_reasons"])
        for j, i in enumerate(selected):
            s = result.detail["slices"][int(i)]
            s.update({f"p_{k}": float(v["slice_p"][j, n]) for n, k in enumerate(QA_OUTPUTS)})
            s.update(fibrosis_spread=float(v["slice_spread"][j]), vote=int(v["slice_votes"][j]))
        votes = int(v["slice_votes"].sum())
        result.detail.update(
            verdict={"diagnostic_mode": v["diagnostic"], "diagnostic_mean": v["diagnostic_mean"],
                     "tta_p": v["tta_p"], "tta_verdicts": v["tta_verdicts"], "refer_reasons": v["refer_reasons"]},
            slice_votes=[votes, len(selected) - votes],
            cam_slices=[int(selected[i]) for i in qa.cam_slices],
        )
        if qa.cams is not None:
            cams, size = torch.as_tensor(qa.cams[:, None]), result.visuals["images"].shape[1:]
            if tuple(cams.shape[2:]) != tuple(size):  # QA and detector slice sizes differ: maps onto the pictures
                cams = torch.nn.functional.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
            result.visuals["cams"] = cams[:, 0].numpy().astype(np.float16)
