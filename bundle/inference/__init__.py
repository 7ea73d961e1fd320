"""Two-stage inference: LA detection on every slice, quality assessment of the LA slices, reports."""

from bundle.inference.report import (
    CSV_COLUMNS,
    STATUSES,
    ReportWriter,
    ScanResult,
    exit_status,
    planned_outputs,
    prepare_outputs,
)
from bundle.inference.stage1 import ResizedSliceInferer, SliceOutput
from bundle.inference.stage2 import QA_OUTPUTS, QALogits, QAResult, QAStage, qa_verdict
from bundle.inference.weights import load_weights
from bundle.inference.workflow import TwoStageStep, VolumeDataset, describe_error, volume_problem
