"""Two-stage inference: LA detection on every slice, quality assessment of the LA slices, reports."""

from bundle.inference.detector import load_detector, load_volume, plan_inferer, segment_la
from bundle.inference.report import (
    CSV_COLUMNS,
    STATUSES,
    ReportWriter,
    ScanDetail,
    ScanResult,
    Visuals,
    exit_status,
    pending_volumes,
    planned_outputs,
    prepare_outputs,
)
from bundle.inference.stage1 import ResizedSliceInferer, SliceOutput, SpacingSliceInferer, detector_inferer
from bundle.inference.stage2 import QALogits, QAResult, QAStage, qa_verdict
from bundle.inference.training_slices import detect_la, select_qa_slices
from bundle.inference.weights import check_qa_input, detector_plan, load_weights, qa_network, qa_plan
from bundle.inference.workflow import TwoStageStep, VolumeDataset, describe_error, detect_la_volume, volume_problem
from bundle.transforms.selection import LABounds, LAMask, LAMaskd, implausible_la, la_mask, la_slices
