"""LA segmentation for MONAI Label: stage 1 of the bundle's inference (configs/inference.yaml), the mask on the study's
grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

from bundle.inference import ScanResult, TwoStageStep

logger = logging.getLogger(__name__)

__all__ = ["LASegmentation"]


class _Constants(BundleConstants):
    """MONAI Label's bundle constants, pointed at the bundle's configs/inference.yaml (an overlay of common.yaml)."""

    def __init__(self, config_name: str, ckpt_name: str) -> None:
        self.config_name = config_name
        self.ckpt_name = ckpt_name

    def configs(self) -> Sequence[str]:
        return [self.config_name]

    def model_pytorch(self) -> str:
        return self.ckpt_name


class LASegmentation(BundleInferTask):
    """The left-atrial blood pool of a 3D LGE-MRI study, as a label volume with the study's shape and affine.

    MONAI Label's :class:`BundleInferTask` on the bundle itself (nothing is fetched): it reads ``preprocessing``,
    ``inferer``, ``postprocessing`` and ``network_def`` from ``configs/common.yaml`` + ``configs/inference.yaml``
    (+ any overlays), the bundle's two-stage inference config, and the weights from ``<bundle_root>/models/model.pt``.
    The detector runs through that config's ``assess_step`` (:class:`bundle.inference.TwoStageStep`, LA detection
    only), exactly as on the command line. The result file holds 1 on the LA and 0 elsewhere; the result JSON adds
    ``la_slices`` (indices, along ``slice_axis``, of the slices whose LA probability reaches ``la_threshold``: the
    slices stage 2 reads), ``slice_axis``, ``la_threshold`` and ``status`` (``ok`` or ``no_left_atrium``).

    Args:
        bundle_root: the bundle folder (``configs/``, ``models/``).
        conf: MONAI Label's ``--conf`` options.
        config_files: config files merged in order (``common.yaml``, ``inference.yaml``, overlays); the second must be
            ``<bundle_root>/configs/<name>``.
        ckpt_name: weights file in ``<bundle_root>/models``.
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(
        self,
        bundle_root: str,
        conf: dict[str, str],
        config_files: Sequence[str],
        ckpt_name: str = "model.pt",
        **kwargs: Any,
    ) -> None:
        self.config_files = [os.path.abspath(f) for f in config_files]
        self.ckpt_name = ckpt_name
        const = _Constants(os.path.basename(self.config_files[1]), ckpt_name)
        # add_post_restore=False: stage 1 already returns the logits on the study's grid and geometry (and
        # MONAI Label's Restored would silently resize a mask of the wrong shape instead of failing)
        super().__init__(
            bundle_root,
            conf,
            const=const,
            type=InferType.SEGMENTATION,
            add_post_restore=False,
            load_strict=True,
            **kwargs,
        )
        if not self.valid:
            return
        self.labels = {"left_atrium": 1}
        self.dimension = 3  # metadata.json describes the 2D network; the task takes and returns 3D studies
        self.description = "Left-atrial blood pool (stage 1 of the LGE-MRI quality assessment)"
        self.la_threshold = float(self.bundle_config.get_parsed_content("la_threshold"))
        self.min_slices = int(self.bundle_config.get_parsed_content("min_slices"))
        get = self.bundle_config.get_parsed_content
        self.step = TwoStageStep(
            qa_stage=None,
            la_threshold=self.la_threshold,
            min_slices=self.min_slices,
            min_la_area_mm2=get("min_la_area_mm2"),
            keep_largest=get("keep_largest"),
            la_bounds=get("la_bounds"),
        )

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(self.config_files)
        # the checkpoint served is also the one whose plan (network, preprocessing, thresholds) the config reads
        parser.config.update({self.const.key_bundle_root(): path, "ckpt_name": self.ckpt_name})  # type: ignore
        return parser

    def info(self) -> dict[str, Any]:
        i = super().info()
        i["config_files"] = self.config_files
        return i

    def stage1(self, data: dict[str, Any], device: str, step: TwoStageStep | None = None) -> ScanResult:
        """Run ``step`` (default: LA detection only) on the preprocessed study; ``pred`` gets the LA logits."""
        volume = data[self.input_key]
        result = ScanResult(input=str(data.get("image_path", "")))
        network = self._get_network(device, None)  # the detector (data's model_filename may name the QA task's)
        with torch.no_grad():
            logits = (step or self.step).assess_volume(
                volume.to(torch.device(device)), network, self.inferer(data), result
            )
        if logits is None:  # not a volume (e.g. a 2D image): the step says why
            raise ValueError(result.message)
        data[self.output_label_key] = logits
        data.setdefault(self.output_json_key, {}).update(
            {
                "la_slices": [s["index"] for s in result.detail.slices if s["selected"]],
                "slice_axis": int(result.detail.slice_axis),
                "la_threshold": self.la_threshold,
                "status": result.status,
            }
        )
        return result

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        self.stage1(data, device)
        return data

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        # (1, X, Y, Z) -> (X, Y, Z): MONAI Label's writer takes a channel-less label volume (its affine is the study's)
        return [*super().post_transforms(data), SqueezeDimd(keys=self.output_label_key, dim=0)]
