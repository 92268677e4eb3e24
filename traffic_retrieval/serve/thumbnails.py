"""Thumbnails for the results grid: JPEG, kept in a bounded in-memory LRU cache.

Decoding is what costs (a gallery may hold 90-megapixel photos, and the route runs
in up to 40 threads), so it is bounded three ways: at most ``max_decodes`` at once
(a semaphore; a request that waits too long gets a 503), and the one image loader
(``data.images.load_image``) refuses an image over PIL's ``Image.MAX_IMAGE_PIXELS``
from its header before decoding (an explicit, thread-safe width x height check) and
decodes a JPEG at a reduced scale (``Image.draft``, never below the thumbnail's size).

The cache key includes the file's size and modification time, so a gallery file
replaced on disk (and re-indexed under the same id) gets a fresh thumbnail.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from ..data.images import load_image
from ..errors import TrafficRetrievalError, check_at_least


class ThumbnailsBusy(TrafficRetrievalError):
    """Every decoding slot stayed taken for the whole wait: a 503, not the image's fault."""


def make_thumbnail(path: str | Path, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of the image at ``path`` shrunk to fit ``size`` x ``size`` (never enlarged)."""
    from PIL import Image

    image = load_image(path, draft_size=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


class ThumbnailCache:
    """At most ``max_entries`` thumbnails and ``max_bytes`` bytes, least recently used out first;
    at most ``max_decodes`` decodes at once, each waiting at most ``decode_wait_s`` for its turn."""

    def __init__(self, size: int = 256, max_entries: int = 2048, max_bytes: int = 64 * 2**20, max_decodes: int = 2,
                 decode_wait_s: float = 30.0):
        check_at_least("thumbnail size", size, 16)
        check_at_least("max_decodes", max_decodes, 1)
        self.size, self.max_entries, self.max_bytes = size, max_entries, max_bytes  # the cache's bounds
        self.max_decodes, self.decode_wait_s = max_decodes, decode_wait_s  # the decoding slots'
        self._decodes = threading.BoundedSemaphore(max_decodes)
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, image_id: int, path: str | Path) -> bytes:
        """The thumbnail of image ``image_id`` stored at ``path`` (a path from the index, never from a client)."""
        try:
            stat = Path(path).stat()
        except FileNotFoundError:
            raise TrafficRetrievalError(f"image {image_id}: file missing from the gallery") from None
        key = (image_id, str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return data
            self.misses += 1
        if not self._decodes.acquire(timeout=self.decode_wait_s):
            raise ThumbnailsBusy(f"thumbnails are busy ({self.max_decodes} being made); try again shortly")
        try:
            data = make_thumbnail(path, self.size)  # outside the lock: decoding is the slow part
        finally:
            self._decodes.release()
        with self._lock:
            if key not in self._entries and self.max_entries > 0 and len(data) <= self.max_bytes:
                self._entries[key] = data
                self._bytes += len(data)
                while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._bytes -= len(evicted)
        return data

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses,
                    "max_entries": self.max_entries, "max_bytes": self.max_bytes, "size": self.size, "max_decodes": self.max_decodes}
