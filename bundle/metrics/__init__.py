from bundle.metrics.segmentation import VolumeDice, la_presence, mask_metrics, volume_dice
from bundle.metrics.qa import (AGGREGATIONS, QALabelOutput, aggregate_scans, binary_metrics, mode_vote, qa_mse_output,
                               qa_outputs, seg_output)
