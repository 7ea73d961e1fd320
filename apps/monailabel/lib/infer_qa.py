"""Scan quality for MONAI Label (classification): stage 1 picks the LA slices, the QA network scores them.

WAITING FOR ISSUE 3 (the QA network, its config and checkpoint) and ISSUE 4 (the two-stage inference). Written
against the announced contract: a QA network's ``forward(x)``, ``x`` of shape ``(N, 1, h, w)`` (the slices as the
detector sees them, ``spatial_size`` 128), returns logits ``(N, 4)`` ordered (nulling, sharpness, enhancement,
fibrosis), or a dict holding them under ``"qa"``; its workflow config (default ``configs/qa_baseline.yaml``) defines
it as ``network_def`` and its weights are ``models/qa_baseline.pt``. The app registers this task only when both
exist, so until issue 3 lands the server offers no QA model (and nothing here returns made-up scores).
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

from .infer_la import LASegmentation
from .qa_summary import LABELS, summarise_scan

logger = logging.getLogger(__name__)

__all__ = ["QAClassification", "qa_logits"]


def qa_logits(output: torch.Tensor | dict) -> torch.Tensor:
    """The ``(N, 4)`` logits of a QA network's output: the tensor itself or its ``"qa"`` entry (multi-task net)."""
    if isinstance(output, dict):
        output = output.get("qa")
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] != len(LABELS):
        raise ValueError(f"a QA network must return logits (N, {len(LABELS)}) or a dict with them under 'qa', got "
                         f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")  # fmt: skip
    return output


class QAClassification(BasicInferTask):
    """Per-attribute and QA probabilities, verdict, uncertainty and the LA slices used, for one 3D study.

    The study goes through the LA task's preprocessing (the training slices: normalised per volume, resized); the
    detector selects the slices where any sigmoid output reaches ``la_threshold``; the QA network scores each; the
    scan summary (:func:`summarise_scan`: mode over the slices, a tie going to the mean) gives the verdict.
    MONAI Label's classification writer returns ``prediction`` (one ``{"idx", "label", "score"}`` per output, the
    score being the mean probability over the LA slices); the JSON adds ``verdict``, ``uncertainty``,
    ``probabilities``, ``diagnostic``, ``uncertainties``, ``la_slices``, ``slice_axis``, ``slice_probabilities``.

    Args:
        la_task: the LA segmentation task (stage 1: preprocessing, detector and threshold).
        bundle_root: the bundle folder.
        config_files: config files defining the QA network as ``network_def`` (e.g. common.yaml + qa_baseline.yaml).
        ckpt_path: the QA network's weights (a state dict, or one under "model").
        batch_size: slices per forward pass of the QA network.
    """

    def __init__(
        self,
        la_task: LASegmentation,
        bundle_root: str,
        config_files: Sequence[str],
        ckpt_path: str,
        batch_size: int = 64,
    ) -> None:
        self.valid = False
        missing = [p for p in (*config_files, ckpt_path) if not os.path.exists(p)]
        if missing or not la_task.is_valid():
            why = f"missing {missing}" if missing else "the LA task is not available (no detector weights)"
            logger.warning(f"QA task not offered: {why}; it waits for the QA network (issue 3)")
            return
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parser = ConfigParser()
        parser.read_config(list(config_files))
        parser.config.update({"bundle_root": bundle_root})  # type: ignore[union-attr]
        network = parser.get_parsed_content("network_def", instantiate=True)
        super().__init__(path=ckpt_path, network=network, type=InferType.CLASSIFICATION,
                         labels={k: i for i, k in enumerate(LABELS)}, dimension=3,
                         description="Quality of the LGE-MRI study for fibrosis assessment (stage 2)",
                         load_strict=True)  # fmt: skip
        self.la_task = la_task
        self.batch_size = batch_size
        self.config_files = list(config_files)
        self.valid = True

    def is_valid(self) -> bool:
        return self.valid

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return self.la_task.pre_transforms(data)

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        stack = torch.as_tensor(data[self.input_key]).float().to(device)  # (1, S, h, w)
        with torch.no_grad():
            la_logits = self.la_task.inferer(data)(stack[None], self.la_task._get_network(device, None))[0]
            present = (torch.sigmoid(la_logits) >= self.la_task.la_threshold).flatten(2).any(-1).any(0)
            index = torch.nonzero(present).flatten()
            if index.numel() == 0:
                raise MONAILabelException(
                    MONAILabelError.INFERENCE_ERROR,
                    f"no slice holds the LA at la_threshold {self.la_task.la_threshold}: the scan's quality cannot be "
                    "assessed (check the LA segmentation)",
                )
            network = self._get_network(device, data)
            slices = stack[0, index][:, None]  # (n, 1, h, w)
            probs = torch.cat([torch.sigmoid(qa_logits(network(b)).float()) for b in slices.split(self.batch_size)])
        summary = summarise_scan(probs.cpu())
        data[self.output_label_key] = MetaTensor(torch.tensor([summary["probabilities"][k] for k in LABELS]))
        data[self.output_json_key] = {**summary, "la_slices": index.tolist(), "slice_axis": int(data["slice_axis"]),
                                      "la_threshold": self.la_task.la_threshold,
                                      "slice_probabilities": probs.cpu().tolist()}  # fmt: skip
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, dict]:
        _, result = super().writer(data, extension, dtype)  # {"prediction": [...]}, MONAI Label's classification form
        return None, {**result, **data[self.output_json_key]}
