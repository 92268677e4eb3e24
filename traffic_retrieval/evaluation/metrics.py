"""Retrieval metrics on ranked name lists: the challenge's official score and stricter ones.

Pure functions on data (no file I/O). Everything is computed from one boolean
"hit matrix" (queries x ranks, True where the predicted name at that rank is
relevant), so 17,611 queries evaluate in milliseconds.

The metrics, per query, for a predicted list truncated to ``top_k`` names:

- **official AP** (the organisers' script, reproduced exactly): a hit counter starts
  at 1e-6; walking the predicted names in order, a relevant name at rank j (1-based)
  does ``hits += 1; sum += hits / j``; AP = ``sum / hits`` (0 when nothing is hit).
  It divides by the hits *found*, so it is lenient: one hit at rank 1 scores 1.0
  however many images were relevant. The 1e-6 start shifts scores only in the
  6th decimal and is kept so our numbers equal the leaderboard's.
- **strict AP@k** (the challenge README's formula): the same sum with an exact
  counter, divided by ``min(number of relevant images, k)``; 0 for a query with
  no relevant images.
- **recall@K** for K in 1, 5, 10: 1 if any relevant image is among the first K
  predicted names, else 0. This is the hit rate commonly reported as R@K for
  retrieval with several positives per query (not the fraction of the relevant
  images retrieved, which with ~14 relevant images per pedestrian query could
  never reach 1 at K=1 or 5). With ``top_k`` < K it is recall@top_k.

Scores are means over queries; per-category scores are means over the queries of
that category (0.0 when it has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np

from ..data.schema import CATEGORIES

# The organisers' script starts its hit counter here instead of at 0.
OFFICIAL_HIT_COUNTER_START = 1e-6
RECALL_CUTOFFS: tuple[int, ...] = (1, 5, 10)
DEFAULT_TOP_K = 10

# Keys of EvaluationReport.warnings.
SHORT_RESULTS = "results_shorter_than_top_k"
QUERIES_WITHOUT_RELEVANT = "queries_without_relevant_images"


def hit_matrix(
    predicted_names: Sequence[Sequence[str]],
    relevant_names: Sequence[Collection[str]],
    top_k: int = DEFAULT_TOP_K,
) -> np.ndarray:
    """Boolean (queries, top_k): True where the predicted name at that rank is relevant.

    Predicted lists are truncated to ``top_k``; shorter lists leave False at the end.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if len(predicted_names) != len(relevant_names):
        raise ValueError(f"{len(predicted_names)} predicted lists but {len(relevant_names)} relevance sets")
    flat: list[bool] = []
    for names, relevant in zip(predicted_names, relevant_names):
        relevant = relevant if isinstance(relevant, (set, frozenset)) else set(relevant)
        row = [name in relevant for name in names[:top_k]]
        flat.extend(row)
        flat.extend([False] * (top_k - len(row)))
    return np.array(flat, dtype=bool).reshape(len(predicted_names), top_k)


def official_average_precision(hits: np.ndarray) -> np.ndarray:
    """Per-query AP by the organisers' rule (see the module docstring)."""
    hits = np.asarray(hits, dtype=bool)
    counter = np.cumsum(hits, axis=1, dtype=np.float64) + OFFICIAL_HIT_COUNTER_START
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    precision_sum = np.where(hits, counter / ranks, 0.0).sum(axis=1)
    final_counter = hits.sum(axis=1, dtype=np.float64) + OFFICIAL_HIT_COUNTER_START
    return precision_sum / final_counter


def strict_average_precision(hits: np.ndarray, num_relevant: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-query AP@k divided by min(num_relevant, k), k = hits.shape[1]; 0 when num_relevant is 0."""
    hits = np.asarray(hits, dtype=bool)
    num_relevant = np.asarray(num_relevant, dtype=np.int64).reshape(-1)
    top_k = hits.shape[1]
    precision = np.cumsum(hits, axis=1, dtype=np.float64) / np.arange(1, top_k + 1, dtype=np.float64)
    precision_sum = np.where(hits, precision, 0.0).sum(axis=1)
    denominator = np.minimum(num_relevant, top_k).astype(np.float64)
    return np.divide(precision_sum, denominator, out=np.zeros_like(precision_sum), where=denominator > 0)


def recall_at(hits: np.ndarray, cutoff: int) -> np.ndarray:
    """Per-query hit rate: 1.0 if any of the first ``cutoff`` ranks is relevant, else 0.0."""
    hits = np.asarray(hits, dtype=bool)
    return hits[:, :cutoff].any(axis=1).astype(np.float64)


@dataclass(frozen=True)
class MetricSummary:
    """Mean metrics over a set of queries."""

    official_map: float
    strict_map: float
    recall: dict[int, float]  # cutoff -> mean hit rate
    num_queries: int

    def to_json_dict(self, top_k: int = DEFAULT_TOP_K) -> dict:
        data: dict = {
            f"official_mAP@{top_k}": self.official_map,
            f"strict_mAP@{top_k}": self.strict_map,
        }
        for cutoff in RECALL_CUTOFFS:
            data[f"recall@{cutoff}"] = self.recall[cutoff]
        data["num_queries"] = self.num_queries
        return data


@dataclass(frozen=True)
class EvaluationReport:
    """All metrics for one submission: overall, per category, and counted warnings."""

    overall: MetricSummary
    per_category: dict[str, MetricSummary]
    warnings: dict[str, int] = field(default_factory=dict)
    top_k: int = DEFAULT_TOP_K

    @property
    def official_map(self) -> float:
        return self.overall.official_map

    def to_json_dict(self) -> dict:
        data = self.overall.to_json_dict(self.top_k)
        data["per_category"] = {name: summary.to_json_dict(self.top_k) for name, summary in self.per_category.items()}
        data["warnings"] = dict(self.warnings)
        return data


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def summarize(
    official_ap: np.ndarray, strict_ap: np.ndarray, recalls: dict[int, np.ndarray], mask: np.ndarray | None = None
) -> MetricSummary:
    """Means of per-query metrics, over the queries selected by ``mask`` (all when None)."""
    if mask is None:
        mask = np.ones(len(official_ap), dtype=bool)
    return MetricSummary(
        official_map=_mean(official_ap[mask]),
        strict_map=_mean(strict_ap[mask]),
        recall={cutoff: _mean(values[mask]) for cutoff, values in recalls.items()},
        num_queries=int(mask.sum()),
    )


def evaluate_rankings(
    predicted_names: Sequence[Sequence[str]],
    relevant_names: Sequence[Collection[str]],
    categories: Sequence[str],
    top_k: int = DEFAULT_TOP_K,
) -> EvaluationReport:
    """Score ranked name lists against relevance sets, overall and per category.

    The three sequences are aligned by query position (query texts repeat, so
    position is the identity). ``categories`` holds each query's category
    (``QueryRouter`` output); pedestrian and vehicle are always reported.
    """
    if len(categories) != len(predicted_names):
        raise ValueError(f"{len(categories)} categories but {len(predicted_names)} predicted lists")
    relevant_sets = [r if isinstance(r, (set, frozenset)) else set(r) for r in relevant_names]
    hits = hit_matrix(predicted_names, relevant_sets, top_k)
    num_relevant = np.array([len(r) for r in relevant_sets], dtype=np.int64)
    official_ap = official_average_precision(hits)
    strict_ap = strict_average_precision(hits, num_relevant)
    recalls = {cutoff: recall_at(hits, cutoff) for cutoff in RECALL_CUTOFFS}

    category_array = np.array(list(categories), dtype=object)
    category_names = list(CATEGORIES) + sorted(set(categories) - set(CATEGORIES))
    per_category = {
        name: summarize(official_ap, strict_ap, recalls, category_array == name) for name in category_names
    }
    warnings = {
        SHORT_RESULTS: sum(1 for names in predicted_names if len(names) < top_k),
        QUERIES_WITHOUT_RELEVANT: int((num_relevant == 0).sum()),
    }
    return EvaluationReport(summarize(official_ap, strict_ap, recalls), per_category, warnings, top_k)
