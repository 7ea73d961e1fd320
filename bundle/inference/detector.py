"""The LA detector as one object to call: a checkpoint and its plan in, the LA of a volume out.

Inference builds the same pieces from ``configs/inference.yaml``; the cross-validation, QA slice selection and the
tests call :func:`load_detector` and :func:`segment_la`, which use the same plan, inferer and decisions
(:func:`~bundle.inference.workflow.detect_la_volume`).
"""

from __future__ import annotations

import torch

from bundle.inference.stage1 import ResizedSliceInferer, detector_inferer
from bundle.inference.weights import load_weights
from bundle.inference.workflow import detect_la_volume
from bundle.networks.plan import build_from_plan, load_plan
from bundle.transforms.intensity import ScaleForegroundPercentiles
from bundle.transforms.selection import LABounds

__all__ = ["load_detector", "load_volume", "plan_inferer", "segment_la"]


def load_detector(ckpt_path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The detector network of ``ckpt_path`` with its weights, in eval mode, and its plan (:func:`load_plan`)."""
    plan = load_plan(ckpt_path)
    network = build_from_plan(plan).to(device)
    load_weights(network, ckpt_path, "detector")
    return network.eval(), plan


def plan_inferer(plan: dict, batch_size: int = 32) -> ResizedSliceInferer:
    """Stage 1's inferer for a plan's preprocessing."""
    return detector_inferer(
        spatial_size=plan["spatial_size"],
        pixel_mm=plan["pixel_mm"],
        context=plan["context_slices"],
        context_mm=plan["context_mm"],
        slice_axis=plan["slice_axis"],
        batch_size=batch_size,
    )


def load_volume(path: str) -> torch.Tensor:
    """A NIfTI/NRRD/DICOM volume as inference reads it: channel first, intensities normalised (a MetaTensor)."""
    from bundle.io.loader import LoadVolume

    return ScaleForegroundPercentiles()(LoadVolume(ensure_channel_first=True, image_only=True)(path))


@torch.no_grad()
def segment_la(
    network: torch.nn.Module,
    plan: dict,
    volume: torch.Tensor,
    inferer: ResizedSliceInferer | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Stage 1 on one normalised channel-first volume: :func:`detect_la_volume`'s dict plus ``axis`` and ``logits``.

    Args:
        network: the detector (eval mode).
        plan: its plan (settings: threshold, largest component, minimum area, bounds, preprocessing).
        volume: ``(1, X, Y, Z)`` from :func:`load_volume`.
        inferer: stage 1's inferer (None: from the plan).
        device: where the network runs (None: its parameters' device).
    """
    inferer = inferer or plan_inferer(plan)
    device = device or next(network.parameters()).device
    s1 = inferer.predict_slices(volume.to(device), network)
    logits = inferer.to_volume(s1.logits.cpu(), volume, s1.axis)
    out = detect_la_volume(
        logits,
        volume,
        s1.axis,
        plan["la_threshold"],
        plan["keep_largest"],
        plan["min_la_area_mm2"],
        LABounds(**(plan.get("la_bounds") or {})),
    )
    out.update(axis=s1.axis, logits=logits)
    return out
