"""The persistent gallery index: build it once, update it incrementally, search it.

- ``build.py``: ``build_index(images, checkpoint, out, ...)``, in one process or
  under torchrun (``runtime.init_distributed``);
- ``scan.py``, ``plan.py``: what is in the gallery and what a run must encode;
- ``shards.py``: encoding planned shards through the one image loader;
- ``store.py``: SQLite metadata (its schema version and migrations; the only SQL) and
  ``.npy`` embedding shards (the on-disk layout);
- ``faiss_index.py``: exact / HNSW / IVF indexes, tuned and measured for recall;
- ``faiss_search.py``: those per-category indexes as a ``retrieval.search.GallerySearch``;
- ``info.py``: index.json checked field by field (an index may come from someone else);
- ``retriever.py``: ``Retriever.open(INDEX).search(text)``, the documented search API, and
  ``image_path(id)``, the checked gallery file the server serves;
- ``gallery.py``: an index read back as a gallery (embeddings, names, categories).

The ``index`` and ``search`` commands are ``commands/index.py`` and ``commands/search.py``.
``from traffic_retrieval.index import Retriever`` works without importing torch or
FAISS until they are used.
"""

_EXPORTS = {
    "build_index": "build", "AnnConfig": "faiss_index",
    "Retriever": "retriever", "SearchResult": "retriever", "ImageRecord": "retriever",
    "IndexedGallery": "gallery", "read_indexed_gallery": "gallery",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
