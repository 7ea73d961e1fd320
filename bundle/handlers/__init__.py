from bundle.handlers.best import BestMetrics, report_best
from bundle.handlers.resume import LastCheckpoint, ResumeTraining
from bundle.handlers.snapshots import BatchSnapshot, save_slice_grid
from bundle.handlers.tracking import MLflowTracker, prepare_tracking_store
