"""``evaluate``: score a submission against the ground truth with the challenge's
official rule (mAP@10 divided by the hits found), the strict mAP@10, recall@1/5/10,
and per-category figures (``evaluation/``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import option

HELP = "score a submission with the official rule and stricter metrics"


@dataclass
class EvaluateConfig:
    submission: Path | None = option(None, help="the submission JSON")
    ground_truth: Path | None = option(None, help="test_gt.txt (TEXT$IMG1$IMG2... per query)")
    gallery: Path | None = option(None, help="gallery directory, to reject names not in it (default: names in the ground truth)")
    top_k: int = option(10, minimum=1, help="results scored per query")
    json: bool = option(False, help="print one JSON object")


Config = EvaluateConfig


def run(config: EvaluateConfig):
    from ..errors import TrafficRetrievalError
    from ..evaluation.evaluate import evaluate_files

    if config.submission is None or config.ground_truth is None:
        raise TrafficRetrievalError("evaluate needs --submission and --ground-truth")
    return evaluate_files(config.submission, config.ground_truth, gallery_dir=config.gallery, top_k=config.top_k)


def print_result(report, config: EvaluateConfig) -> None:
    from ..evaluation.evaluate import format_report

    print(json.dumps(report.to_json_dict()) if config.json else format_report(report))
