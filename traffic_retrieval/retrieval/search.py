"""The one gallery search interface: the top-k gallery items of a category for a batch
of query embeddings. ``ExactGallerySearch`` (blockwise torch, ``rank.py``) serves
``predict``; the index's FAISS search (``index/faiss_search.py``) serves ``Retriever``,
``search`` and ``serve``. ``search_routed`` sends each query to its target category
(or to all of them, merged by score) the same way for both.
"""

from __future__ import annotations

from typing import Protocol

ALL = "all"
Hits = list[tuple[int, float]]  # (gallery id, score), best first


class GallerySearch(Protocol):
    def categories(self) -> list[str]:
        """Categories with at least one gallery item."""

    def search(self, query_embeddings, k: int, category: str) -> list[Hits]:
        """Top ``k`` of ``category``'s items for each query (a ``[n, dim]`` float tensor or array)."""


class ExactGallerySearch:
    """Exact cosine search over gallery embeddings held in memory; ids are positions
    (``ids`` maps them to other ids)."""

    def __init__(self, embeddings, categories: list[str], ids: list[int] | None = None):
        import torch

        self.embeddings = embeddings
        self.ids = ids
        self._rows = {category: torch.tensor([i for i, c in enumerate(categories) if c == category], dtype=torch.long)
                      for category in sorted(set(categories))}

    def categories(self) -> list[str]:
        return [category for category, rows in self._rows.items() if len(rows)]

    def search(self, query_embeddings, k: int, category: str) -> list[Hits]:
        import torch

        from .rank import topk_similar

        query_embeddings = torch.as_tensor(query_embeddings)
        rows = self._rows[category]
        scores, positions = topk_similar(query_embeddings, self.embeddings[rows], k)
        found = rows[positions].tolist()
        if self.ids is not None:
            found = [[self.ids[i] for i in row] for row in found]
        return [list(zip(row_ids, row_scores)) for row_ids, row_scores in zip(found, scores.tolist())]


def search_targets(routed: list[str], available: list[str], scope: str = "routed") -> list[str]:
    """Where each query is searched: with ``scope`` "all" the whole gallery (the seed's), else
    its routed category, or all categories when that one has no items."""
    return [category if scope != ALL and category in available else ALL for category in routed]


def search_routed(gallery: GallerySearch, query_embeddings, targets: list[str], k: int) -> list[Hits]:
    """The top ``k`` hits of each query in its target category (``"all"``: every
    category, merged by score; ties by id), best first."""
    available = gallery.categories()
    hits: list[Hits] = [[] for _ in targets]
    for target in sorted(set(targets)):
        rows = [i for i, t in enumerate(targets) if t == target]
        searched = available if target == ALL else [target] if target in available else []
        for category in searched:
            for row, found in zip(rows, gallery.search(query_embeddings[rows], k, category)):
                hits[row] += found
        if len(searched) > 1:
            for row in rows:
                hits[row] = sorted(hits[row], key=lambda hit: (-hit[1], hit[0]))[:k]
    return hits


def topk_by_category(query_embeddings, query_categories: list[str], gallery_embeddings, gallery_categories: list[str], k: int) -> list[Hits]:
    """Rank each query only among gallery images of its own category (all of them when
    that category has none): ``search_routed`` over an ``ExactGallerySearch``."""
    gallery = ExactGallerySearch(gallery_embeddings, gallery_categories)
    return search_routed(gallery, query_embeddings, search_targets(query_categories, gallery.categories()), k)
