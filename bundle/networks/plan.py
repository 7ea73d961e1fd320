"""A checkpoint's plan: the JSON beside it that says how to rebuild and use it (as nnU-Net's ``plans.json``).

``models/detector.pt`` has ``models/detector.json``: the network definition with concrete arguments, the
preprocessing (pixel size, canvas, 2.5D context, intensity mapping, slice-axis rule), the decision settings
(threshold, largest component, minimum LA area, plausibility bounds) and where it came from (data, command, commit,
figures). Training writes it beside every checkpoint it saves; inference, QA slice selection and MONAI Label read
it, so no setting has to be passed again at inference.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import torch

from bundle.errors import WeightsError
from bundle.utils import git_commit

__all__ = [
    "QA_DEFAULTS",
    "PlanError",
    "build_from_plan",
    "load_plan",
    "load_qa_plan",
    "plan_path",
    "write_detector_plan",
    "write_plan",
    "write_qa_plan",
]

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
# the detector settings a plan records, with the values that reproduce a checkpoint trained before plans existed
DETECTOR_KEYS = {
    "spatial_size": 128,
    "pixel_mm": None,
    "context_slices": 0,
    "context_mm": None,
    "slice_axis": None,
    "la_threshold": 0.5,
    "min_la_area_mm2": 0.0,
    "keep_largest": True,
}
# the QA settings a plan records, with the values of a checkpoint without a plan (a configs/qa_*.yaml training: whole
# slices resized to spatial_size, the paper's mode verdict, no calibration; its network comes from the QA config)
QA_DEFAULTS = {
    "rule": "mode",
    "threshold": 0.5,
    "temperature": None,
    "region": None,
    "spatial_size": 128,
    "cam_layer": "encoder.layer4",
    "refer_uncertainty": 0.05,
}
INTENSITY = {"rule": "percentiles of the non-zero voxels mapped to 0..1, clipped", "lower": 0.5, "upper": 99.5}


class PlanError(WeightsError):
    """A plan file that is missing, unreadable or incomplete (the message names the file)."""


def plan_path(ckpt_path: str) -> str:
    """The plan beside a checkpoint: ``models/detector.pt`` -> ``models/detector.json``."""
    return os.path.splitext(str(ckpt_path))[0] + ".json"


def write_plan(ckpt_path: str, plan: dict) -> str:
    """Write ``plan`` (plus version and time) beside ``ckpt_path``, atomically; returns the plan's path."""
    path = plan_path(ckpt_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    body = {
        "plan_version": PLAN_VERSION,
        "checkpoint": os.path.basename(ckpt_path),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **plan,
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def _concrete_network_def(parser, network_id: str = "network_def") -> dict:
    """The network definition with every argument resolved to a plain value (no ``@`` or ``$`` left)."""
    raw = parser.get(network_id)
    out = {"_target_": raw["_target_"]}
    for k in raw:
        if k.startswith("_"):
            continue
        sub = parser.get(f"{network_id}#{k}")
        if isinstance(sub, dict) and "_target_" in sub:  # a nested component (an ensemble's member network)
            out[k] = _concrete_network_def(parser, f"{network_id}#{k}")
            continue
        value = parser.get_parsed_content(f"{network_id}#{k}")
        out[k] = value.tolist() if hasattr(value, "tolist") else value
    return out


def _provenance(parser, config_file: str) -> dict:
    """Where a checkpoint came from: its data, the run's resolved config, the command, the commit, torch."""
    return {
        "data": {k: parser.get(k) for k in ("dataset_dir", "datalist", "split_file") if k in parser},
        "config": os.path.abspath(config_file),
        "command": " ".join(sys.argv),
        "git_commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
        "torch": torch.__version__,
    }


def _run_config(ckpt_path: str, config_file: str):
    """The parser of a training run's resolved config, or None (with a warning) when no checkpoint was saved."""
    from monai.bundle import ConfigParser

    if not os.path.isfile(ckpt_path):
        logger.warning(f"{ckpt_path}: no checkpoint, so no plan written")
        return None
    parser = ConfigParser()
    parser.read_config(config_file)
    return parser


def write_detector_plan(ckpt_path: str, config_file: str, extra: dict | None = None) -> str | None:
    """Write the plan of a detector checkpoint from its training run's resolved config (``config.json``).

    Args:
        ckpt_path: the checkpoint (nothing is written when it does not exist: no epoch improved).
        config_file: the run's ``config.json`` (``bundle.utils.save_resolved_config``).
        extra: more entries (e.g. ``{"metrics": ...}``).

    Returns:
        the plan's path, or None when there is no checkpoint.
    """
    parser = _run_config(ckpt_path, config_file)
    if parser is None:
        return None
    settings = {k: parser.get_parsed_content(k) if k in parser else v for k, v in DETECTOR_KEYS.items()}
    plan = {
        "kind": "detector",
        "network_def": _concrete_network_def(parser),
        "preprocessing": {
            "intensity": INTENSITY,
            **{k: settings[k] for k in ("spatial_size", "pixel_mm", "context_slices", "context_mm", "slice_axis")},
        },
        "postprocessing": {k: settings[k] for k in ("la_threshold", "keep_largest", "min_la_area_mm2")},
        "provenance": _provenance(parser, config_file),
        **(extra or {}),
    }
    path = write_plan(ckpt_path, plan)
    logger.info(f"plan of {ckpt_path}: {path}")
    return path


def write_qa_plan(ckpt_path: str, config_file: str) -> str | None:
    """Write the plan of a QA checkpoint trained by a ``configs/qa_*.yaml`` workflow, from the run's resolved config.

    With it, inference, evaluation and MONAI Label build the network from the plan's concrete ``network_def``, as
    for the shipped network, instead of parsing the training workflow's files again (``qa_config``). The decision is
    the training workflows' own: whole LA slices resized to ``spatial_size``, the paper's slice vote (``mode``) at
    0.5, no calibration. ``pretrained_path`` is cleared: the checkpoint holds every weight.

    Args:
        ckpt_path: the checkpoint (nothing is written when it does not exist: no epoch improved).
        config_file: the run's ``config.json`` (``bundle.utils.save_resolved_config``).

    Returns:
        the plan's path, or None when there is no checkpoint.
    """
    from bundle.data.datalist import SCORE_KEYS

    parser = _run_config(ckpt_path, config_file)
    if parser is None:
        return None
    network_def = _concrete_network_def(parser)
    if "pretrained_path" in network_def:
        network_def["pretrained_path"] = None
    plan = {
        "kind": "qa",
        "network_def": network_def,
        "labels": list(SCORE_KEYS),
        "strategy": parser.get("strategy"),
        "preprocessing": {
            "intensity": INTENSITY,
            "spatial_size": int(parser.get_parsed_content("spatial_size")),
            "region": None,
            "slices": f"LA slices chosen by qa_slices={parser.get('qa_slices')!r} (bundle.inference.select_qa_slices)",
        },
        "decision": {k: QA_DEFAULTS[k] for k in ("rule", "threshold", "temperature", "refer_uncertainty")},
        "cam_layer": QA_DEFAULTS["cam_layer"],
        "provenance": _provenance(parser, config_file),
    }
    path = write_plan(ckpt_path, plan)
    logger.info(f"plan of {ckpt_path}: {path}")
    return path


def _read_plan(path: str, kind: str) -> dict:
    """The plan JSON at ``path``, checked to be of ``kind`` with a ``network_def``; PlanError (one line) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise PlanError(f"{path}: unreadable plan ({e})") from None
    if not isinstance(plan, dict) or plan.get("kind") != kind or not isinstance(plan.get("network_def"), dict):
        raise PlanError(f"{path}: not a {kind} plan (needs 'kind': '{kind}' and a 'network_def')")
    return plan


def load_plan(ckpt_path: str, kind: str = "detector", required: bool = True) -> dict:
    """Read the plan beside ``ckpt_path`` and flatten its settings for a config: ``{network_def, <setting>: ...}``.

    Args:
        ckpt_path: the checkpoint.
        kind: the plan's expected ``kind``.
        required: raise when there is no plan; False returns the settings of a checkpoint from before plans
            (the paper's resized slices) with ``network_def`` None.

    Raises:
        PlanError: one line naming the file, when it is missing (and ``required``), unreadable or of another kind.
    """
    path = plan_path(ckpt_path)
    if not os.path.isfile(path):
        if required:
            raise PlanError(
                f"{path}: no plan beside the checkpoint {ckpt_path} (training writes it; it records "
                "the network, preprocessing and thresholds the checkpoint needs)"
            )
        return {**DETECTOR_KEYS, "network_def": None, "plan_file": None}
    plan = _read_plan(path, kind)
    flat = {**DETECTOR_KEYS, **plan.get("preprocessing", {}), **plan.get("postprocessing", {})}
    flat.pop("intensity", None)
    return {**flat, "network_def": plan["network_def"], "la_bounds": plan.get("la_bounds"), "plan_file": path}


def build_from_plan(plan: dict) -> torch.nn.Module:
    """Instantiate a plan's ``network_def`` (a MONAI config component with concrete arguments), without weights.

    Raises:
        PlanError: when the plan has no network definition.
    """
    from monai.bundle import ConfigParser

    if not plan.get("network_def"):
        raise PlanError(f"{plan.get('plan_file') or 'plan'}: no network_def to build the network from")
    return ConfigParser({"network_def": plan["network_def"]}).get_parsed_content("network_def")


def load_qa_plan(ckpt_path: str) -> dict:
    """The QA settings of a QA checkpoint, flat: :data:`QA_DEFAULTS`' keys, ``network_def`` and ``plan_file``.

    A checkpoint with a plan beside it (kind ``qa``: the shipped LA-region network) gives its network, input
    (``region``: pixel size, window, normalisation), verdict ``rule``, ``threshold`` and ``temperature``; one without
    a plan (a ``configs/qa_*.yaml`` training run) gets :data:`QA_DEFAULTS` and ``network_def`` None (the inference
    config builds it from the QA config). A missing checkpoint gets the defaults too: loading its weights then
    fails with the one clear line of :func:`bundle.inference.load_weights`.

    Raises:
        PlanError: one line naming the file, for an unreadable plan or one of another kind.
    """
    path = plan_path(ckpt_path)
    if not os.path.isfile(path):
        return {**QA_DEFAULTS, "network_def": None, "plan_file": None}
    plan = _read_plan(path, "qa")
    pre, decision = plan.get("preprocessing", {}), plan.get("decision", {})
    flat = {**QA_DEFAULTS, **{k: v for k, v in decision.items() if k in QA_DEFAULTS}}
    flat["region"] = pre.get("region")
    flat["spatial_size"] = int((pre.get("region") or {}).get("size") or pre.get("spatial_size") or flat["spatial_size"])
    flat["cam_layer"] = plan.get("cam_layer", flat["cam_layer"])
    return {**flat, "network_def": plan["network_def"], "plan_file": path}
