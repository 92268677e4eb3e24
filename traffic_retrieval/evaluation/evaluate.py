"""Score a submission file against test_gt.txt: the one scorer used by the CLI,
the server and the benchmarks (file I/O here, arithmetic in ``metrics``)."""

from __future__ import annotations

from pathlib import Path

from ..data.vocabulary import QueryRouter, VehicleVocabulary
from ..errors import TrafficRetrievalError
from .metrics import (
    DEFAULT_TOP_K,
    QUERIES_WITHOUT_RELEVANT,
    RECALL_CUTOFFS,
    SHORT_RESULTS,
    EvaluationReport,
    MetricSummary,
    evaluate_rankings,
)
from .submission import check_submission, list_gallery, load_ground_truth, load_submission

__all__ = ["EvaluationReport", "evaluate_files", "format_report", "route_queries"]


def route_queries(texts: list[str], vocabulary: VehicleVocabulary | None = None) -> list[str]:
    """Each query's category (pedestrian or vehicle), routing each distinct text once."""
    router = QueryRouter(vocabulary)
    category_of: dict[str, str] = {}
    return [category_of.get(text) or category_of.setdefault(text, router(text)) for text in texts]


def evaluate_files(
    submission_path: str | Path,
    ground_truth_path: str | Path,
    gallery_dir: str | Path | None = None,
    top_k: int = DEFAULT_TOP_K,
    vocabulary: VehicleVocabulary | None = None,
) -> EvaluationReport:
    """Validate a submission JSON against test_gt.txt and score it.

    The gallery is the file names in ``gallery_dir`` when given, else every image
    name the ground truth mentions. ``vocabulary`` feeds the QueryRouter that splits
    the per-category scores (the published vocabulary when None).
    Raises TrafficRetrievalError for any invalid input (see ``submission``).
    """
    if top_k < 1:
        raise TrafficRetrievalError(f"top_k must be at least 1, got {top_k}")
    ground_truth = load_ground_truth(ground_truth_path)
    if gallery_dir is not None:
        gallery_names = list_gallery(gallery_dir)
    else:
        gallery_names = frozenset().union(*(query.relevant_names for query in ground_truth))
    results = load_submission(submission_path)
    check_submission(results, ground_truth, gallery_names, top_k, submission_path, ground_truth_path)
    return evaluate_rankings(
        [result.image_names for result in results],
        [query.relevant_names for query in ground_truth],
        route_queries([query.text for query in ground_truth], vocabulary),
        top_k,
    )


def format_report(report: EvaluationReport) -> str:
    """A short table of the scores (x100) per category, then any warnings."""
    k = report.top_k
    headers = ["", f"official mAP@{k}", f"strict mAP@{k}", *(f"R@{c}" for c in RECALL_CUTOFFS), "queries"]
    rows: list[tuple[str, MetricSummary]] = [("all", report.overall), *report.per_category.items()]
    table = [headers]
    for name, summary in rows:
        recalls = [f"{100 * summary.recall[c]:.2f}" for c in RECALL_CUTOFFS]
        table.append(
            [name, f"{100 * summary.official_map:.2f}", f"{100 * summary.strict_map:.2f}", *recalls,
             str(summary.num_queries)]
        )
    widths = [max(len(row[col]) for row in table) for col in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[0]) if col == 0 else cell.rjust(widths[col]) for col, cell in enumerate(row))
        for row in table
    ]
    lines.append("scores x100; official = organisers' lenient rule, strict = divided by min(#relevant, k)")
    notes = {
        SHORT_RESULTS: f"results with fewer than {k} image names",
        QUERIES_WITHOUT_RELEVANT: "ground-truth lines with no relevant images",
    }
    for key, count in report.warnings.items():
        if count:
            lines.append(f"warning: {count} {notes.get(key, key)}")
    return "\n".join(lines)
