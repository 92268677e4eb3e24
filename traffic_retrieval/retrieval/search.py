"""The one gallery search interface: the top-k gallery items of a category for a batch
of query embeddings. ``ExactGallerySearch`` (blockwise torch, ``rank.py``) serves
``predict``; the index's FAISS search (``index/faiss_search.py``) serves ``Retriever``,
``search`` and ``serve``. ``search_routed`` sends each query to its target category
(or to all of them, merged by score) the same way for both; ``search_scoped`` applies a
query recipe's gallery scope (routed, all, or soft: every category, images outside the
query's routed one scored ``penalty`` lower, so a misrouted image stays reachable).
"""

from __future__ import annotations

from typing import Protocol

ALL = "all"
SOFT = "soft"
DEFAULT_ROUTING_PENALTY = 0.05  # gallery_scope soft: subtracted from the scores of images outside the routed category
BANK_MAX_DEPTH = 4096  # BankNormalisedSearch: candidates by cosine a query fetches at most
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


class BankNormalisedSearch:
    """A ``GallerySearch`` whose scores are ``cosine - offset(id)`` (querybank
    normalisation, ``adapt.bank_offsets``), over any inner search (exact, or an index's
    FAISS). Each query fetches the inner search's top ``max(4k, k + 32)`` by cosine and
    re-ranks them by the normalised score; while a query's k-th normalised score could
    still be beaten by an image it has not fetched (one whose cosine is at most the last
    fetched one's, minus the smallest offset), it fetches four times deeper, up to
    ``max_depth`` candidates. So the top ``k`` is exact whenever the inner search is and
    the bound is met within ``max_depth`` (on a gallery of 1,200 every query was, half of
    them in the second round); past it, it is the best of the ``max_depth`` nearest by
    cosine, as QB-Norm itself restricts to a query's neighbours, so that a gallery of
    millions costs a bounded search a query. ``offsets`` holds one value per id in ``ids``
    (gallery positions when None)."""

    def __init__(self, inner: GallerySearch, offsets, ids=None, max_depth: int = BANK_MAX_DEPTH):
        import numpy as np

        offsets = np.asarray(offsets, dtype=np.float32)
        ids = np.arange(len(offsets), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        self.inner, self._ids, self._offsets, self.max_depth = inner, ids[order], offsets[order], max_depth
        self._min_offset = float(offsets.min()) if len(offsets) else 0.0

    def categories(self) -> list[str]:
        return self.inner.categories()

    def offsets_of(self, ids) -> list[float]:
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64)
        positions = np.searchsorted(self._ids, ids)
        if len(ids) and (positions.max() >= len(self._ids) or not np.array_equal(self._ids[positions], ids)):
            raise ValueError("query bank: an id without an offset")  # an internal error: offsets are made for every indexed id
        return self._offsets[positions].tolist()

    def search(self, query_embeddings, k: int, category: str) -> list[Hits]:
        results: list[Hits | None] = [None] * len(query_embeddings)
        pending, depth = list(range(len(query_embeddings))), max(4 * k, k + 32)
        while pending:
            found = self.inner.search(query_embeddings[pending], depth, category)
            still = []
            for row, hits in zip(pending, found):
                offsets = self.offsets_of([image for image, _ in hits])
                ranked = sorted(((image, score - offset) for (image, score), offset in zip(hits, offsets)), key=lambda hit: (-hit[1], hit[0]))[:k]
                exhausted = len(hits) < depth or depth >= max(k, self.max_depth)  # every image of the category fetched, or as deep as it goes
                if exhausted or (len(ranked) == k and ranked[-1][1] > hits[-1][1] - self._min_offset):
                    results[row] = ranked
                else:
                    still.append(row)
            pending, depth = still, min(depth * 4, max(k, self.max_depth))
        return results


def bank_normalised(gallery: GallerySearch, offsets, ids=None) -> GallerySearch:
    """``gallery`` ranked by ``cosine - offset`` (``BankNormalisedSearch``); ``offsets`` None: ``gallery`` itself."""
    return gallery if offsets is None else BankNormalisedSearch(gallery, offsets, ids)


def search_targets(routed: list[str], available: list[str], scope: str = "routed") -> list[str]:
    """Where each query is searched: with ``scope`` "all" the whole gallery (the seed's), else
    its routed category, or all categories when that one has no items. (``scope`` "soft"
    cannot be expressed as targets: it is ``search_scoped``'s; here it reads as routed.)"""
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


def search_soft(gallery: GallerySearch, query_embeddings, routed: list[str], k: int, penalty: float = DEFAULT_ROUTING_PENALTY) -> list[Hits]:
    """The top ``k`` hits of each query over every category, an image outside the query's
    routed category (``routed[i]``) scored ``score - penalty``; merged by that score, ties
    by id, best first. The scores returned are the penalised ones (what the ranking used).
    Each category is searched once for all queries, for ``k`` hits: the merged top ``k``
    is exact whenever each category's search is. ``penalty`` 0 ranks as scope "all"; a
    penalty larger than any score gap ranks the routed category's images first, in the
    routed order, and fills the rest of the ``k`` from the other categories. A query routed
    to a category without images ranks as with scope "all" (no penalty), as routed falls back."""
    if not routed:
        return []
    penalty = float(penalty)
    per_category = {category: gallery.search(query_embeddings, k, category) for category in gallery.categories()}
    hits: list[Hits] = []
    for row, home in enumerate(routed):
        merged = [(image, score if category == home or home not in per_category else score - penalty)  # no images routed there: as "all"
                  for category, found in per_category.items() for image, score in found[row]]
        hits.append(sorted(merged, key=lambda hit: (-hit[1], hit[0]))[:k])
    return hits


def search_scoped(gallery: GallerySearch, query_embeddings, routed: list[str], k: int, scope: str = "routed",
                  penalty: float = DEFAULT_ROUTING_PENALTY) -> list[Hits]:
    """The top ``k`` hits of each query (``routed[i]``: its routed category) under a gallery
    scope: "routed" and "all" as ``search_routed`` over ``search_targets``; "soft" as
    ``search_soft`` with ``penalty``. What predict, ``Retriever`` and validation call with a
    resolved ``QueryConfig``'s ``gallery_scope`` and ``routing_penalty``."""
    if scope == SOFT:
        return search_soft(gallery, query_embeddings, routed, k, penalty)
    return search_routed(gallery, query_embeddings, search_targets(routed, gallery.categories(), scope), k)


def topk_by_category(query_embeddings, query_categories: list[str], gallery_embeddings, gallery_categories: list[str], k: int) -> list[Hits]:
    """Rank each query only among gallery images of its own category (all of them when
    that category has none): ``search_routed`` over an ``ExactGallerySearch``."""
    gallery = ExactGallerySearch(gallery_embeddings, gallery_categories)
    return search_routed(gallery, query_embeddings, search_targets(query_categories, gallery.categories()), k)
