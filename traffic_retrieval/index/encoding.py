"""How an index encodes its gallery, fixed for the index's life.

Two settings of the query recipe change the embeddings themselves, not only how they
are ranked: ``gallery_bn`` (the image tower's BatchNorm statistics, ``batchnorm.py``) and
``image_tta`` (each image encoded as the mean of it and its mirror,
``retrieval.encode.encode_uint8_images``). A new index takes the one asked for, else the
checkpoint's recorded recipe's, else ``none``; an index that holds embeddings keeps its
own (asking for another is refused in one line: its shards would mix two embedding
spaces). The index's metadata and index.json record both; every later update, every
torchrun rank and every ``Retriever`` encode with them (``retriever.index_encoding``).
"""

from __future__ import annotations

from ..errors import TrafficRetrievalError

IMAGE_TTA_KEY = "image_tta"  # IndexStore meta: "none" | "flip"


def resolve_setting(key: str, asked: str | None, loaded) -> str:
    """A new index's ``key``: the one asked for, else the checkpoint's recorded recipe's, else none."""
    from ..retrieval.queries import QueryConfig, resolve_query_config

    return getattr(resolve_query_config(QueryConfig(**{key: asked}), getattr(loaded, "checkpoint", None)), key)


def fixed_setting(store, root, key: str, asked: str | None, recorded: str, loaded) -> str:
    """The setting the build encodes with: an index holding embeddings keeps ``recorded``
    (``asked`` None: it; another one is refused), a new one resolves ``asked``."""
    if store.state_counts().get("indexed", 0) == 0:
        return resolve_setting(key, asked, loaded)
    setting = recorded if asked is None else asked
    if setting != recorded:
        raise TrafficRetrievalError(f"{root}: this index was encoded with {key} {recorded}, the build asks for {setting}: its embeddings "
                                    f"would mix two spaces; build into a new --out (or leave {key} unset)")
    return setting


def prepare_image_tta(store, root, asked: str | None, loaded) -> str:
    """(Rank 0, before encoding.) The index's ``image_tta``, recorded in its metadata (an
    index from before it existed: ``none``)."""
    from ..retrieval.adapt import IMAGE_TTAS

    recorded = store.meta(IMAGE_TTA_KEY)
    setting = fixed_setting(store, root, IMAGE_TTA_KEY, asked, recorded if recorded in IMAGE_TTAS else "none", loaded)
    store.set_meta(IMAGE_TTA_KEY, setting)
    return setting
