"""The two-stage assessment as a MONAI evaluator: a dataset of volumes that never raises, and the iteration step.

``SupervisedEvaluator(..., iteration_update=TwoStageStep(...))`` runs, per volume: stage 1 (the evaluator's
``network`` through its ``inferer``, a :class:`~bundle.inference.stage1.ResizedSliceInferer`), LA-slice selection at
``la_threshold``, stage 2 (:class:`~bundle.inference.stage2.QAStage`) on the selected slices; its output ``pred`` is
the LA decision in the input's grid as saturated int8 logits (+/-20: the mask already thresholded and filtered, a
quarter of a float logit map's memory), which the evaluator's ``postprocessing`` turns back into exactly that LA mask
and the :class:`~bundle.inference.report.ReportWriter` handler writes with the per-scan result.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine
from monai.data import Dataset, MetaTensor, list_data_collate
from monai.engines.utils import IterationEvents

from bundle.data.datalist import SCORE_KEYS
from bundle.errors import one_line
from bundle.inference.report import ScanResult, Visuals
from bundle.inference.stage1 import ResizedSliceInferer
from bundle.inference.stage2 import QAStage
from bundle.io.dicom import MIN_SLICES, NotAVolume, VolumeError
from bundle.transforms.region import region_to_slice
from bundle.transforms.selection import LABounds, implausible_la, la_mask, la_slices, voxel_volume_mm3
from bundle.transforms.slicing import ExtractSlices, in_plane_spacing, resolve_slice_axis, slice_spacing

__all__ = ["TwoStageStep", "VolumeDataset", "decision_logits", "describe_error", "detect_la_volume", "volume_problem"]

logger = logging.getLogger(__name__)


def describe_error(e: BaseException, where: str = "") -> str:
    """One line for an exception: its root cause (MONAI wraps transform errors), starting with ``where``."""
    own = (VolumeError, NotAVolume)  # the bundle's own errors name the file and read as sentences already
    while e.__cause__ is not None and not isinstance(e, own):
        e = e.__cause__
    if isinstance(e, own):
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        text = lines[0] if lines else type(e).__name__
    else:
        text = one_line(e)
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
            out.update(
                image=MetaTensor(torch.zeros((1, 0, 0, 0))),
                error=describe_error(e, str(data.get("input", ""))),
                status="skipped" if isinstance(root, NotAVolume) else "error",
            )
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


def detect_la_volume(
    logits: torch.Tensor,
    volume: torch.Tensor,
    axis: int,
    la_threshold: float = 0.5,
    keep_largest: bool = True,
    min_la_area_mm2: float = 0.0,
    bounds: LABounds | None = None,
) -> dict:
    """Stage 1's decisions on one volume from the detector's logits in its grid: mask, LA slices, plausibility.

    Args:
        logits: ``(1, X, Y, Z)`` in the volume's grid.
        volume: the channel-first volume (its affine gives pixel area, slice distance and voxel volume).
        axis: the spatial slice axis.
        la_threshold, keep_largest: :func:`~bundle.transforms.selection.la_mask`.
        min_la_area_mm2: :func:`~bundle.transforms.selection.la_slices`.
        bounds: :func:`~bundle.transforms.selection.implausible_la` (None: defaults).

    Returns:
        ``{"mask", "la_prob" (per-slice highest probability), "areas" (mm^2), "selected", "la_volume_ml",
        "la_extent_mm", "la_kept", "reasons"}``.
    """
    mask, kept = la_mask(logits, la_threshold, keep_largest)
    sp = in_plane_spacing(volume, axis)
    areas, selected = la_slices(mask, axis, sp[0] * sp[1], min_la_area_mm2)
    plain = logits.as_tensor() if isinstance(logits, MetaTensor) else logits
    # per-slice highest probability = sigmoid of the per-slice highest logit (no probability volume in memory)
    other = tuple(d for d in range(3) if d != axis)
    la_prob = torch.sigmoid(plain[0].amax(dim=other).float()).cpu().numpy()
    volume_ml = float(mask.sum()) * voxel_volume_mm3(volume) / 1000.0
    extent = float(selected[-1] - selected[0] + 1) * slice_spacing(volume, axis) if len(selected) else 0.0
    reasons = implausible_la(volume_ml, extent, kept, bounds) if len(selected) else []
    return {
        "mask": mask,
        "la_prob": la_prob,
        "areas": areas,
        "selected": selected,
        "la_volume_ml": volume_ml,
        "la_extent_mm": extent,
        "la_kept": kept,
        "reasons": reasons,
    }


def decision_logits(mask: torch.Tensor) -> torch.Tensor:
    """A decided LA mask as int8 logits, +20 inside and -20 outside: any threshold in (2e-9, 1 - 2e-9) and the
    largest-component filter give back exactly ``mask`` (:func:`~bundle.transforms.selection.la_mask`)."""
    out = mask.to(torch.int8) * 40 - 20
    return out if isinstance(out, MetaTensor) or not isinstance(mask, MetaTensor) else MetaTensor(out, meta=mask.meta)


class TwoStageStep:
    """The evaluator's iteration: both stages on one volume, its result and its LA logit map.

    The LA mask is the detector's probability map in the volume's grid at or above ``la_threshold``, its largest 3D
    connected component with ``keep_largest`` (:func:`~bundle.transforms.selection.la_mask`); the LA slices are those
    whose mask covers at least ``min_la_area_mm2`` (:func:`~bundle.transforms.selection.la_slices`; 0: any pixel, the
    paper's rule). An LA outside ``la_bounds`` gets status ``implausible_la`` and ``refer`` = 1 with the reason; its
    QA verdict is computed but marked unreliable.

    Args:
        qa_stage: stage 2; None runs LA detection only (results get status ``ok`` without QA probabilities).
        la_threshold: ``t``: a voxel is LA when its sigmoid output is at or above it.
        min_slices: fewest slices a volume needs.
        montage_no_la: slices shown on the page of a scan without LA (those with the highest LA probability).
        min_la_area_mm2: smallest LA area (mm^2) that makes a slice an LA slice.
        keep_largest: keep only the largest connected component of the LA mask.
        la_bounds: plausible LA volume, extent and connectedness (:class:`~bundle.transforms.selection.LABounds`
            arguments); None: its defaults.
    """

    def __init__(
        self,
        qa_stage: QAStage | None = None,
        la_threshold: float = 0.5,
        min_slices: int = MIN_SLICES,
        montage_no_la: int = 4,
        min_la_area_mm2: float = 0.0,
        keep_largest: bool = True,
        la_bounds: dict | None = None,
    ) -> None:
        if not 0 < float(la_threshold) < 1:
            raise ValueError(f"la_threshold must be in (0, 1), got {la_threshold}")
        if float(min_la_area_mm2) < 0:
            raise ValueError(f"min_la_area_mm2 must be >= 0, got {min_la_area_mm2}")
        self.qa_stage = qa_stage
        self.la_threshold = float(la_threshold)
        self.min_slices = int(min_slices)
        self.montage_no_la = int(montage_no_la)
        self.min_la_area_mm2 = float(min_la_area_mm2)
        self.keep_largest = bool(keep_largest)
        self.la_bounds = LABounds(**(la_bounds or {}))

    def __call__(self, engine: Engine, batchdata: dict) -> dict:
        if not hasattr(engine.inferer, "predict_slices"):  # a configuration error, not a data error: stop
            raise TypeError(
                f"the evaluator's inferer must be a bundle.inference.ResizedSliceInferer, got "
                f"{type(engine.inferer).__name__}"
            )
        if len(batchdata["name"]) != 1:
            n = len(batchdata["name"])
            raise ValueError(f"the inference dataloader's batch_size must be 1 (volumes differ in shape), got {n}")
        get = lambda k: batchdata[k][0] if k in batchdata else ""  # noqa: E731
        result = ScanResult(input=get("input"), series_uid=get("series_uid"), name=get("name"))
        if get("series_description"):
            result.detail.source["series_description"] = get("series_description")
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
        dropped = getattr(image[0], "meta", {}).get("dropped_files") if not get("error") else None
        if dropped:  # files of a DICOM series left out at its ends (unreadable): the rest was assessed
            dropped = dropped[0] if isinstance(dropped, (list, tuple)) else dropped
            result.message = "; ".join(m for m in (result.message, f"left out unreadable file(s): {dropped}") if m)
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
        """Both stages on one channel-first volume; fills ``result``; returns the LA decision in the volume's grid.

        Args:
            volume: ``(1, X, Y, Z)``, preprocessed, on the detector's device.
            network: the LA detector, in eval mode.
            inferer: stage 1's slicing and restacking.
            result: the scan's row, filled here (status, counts, probabilities, per-slice detail, pictures).

        Returns:
            the LA mask as saturated logits ``(1, X, Y, Z)`` (:func:`decision_logits`) with the volume's metadata;
            None when it is not a volume to assess.
        """
        problem = volume_problem(volume, self.min_slices, getattr(inferer, "slice_axis", None))
        if problem:
            result.status, result.message = "skipped", f"{result.input}: {problem}"
            return None
        s1 = inferer.predict_slices(volume, network)
        logits = inferer.to_volume(s1.logits, volume, s1.axis)
        # the network-resolution outputs are not needed any more (nor its slices, for an LA-region QA network)
        keep_slices = self.qa_stage is not None and self.qa_stage.region is None
        s1 = s1._replace(logits=None, slices=s1.slices if keep_slices else None)
        logits = logits if isinstance(logits, MetaTensor) else MetaTensor(logits, meta=volume.meta)
        la = detect_la_volume(
            logits, volume, s1.axis, self.la_threshold, self.keep_largest, self.min_la_area_mm2, self.la_bounds
        )
        logits = decision_logits(la["mask"])  # the float logit map is freed here
        la_prob, selected, t = la["la_prob"], la["selected"], self.la_threshold
        result.n_slices, result.n_la_slices = len(la_prob), len(selected)
        result.detail.slice_axis = s1.axis
        result.detail.la_volume_ml, result.detail.la_extent_mm = la["la_volume_ml"], la["la_extent_mm"]
        result.detail.la_kept = la["la_kept"]
        chosen = set(selected.tolist())
        result.detail.slices = [
            {"index": i, "la_prob": float(p), "la_area_mm2": float(a), "selected": i in chosen}
            for i, (p, a) in enumerate(zip(la_prob, la["areas"]))
        ]
        show = selected if len(selected) else np.sort(np.argsort(-la_prob, kind="stable")[: self.montage_no_la])
        # the pictures show the scan's own slices with the mask as written (both in the volume's grid)
        plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
        images = plain.movedim(1 + s1.axis, 0)[torch.as_tensor(show, dtype=torch.long), 0]
        masks = torch.as_tensor(la["mask"]).movedim(1 + s1.axis, 0)[torch.as_tensor(show, dtype=torch.long), 0]
        result.visuals = Visuals(
            images=images.float().cpu().numpy().astype(np.float16),
            masks=masks.cpu().numpy() > 0,
            indices=[int(i) for i in show],
        )
        if not len(selected):
            top = int(np.argmax(la_prob))
            result.status, result.refer = "no_left_atrium", 1
            result.message = (
                f"no slice with an LA of at least {self.min_la_area_mm2:g} mm2 at probability >= {t} "
                f"(highest probability {la_prob[top]:.3f}, slice {top})"
            )
            return logits
        if self.qa_stage is None:
            result.status, result.message = "ok", "stage 2 (QA) not run: LA detection only"
        else:
            if self.qa_stage.region is not None:  # the LA region around the detected LA, as the network was trained
                qa_input = self.qa_stage.cut(volume, la["mask"], s1.axis, selected)
            else:
                slices = s1.slices
                if getattr(inferer, "resized_to", None) != self.qa_stage.spatial_size:
                    # the QA network's own input size: cut again from the volume, as its training slices were
                    slices = ExtractSlices(spatial_size=self.qa_stage.spatial_size)(volume, slice_axis=s1.axis)
                qa_input = slices[torch.as_tensor(selected)]
            self._stage2(qa_input, selected, result)
            if self.qa_stage.region is not None and result.visuals.cams is not None:  # window maps onto the slices
                r = self.qa_stage.region
                result.visuals.cams = region_to_slice(
                    result.visuals.cams.astype(np.float32),
                    la["mask"].cpu(),
                    s1.axis,
                    images.shape[1:],
                    in_plane_spacing(volume, s1.axis),
                    r["pixel_mm"],
                    r["size"],
                ).astype(np.float16)
        if la["reasons"]:
            result.status, result.refer = "implausible_la", 1
            result.detail.qa_reliable = False
            note = "; QA verdict unreliable" if self.qa_stage is not None else ""
            result.message = "implausible LA: " + "; ".join(la["reasons"]) + note
        return logits

    def _stage2(self, slices: torch.Tensor, selected: np.ndarray, result: ScanResult) -> None:
        qa = self.qa_stage.assess(slices)
        v = qa.verdict
        result.visuals.tta_probs = qa.probs
        for k, p in zip(SCORE_KEYS, v["p"]):
            setattr(result, f"p_{k}", float(p))
        result.diagnostic, result.uncertainty = int(v["diagnostic"]), float(v["uncertainty"])
        result.refer = int(v["refer"])
        result.status, result.message = "ok", "; ".join(v["refer_reasons"])
        for j, i in enumerate(selected):
            s = result.detail.slices[int(i)]
            s.update({f"p_{k}": float(v["slice_p"][j, n]) for n, k in enumerate(SCORE_KEYS)})
            s.update(fibrosis_spread=float(v["slice_spread"][j]), vote=int(v["slice_votes"][j]))
        votes = int(v["slice_votes"].sum())
        result.detail.verdict = {
            "rule": v["rule"],
            "diagnostic_mode": v["diagnostic"],
            "diagnostic_mean": v["diagnostic_mean"],
            "tta_p": v["tta_p"],
            "tta_verdicts": v["tta_verdicts"],
            "refer_reasons": v["refer_reasons"],
        }
        result.detail.slice_votes = [votes, len(selected) - votes]
        result.detail.cam_slices = [int(selected[i]) for i in qa.cam_slices]
        if qa.cams is not None:
            cams, size = torch.as_tensor(qa.cams[:, None]), result.visuals.images.shape[1:]
            if tuple(cams.shape[2:]) != tuple(size) and self.qa_stage.region is None:  # other slice sizes: resize
                cams = torch.nn.functional.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
            result.visuals.cams = cams[:, 0].numpy().astype(np.float16)
