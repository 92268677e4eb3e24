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
their recall is measured and tuned per category. Queries are routed, rewritten and
encoded by ``retrieval.queries.QueryEncoder`` and searched by
``retrieval.search.search_routed`` over ``FaissGallerySearch`` (``faiss_search.py``):
the path ``predict`` takes over its exact search. Searches are thread-safe: text
encoding runs under the encoder's lock, FAISS searches take their settings per
call, the store serialises its reads.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrafficRetrievalError
from ..io import Closeable
from ..retrieval.search import ALL
from .info import check_relative_path, shown

MAX_K = 1000


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


class Retriever(Closeable):
    def __init__(self, layout, info: dict, store, gallery, query_encoder, device: str):
        self.layout = layout
        self._info = info
        self._store = store  # IndexStore, read-only
        self._gallery = gallery  # FaissGallerySearch: category -> AnnIndex
        self._queries = query_encoder  # retrieval.queries.QueryEncoder
        self._device = device
        self._images_root = Path(info["images"])

    @classmethod
    def open(cls, index: str | Path, device: str = "auto", checkpoint: str | Path | None = None, vocabulary: str | Path | None = None,
             precision: str = "auto", query_config=None, trust_checkpoint: bool = False) -> "Retriever":
        """Open ``index``; the model is the checkpoint recorded in index.json, or ``checkpoint``
        (refused unless it is the same model: identical sha256). ``query_config``
        (``retrieval.queries.QueryConfig``): how queries are rewritten before encoding."""
        from ..data.vocabulary import VehicleVocabulary
        from ..model.factory import load_checkpoint
        from ..retrieval.queries import QueryEncoder
        from ..runtime import autocast_dtype, resolve_device
        from .faiss_search import FaissGallerySearch
        from .store import IndexLayout, IndexStore

        layout = IndexLayout(index)
        info = layout.read_index_json()
        checkpoint_path = Path(checkpoint or info["checkpoint"])
        if not checkpoint_path.is_file():
            raise TrafficRetrievalError(f"{checkpoint_path}: checkpoint of index {layout.root} not found (give checkpoint=... / --checkpoint with the same model)")
        device = resolve_device(device)
        loaded = load_checkpoint(checkpoint_path, device=device, trust_architecture=trust_checkpoint)  # its identity is the file's sha256
        if loaded.identity != info["identity"]:
            raise TrafficRetrievalError(f"{checkpoint_path}: not the checkpoint index {layout.root} was built with (sha256 {info['identity'][:12]}): "
                                        "queries must be encoded by the model that encoded the gallery")
        for attempt in range(2):
            try:
                gallery = FaissGallerySearch.load(layout.root, info["faiss"], info["dim"])
                break
            except TrafficRetrievalError:
                if attempt:  # a build finishing meanwhile replaces the FAISS files: read its index.json once more
                    raise
                info = layout.read_index_json()
        store = IndexStore(layout.meta_db, readonly=True)
        query_encoder = QueryEncoder(loaded, query_config, device, autocast_dtype(precision, device),
                                     vocabulary=VehicleVocabulary.load(vocabulary) if vocabulary else None)
        return cls(layout, info, store, gallery, query_encoder, device)

    def close(self) -> None:
        self._store.close()

    @property
    def query_config(self):
        """The resolved query recipe (text form, router, gallery scope) this retriever applies."""
        return self._queries.config

    # -- search --------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        return sorted(self._gallery.indexes)

    def _check_category(self, category: str | None) -> None:
        known = {"pedestrian", "vehicle", ALL, *self._gallery.indexes}
        if category is not None and category not in known:
            raise TrafficRetrievalError(f"category must be one of {', '.join(sorted(known))} or None (routed), got {category!r}")

    def search(self, query: str, k: int = 10, category: str | None = None) -> list[SearchResult]:
        return self.search_batch([query], k, category)[0]

    def search_batch(self, queries: list[str], k: int = 10, category: str | None = None) -> list[list[SearchResult]]:
        """The top ``k`` images for each query, best first. ``category``: None (the query
        recipe's gallery scope: the routed category, or all of them when it has no images;
        or the whole gallery),
        ``"pedestrian"``, ``"vehicle"`` or ``"all"``. A query is rewritten for its routed
        category (``"pedestrian"``/``"vehicle"``: for that one) before it is encoded."""
        from ..retrieval.search import search_routed, search_targets

        check_k(k)
        self._check_category(category)
        if isinstance(queries, str):
            raise TrafficRetrievalError("search_batch takes a list of queries (use search for one)")
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise TrafficRetrievalError(f"a query must be a non-empty string, got {query!r}")
        if not queries:
            return []
        queries = list(queries)
        encoded = self._queries.encode(queries, None if category in (None, ALL) else [category] * len(queries))
        targets = (search_targets(encoded.categories, self._gallery.categories(), self._queries.config.gallery_scope) if category is None
                   else [category] * len(queries))
        hits = search_routed(self._gallery, encoded.embeddings, targets, k)
        records = self._store.records({image_id for row in hits for image_id, _ in row})
        results = []
        for row in hits:
            found = [(records[image_id], score) for image_id, score in row if image_id in records]  # a row deleted by a build in progress is skipped
            results.append([SearchResult(rank, record.id, record.name, self._gallery_path(record), score, record.category, record.label)
                            for rank, (record, score) in enumerate(found, start=1)])
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
            "query_recipe": {key: getattr(self._queries.config, key) for key in ("text_form", "router", "gallery_scope")},
        }

    def _gallery_path(self, row) -> str:
        """The absolute path a row names: its relative path under the gallery root (a row
        naming anything else is a tampered index, refused)."""
        problem = check_relative_path(row.path)
        if problem:
            raise TrafficRetrievalError(f"{self.layout.meta_db}: image {row.id}: recorded path {shown(row.path)} {problem}")
        return os.path.join(self._images_root, row.path)

    def record(self, image_id: int) -> ImageRecord:
        """What the index holds about an image. ``path`` is where the row says the file is;
        the file to read or serve is ``image_path``'s, which is checked."""
        row = self._store.record(image_id)
        if row is None:
            raise TrafficRetrievalError(f"no image with id {image_id!r} in index {self.layout.root}")
        return ImageRecord(row.id, row.name, self._gallery_path(row), row.path, row.category, row.predicted_category, row.label, row.caption,
                           row.size, row.sha256, row.state)

    def image_path(self, image_id: int) -> Path:
        """The gallery file of an indexed image, the only path the server reads for an image
        id: its real path (links resolved) lies inside the gallery's real root, it has an
        image suffix, is a regular file, and its size and mtime are those recorded when it
        was encoded. Anything else is a one-line error (a tampered row, or a file changed,
        replaced or removed since it was indexed)."""
        from ..data.prepare import IMAGE_SUFFIXES
        from .scan import inside

        row = self._store.record(image_id)
        if row is None:
            raise TrafficRetrievalError(f"no image with id {image_id!r} in index {self.layout.root}")
        where = f"image {row.id}"
        if row.state != "indexed":
            raise TrafficRetrievalError(f"{where}: not indexed ({row.state})")
        self._gallery_path(row)
        if os.path.splitext(row.path)[1].lower() not in IMAGE_SUFFIXES:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        real_root = os.path.realpath(self._images_root)
        real = os.path.realpath(os.path.join(real_root, row.path))
        if not inside(real, real_root):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} leads outside the gallery {self._images_root}")
        try:
            found = os.stat(real)
        except FileNotFoundError:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is missing from the gallery") from None
        except OSError as exc:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} cannot be read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(found.st_mode):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is not a regular file")
        if (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} changed since it was indexed (run `traffic-retrieval index` again)")
        return Path(real)
