from bundle.evaluation.plots import plot_confusion_matrices, plot_embeddings, project_embeddings
from bundle.evaluation.reference import FEATURES, fit_predict_reference, slice_features
from bundle.evaluation.report import QAReport, flatten_metrics, report_summary, score_predictions, write_report
