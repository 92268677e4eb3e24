"""``Retriever``: text-to-image search over a built index, the one search path for the
CLI, the server and scripts.

```python
from traffic_retrieval.index import Retriever

retriever = Retriever.open("INDEX")                  # index.json, SQLite, FAISS and the recorded checkpoint
for result in retriever.search("This is a white Audi.", k=10):
    print(result.rank, result.score, result.category, result.name, result.path)
retriever.search("a woman with a backpack", k=5, category="pedestrian")
retriever.search_batch(["...", "..."], k=10)         # texts encoded in one batch
retriever.info(); retriever.record(42); retriever.image_path(42)
```

A query goes to its category's FAISS index: the one named by ``category``, or the
one ``QueryRouter`` picks (``category=None``, as ``predict`` routes), or all of them
merged by score (``"all"``). Per-category indexes, rather than one index searched
deeper and filtered, return k results of the category however rare it is, and
their recall is measured and tuned per category. Searches are thread-safe: text
encoding runs under a lock, FAISS searches take their settings per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrafficRetrievalError

MAX_K = 1000
ALL = "all"


@dataclass(frozen=True)
class SearchResult:
    rank: int  # 1 = best
    id: int  # the image's id in the index (stable while its file stays in the gallery)
    name: str  # file name
    path: str  # absolute path of the image
    score: float  # cosine similarity between the query and the image
    category: str | None
    label: str | None  # ATTR from the labels file, when the index was given one


@dataclass(frozen=True)
class ImageRecord:
    id: int
    name: str
    path: str  # absolute
    relative_path: str
    category: str | None
    predicted_category: str | None
    label: str | None
    caption: str | None
    size: int
    sha256: str | None
    state: str


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise TrafficRetrievalError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return k


class Retriever:
    def __init__(self, layout, info: dict, store, indexes: dict, loaded, device: str, dtype, router, query_config):
        self.layout = layout
        self._info = info
        self._store = store
        self._indexes = indexes  # category -> AnnIndex
        self._loaded = loaded
        self._device = device
        self._dtype = dtype
        self._router = router
        self._query_config = query_config
        self._images_root = Path(info["images"])
        self._model_lock = threading.Lock()
        self._db_lock = threading.Lock()

    @classmethod
    def open(cls, index: str | Path, device: str = "auto", checkpoint: str | Path | None = None, vocabulary: str | Path | None = None,
             precision: str = "auto", query_config=None) -> "Retriever":
        """Open ``index``; the model is the checkpoint recorded in index.json, or ``checkpoint``
        (refused unless it is the same model: identical sha256)."""
        from ..data.vocabulary import QueryRouter, VehicleVocabulary
        from ..model.factory import load_checkpoint
        from ..retrieval.queries import QueryConfig
        from ..train.trainer import autocast_dtype, resolve_device
        from . import faiss_index
        from .store import IndexLayout, IndexStore

        layout = IndexLayout(index)
        info = layout.read_index_json()
        checkpoint_path = Path(checkpoint or info["checkpoint"])
        if not checkpoint_path.is_file():
            raise TrafficRetrievalError(f"{checkpoint_path}: checkpoint of index {layout.root} not found (give checkpoint=... / --checkpoint with the same model)")
        device = resolve_device(device)
        loaded = load_checkpoint(checkpoint_path, device=device)  # its identity is the file's sha256
        if loaded.identity != info["identity"]:
            raise TrafficRetrievalError(f"{checkpoint_path}: not the checkpoint index {layout.root} was built with (sha256 {info['identity'][:12]}): "
                                        "queries must be encoded by the model that encoded the gallery")
        for attempt in range(2):
            try:
                indexes = {category: faiss_index.load(layout.root / entry["file"], entry["kind"], entry["search_param"], entry["recall@10"], entry["recall_queries"])
                           for category, entry in info["faiss"]["indexes"].items()}
                break
            except TrafficRetrievalError:
                if attempt:  # a build finishing meanwhile replaces the FAISS files: read its index.json once more
                    raise
                info = layout.read_index_json()
        store = IndexStore(layout.meta_db, readonly=True)
        router = QueryRouter(VehicleVocabulary.load(vocabulary) if vocabulary else None)
        return cls(layout, info, store, indexes, loaded, device, autocast_dtype(precision, device), router, query_config or QueryConfig())

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- search --------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        return sorted(self._indexes)

    def _check_category(self, category: str | None) -> None:
        known = {"pedestrian", "vehicle", ALL, *self._indexes}
        if category is not None and category not in known:
            raise TrafficRetrievalError(f"category must be one of {', '.join(sorted(known))} or None (routed), got {category!r}")

    def _target(self, query: str, category: str | None) -> str:
        """The category a query is searched in (``all`` when the routed one has no images)."""
        if category is not None:
            return category
        routed = self._router(query)
        return routed if self._indexes.get(routed) is not None and self._indexes[routed].count else ALL

    def search(self, query: str, k: int = 10, category: str | None = None) -> list[SearchResult]:
        return self.search_batch([query], k, category)[0]

    def search_batch(self, queries: list[str], k: int = 10, category: str | None = None) -> list[list[SearchResult]]:
        """The top ``k`` images for each query, best first. ``category``: None (routed by
        the vehicle vocabulary), ``"pedestrian"``, ``"vehicle"`` or ``"all"``."""
        import numpy as np

        from ..retrieval.encode import encode_texts
        from ..retrieval.queries import text_to_encode
        from . import faiss_index

        check_k(k)
        self._check_category(category)
        if isinstance(queries, str):
            raise TrafficRetrievalError("search_batch takes a list of queries (use search for one)")
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise TrafficRetrievalError(f"a query must be a non-empty string, got {query!r}")
        if not queries:
            return []
        targets = [self._target(query, category) for query in queries]
        texts = [text_to_encode(query, target, self._query_config) for query, target in zip(queries, targets)]
        with self._model_lock:
            query_embeddings = encode_texts(self._loaded, texts, self._device, self._dtype).numpy().astype(np.float32)

        hits: list[list[tuple[float, int]]] = [[] for _ in queries]
        for target in sorted(set(targets)):
            rows = [i for i, t in enumerate(targets) if t == target]
            searched = [c for c in self.categories if self._indexes[c].count] if target == ALL else [target] if target in self._indexes else []
            for searched_category in searched:
                scores, ids = faiss_index.search(self._indexes[searched_category], query_embeddings[rows], k)
                for row, row_scores, row_ids in zip(rows, scores, ids):
                    hits[row] += [(float(s), int(i)) for s, i in zip(row_scores, row_ids) if i >= 0]
        for row in range(len(hits)):
            hits[row] = sorted(hits[row], key=lambda hit: (-hit[0], hit[1]))[:k]
        with self._db_lock:
            records = self._store.records({image_id for row in hits for _, image_id in row})
        results = []
        for row in hits:
            found = [(score, records[image_id]) for score, image_id in row if image_id in records]  # a row deleted by a build in progress is skipped
            results.append([SearchResult(rank, record.id, record.name, str(self._images_root / record.path), score, record.category, record.label)
                            for rank, (score, record) in enumerate(found, start=1)])
        return results

    # -- metadata ------------------------------------------------------------------
    def info(self) -> dict:
        info = self._info
        return {
            "index": str(self.layout.root),
            "images": info["images"],
            "model": info["model"],
            "checkpoint": info["checkpoint"],
            "identity": info["identity"],
            "dim": info["dim"],
            "count": info["count"],
            "categories": dict(info["categories"]),
            "kind": dict(info["kind"]),
            "recall@10": info["recall@10"],
            "per_category": {c: dict(entry) for c, entry in info["faiss"]["indexes"].items()},
            "unreadable": info["unreadable"],
            "built_at": info["built_at"],
            "device": self._device,
        }

    def record(self, image_id: int) -> ImageRecord:
        with self._db_lock:
            row = self._store.record(image_id)
        if row is None:
            raise TrafficRetrievalError(f"no image with id {image_id!r} in index {self.layout.root}")
        return ImageRecord(row.id, row.name, str(self._images_root / row.path), row.path, row.category, row.predicted_category, row.label, row.caption,
                           row.size, row.sha256, row.state)

    def image_path(self, image_id: int) -> Path:
        return Path(self.record(image_id).path)
