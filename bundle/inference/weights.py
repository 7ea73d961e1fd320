"""Load trained weights into a network, with one clear line when they are missing or do not fit."""

from __future__ import annotations

import logging
import os

import torch

from bundle.errors import WeightsError

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
    device = next(network.parameters()).device
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise WeightsError(f"{name} checkpoint {path} is unreadable: {_load_problem(path, e)}") from None
    for key in ("model", "state_dict"):
        wrapped = isinstance(state, dict) and isinstance(state.get(key), dict)
        if wrapped and not any(torch.is_tensor(v) for v in state.values()):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{name} checkpoint {path} holds a {type(state).__name__}, not a state dict")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        expected = network.state_dict().keys()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        detail = str(e).splitlines()[-1].strip()[:120]
        own = network.state_dict()
        shapes = [k for k in expected & state.keys() if tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
        if shapes:
            k = sorted(shapes)[0]
            detail = (
                f"{len(shapes)} tensors of other shapes, e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(own[k].shape)} in the network"
            )
        if missing or unexpected:
            detail = (
                f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:2]})"
            )
        raise WeightsError(
            f"{name} checkpoint {path} does not fit the configured network ({detail}): "
            "was it trained with other network settings?"
        ) from None
    logger.info(f"{name}: weights from {path}")
    return network.eval()


def _load_problem(path: str, e: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in a few words (PyTorch's own message runs to paragraphs)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not magic:
        return "an empty file"
    if magic[:2] not in (b"PK", b"\x80\x02"):  # torch.save writes a zip archive (or, legacy, a protocol-2 pickle)
        return "not a PyTorch checkpoint (neither the zip archive nor the pickle torch.save writes)"
    text = str(e)
    if "Weights only load failed" in text:
        return (
            "it holds Python objects, not only tensors (a whole pickled model?); save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


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
