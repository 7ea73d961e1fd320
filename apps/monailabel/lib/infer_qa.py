"""Scan quality for MONAI Label (classification): the bundle's two-stage inference on one study.

Stage 1 (the LA task's detector) picks the LA slices, stage 2 (:class:`bundle.inference.QAStage`, the QA network
under the flips of ``tta_flips``) scores them, and the scan verdict is :func:`bundle.inference.qa_verdict`'s: the
same config (``configs/inference.yaml``), the same code and so the same verdict as ``scripts/assess.py`` and
``python -m monai.bundle run inference``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from bundle.data.datalist import SCORE_KEYS
from bundle.inference import TwoStageStep

from .infer_la import LASegmentation

logger = logging.getLogger(__name__)

__all__ = ["QAClassification"]


class QAClassification(BasicInferTask):
    """Per-attribute and QA probabilities, verdict, uncertainty, referral and the LA slices used, for one 3D study.

    The study goes through the LA task (the inference config's preprocessing and detector); the inference config's
    ``assess_step`` (:class:`bundle.inference.TwoStageStep` with its ``qa_stage``) assesses it. MONAI Label's
    classification writer returns ``prediction`` (one ``{"idx", "label", "score"}`` per output, the score being the
    scan probability: the mean over the LA slices and the flips); the JSON adds ``verdict`` (``diagnostic`` or
    ``non-diagnostic``), ``diagnostic`` (1/0), ``probabilities``, ``uncertainty`` (spread over the flips), ``refer``
    and its ``message``, ``la_slices``, ``slice_axis``, ``la_threshold``, ``qa_threshold`` and
    ``slice_probabilities`` (``(n_la_slices, 4)``).

    Args:
        la_task: the LA segmentation task (stage 1: preprocessing, detector, its config files).
        qa_config: the QA network's config files (its training workflow's, e.g. common.yaml + qa_baseline.yaml
            [+ qa_multitask.yaml] + overlays): the inference config's ``qa_config``.
        ckpt_path: the QA network's weights (a state dict, or one under "model").
    """

    def __init__(self, la_task: LASegmentation, qa_config: Sequence[str], ckpt_path: str) -> None:
        self.valid = False
        missing = [p for p in (*qa_config, ckpt_path) if not os.path.exists(p)]
        if missing or not la_task.is_valid():
            why = f"missing {missing}" if missing else "the LA task is not available (no detector weights)"
            logger.warning(f"QA task not offered: {why}")
            return
        parser = ConfigParser()
        parser.read_config(la_task.config_files)
        parser.update(
            {
                "bundle_root": la_task.bundle_path,
                "ckpt_name": la_task.ckpt_name,
                "qa_config": [os.path.abspath(f) for f in qa_config],
                "qa_ckpt": os.path.abspath(ckpt_path),
                "run_qa": True,
            }
        )
        self.step: TwoStageStep = parser.get_parsed_content("assess_step")  # loads the QA weights, or one-line error
        super().__init__(
            path=ckpt_path,
            network=None,
            type=InferType.CLASSIFICATION,
            labels={k: i for i, k in enumerate(SCORE_KEYS)},
            dimension=3,
            description="Quality of the LGE-MRI study for fibrosis assessment (stage 2)",
        )
        self.la_task = la_task
        self.qa_config = list(qa_config)
        self.qa_threshold = float(parser.get_parsed_content("qa_threshold"))
        self.valid = True

    def is_valid(self) -> bool:
        return self.valid

    def info(self) -> dict[str, Any]:
        i = super().info()
        i["qa_config"] = self.qa_config
        return i

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return self.la_task.pre_transforms(data)

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        result = self.la_task.stage1(data, device, self.step)
        if result.status != "ok":
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"{result.status}: {result.message}: the scan's quality cannot be assessed (check the LA segmentation)",
            )
        probs = [result.p_nulling, result.p_sharpness, result.p_enhancement, result.p_fibrosis]
        slices = [s for s in result.detail.slices if s["selected"]]
        data[self.output_label_key] = MetaTensor(torch.tensor(probs))
        data[self.output_json_key].update(
            {
                "verdict": "diagnostic" if result.diagnostic else "non-diagnostic",
                "diagnostic": result.diagnostic,
                "probabilities": dict(zip(SCORE_KEYS, probs)),
                "uncertainty": result.uncertainty,
                "refer": result.refer,
                "message": result.message,
                "qa_threshold": self.qa_threshold,
                "n_slices": result.n_slices,
                "slice_probabilities": [[s[f"p_{k}"] for k in SCORE_KEYS] for s in slices],
            }
        )
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, dict]:
        _, result = super().writer(data, extension, dtype)  # {"prediction": [...]}, MONAI Label's classification form
        return None, {**result, **data[self.output_json_key]}
