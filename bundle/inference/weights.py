"""Load trained weights into a network, with one clear line when they are missing or do not fit."""

from __future__ import annotations

import logging
import os

import torch

from bundle.errors import WeightsError
from bundle.networks.loading import fit_state_dict, read_state_dict

__all__ = ["WEIGHT_HINTS", "check_qa_input", "detector_plan", "load_weights", "qa_network", "qa_plan"]

logger = logging.getLogger(__name__)

# what to do when a checkpoint is missing, per kind of network
WEIGHT_HINTS = {
    "detector": "the bundle ships models/detector.pt (with models/detector.json); or train the LA detector with "
    "`python -m monai.bundle run training --config_file \"['configs/common.yaml','configs/train.yaml']\"` "
    "(writes models/model.pt and its plan models/model.json) and pass --ckpt_path models/model.pt",
    "qa": "the bundle ships models/qa.pt (with models/qa.json; docs/model_card.md); or train the QA network with "
    "`python -m monai.bundle run training --config_file "
    "\"['configs/common.yaml','configs/qa_baseline.yaml']\"` (writes models/qa_baseline.pt), or put a trained state "
    "dict there or pass --qa_ckpt <file>; --run_qa false runs LA detection only",
}
NAMES = {"detector": "LA detector", "qa": "QA network"}


def load_weights(network: torch.nn.Module, path: str, kind: str = "detector") -> torch.nn.Module:
    """Load a state dict (as the bundle's ``CheckpointSaver`` writes it) into ``network``.

    Accepts a plain state dict, a dict holding it under ``model`` or ``state_dict``, and DDP ``module.`` prefixes.

    Args:
        network: the network to fill.
        path: the checkpoint file.
        kind: ``detector`` or ``qa``: names the network and the remedy in error messages.

    Returns:
        ``network``, in eval mode.

    Raises:
        WeightsError: one line, one line saying what is missing or wrong and what to do.
    """
    name = NAMES.get(kind, kind)
    hint = WEIGHT_HINTS.get(kind, "pass the right checkpoint")
    if not path or not os.path.isfile(path):
        raise WeightsError(f"{name} checkpoint {path} not found: {hint}")
    state = read_state_dict(path, f"{name} checkpoint", map_location=next(network.parameters()).device)
    fit_state_dict(
        network,
        state,
        f"{name} checkpoint {path} does not fit the configured network",
        "was it trained with other network settings?",
    )
    logger.info(f"{name}: weights from {path}")
    return network.eval()


def check_qa_input(plan: dict, spatial_size: int) -> None:
    """Refuse a QA input size other than the one its plan was trained at (a verdict at another size is not its own).

    Args:
        plan: :func:`qa_plan` of the checkpoint.
        spatial_size: the size the run would give the network (``qa_spatial_size``).

    Raises:
        WeightsError: one line when the checkpoint has a plan and ``spatial_size`` differs from it.
    """
    if plan.get("plan_file") and int(spatial_size) != int(plan["spatial_size"]):
        raise WeightsError(
            f"qa_spatial_size {spatial_size} differs from the {plan['spatial_size']} that "
            f"{plan['plan_file']} was trained at; leave qa_spatial_size unset to use the plan's"
        )


def detector_plan(ckpt_path: str) -> dict:
    """The plan of a detector checkpoint (:func:`bundle.networks.load_plan`), with one clear line when it is missing.

    Raises:
        WeightsError: one line when the checkpoint or its plan is missing or unreadable.
    """
    from bundle.networks.plan import load_plan

    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise WeightsError(f"LA detector checkpoint {ckpt_path} not found: {WEIGHT_HINTS['detector']}")
    return load_plan(ckpt_path, "detector")  # a PlanError is a WeightsError


def qa_plan(ckpt_path: str) -> dict:
    """The QA checkpoint's settings (:func:`bundle.networks.load_qa_plan`), with one clear line for a bad plan.

    Raises:
        WeightsError: one line when the plan beside the checkpoint is unreadable or of another kind.
    """
    from bundle.networks.plan import load_qa_plan

    return load_qa_plan(ckpt_path)  # a PlanError is a WeightsError


def qa_network(plan: dict, qa_config, bundle_root: str | None = None) -> torch.nn.Module:
    """The QA network without weights: the plan's ``network_def`` when it has one, else ``qa_config``'s
    ``network_def`` (a QA training workflow's files, relative to ``bundle_root``)."""
    from bundle.networks import build_from_plan, build_network

    if plan.get("network_def"):
        return build_from_plan(plan)
    return build_network(qa_config, "network_def", root=bundle_root)
