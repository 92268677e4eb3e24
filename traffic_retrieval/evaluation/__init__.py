"""Where the score is computed: the challenge's official mAP@10 plus stricter metrics
(``metrics``), submission and ground-truth files (``submission``), and the file-level
entry point (``evaluate``)."""

from .evaluate import evaluate_files, format_report
from .metrics import EvaluationReport, MetricSummary, evaluate_rankings
from .submission import load_ground_truth, load_submission, write_submission

__all__ = [
    "EvaluationReport",
    "MetricSummary",
    "evaluate_files",
    "evaluate_rankings",
    "format_report",
    "load_ground_truth",
    "load_submission",
    "write_submission",
]
