from bundle.metrics.calibration import expected_calibration_error, fit_temperature, reliability_curve
from bundle.metrics.qa import (
    AGGREGATIONS,
    VERDICT_RULES,
    QALabelOutput,
    aggregate_scans,
    binary_metrics,
    is_diagnostic,
    mode_vote,
    qa_mse_output,
    qa_outputs,
    scan_verdict,
    seg_output,
)
from bundle.metrics.segmentation import VolumeDice, la_presence, mask_metrics, volume_dice
