"""The index's per-category FAISS indexes as a ``retrieval.search.GallerySearch``, so
``Retriever`` (and through it ``search`` and ``serve``) routes and merges results with
the same ``search_routed`` as ``predict``."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from . import faiss_index
from .faiss_index import AnnIndex


class FaissGallerySearch:
    """One ``AnnIndex`` per category; hits are image ids of the index."""

    def __init__(self, indexes: dict[str, AnnIndex]):
        self.indexes = indexes

    @classmethod
    def load(cls, root: str | Path, faiss_info: dict, dim: int | None = None) -> "FaissGallerySearch":
        """The indexes listed in index.json's ``faiss`` entry (checked by ``info.check_index_info``:
        files named by their pattern inside ``root``), each holding what the entry says: its
        kind, ``count`` vectors of ``dim`` dimensions."""
        indexes = {}
        for category, entry in faiss_info["indexes"].items():
            path = Path(root) / entry["file"]
            ann = faiss_index.load(path, entry["kind"], entry["search_param"], entry["recall@10"], entry["recall_queries"])
            if dim is not None and ann.index.d != dim:
                raise TrafficRetrievalError(f"{path}: holds {ann.index.d}-dimensional vectors, index.json's dim is {dim}")
            if ann.count != entry["count"]:
                raise TrafficRetrievalError(f"{path}: holds {ann.count} vectors, index.json's faiss.indexes.{category}.count is {entry['count']}")
            indexes[category] = ann
        return cls(indexes)

    def categories(self) -> list[str]:
        return [category for category in sorted(self.indexes) if self.indexes[category].count]

    def search(self, query_embeddings, k: int, category: str) -> list[list[tuple[int, float]]]:
        import numpy as np

        if category not in self.indexes:
            raise TrafficRetrievalError(f"no FAISS index for category {category!r} (have: {', '.join(sorted(self.indexes)) or 'none'})")
        queries = query_embeddings.detach().float().cpu().numpy() if hasattr(query_embeddings, "detach") else query_embeddings  # torch or numpy
        scores, ids = faiss_index.search(self.indexes[category], np.asarray(queries, dtype=np.float32), k)
        # ties by id, as ``ExactGallerySearch`` and ``search_routed`` break them
        return [sorted(((int(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0), key=lambda hit: (-hit[1], hit[0]))
                for row_scores, row_ids in zip(scores, ids)]
