"""An index read back as a gallery: embeddings, names and categories in id order,
for code that ranks the whole gallery itself (``predict --index``, benchmarks)
instead of encoding the images again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TrafficRetrievalError


@dataclass
class IndexedGallery:
    ids: list[int]
    names: list[str]  # file names (what a submission lists)
    paths: list[Path]  # absolute image paths
    categories: list[str]  # pedestrian / vehicle: the label's when the index had labels, else the model's vote
    embeddings: object  # torch.FloatTensor [n, dim], L2-normalised (stored as float16)
    unreadable: list[str]  # one-line errors of the gallery files that could not be read
    info: dict  # index.json

    def exact_search(self, by_id: bool = False):
        """Exact search over these embeddings (``retrieval.search.ExactGallerySearch``), each
        image in its category; hits are row positions in this gallery's lists, or
        (``by_id``) the index's image ids, as ``Retriever`` and ``FaissGallerySearch`` return."""
        from ..retrieval.search import ExactGallerySearch

        return ExactGallerySearch(self.embeddings, self.categories, list(self.ids) if by_id else None)


def read_indexed_gallery(index: str | Path, identity: str | None = None) -> IndexedGallery:
    """Every indexed image of ``index``; ``identity`` (``LoadedModel.identity``) must be
    the index's, since query and gallery embeddings must come from one model."""
    import torch

    from .info import check_relative_path, shown
    from .store import IndexLayout, IndexStore, ShardReader

    layout = IndexLayout(index)
    info = layout.read_index_json()
    if identity is not None and identity != info["identity"]:
        raise TrafficRetrievalError(f"{layout.root}: index built with another model (sha256 {info['identity'][:12]}, "
                                    f"this model {identity[:12]}): use the index's model ({info['checkpoint'] or info['model']})")
    with IndexStore(layout.meta_db, readonly=True) as store:
        images = store.indexed_images()
        unreadable = [row.error or row.path for row in store.unreadable()]
    for image in images:  # a row naming anything but a file under the gallery root is a tampered index
        problem = check_relative_path(image.path)
        if problem:
            raise TrafficRetrievalError(f"{layout.meta_db}: image {image.id}: recorded path {shown(image.path)} {problem}")
    root = Path(info["images"])
    embeddings = ShardReader(layout, info["dim"]).gather([(image.shard, image.row) for image in images])
    return IndexedGallery([image.id for image in images], [image.name for image in images], [root / image.path for image in images],
                          [image.category for image in images], torch.from_numpy(embeddings), unreadable, info)
