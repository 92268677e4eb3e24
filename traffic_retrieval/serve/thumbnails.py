"""Thumbnails for the results grid: the one image loader, PIL's ``thumbnail``, JPEG,
kept in a bounded in-memory LRU cache.

The cache key includes the file's size and modification time, so a gallery file
replaced on disk (and re-indexed under the same id) gets a fresh thumbnail.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from ..data.images import load_image
from ..errors import TrafficRetrievalError


def make_thumbnail(path: str | Path, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of the image at ``path`` shrunk to fit ``size`` x ``size`` (never enlarged)."""
    from PIL import Image

    image = load_image(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


class ThumbnailCache:
    """At most ``max_entries`` thumbnails and ``max_bytes`` bytes, least recently used out first."""

    def __init__(self, size: int = 256, max_entries: int = 2048, max_bytes: int = 64 * 2**20):
        if size < 16:
            raise TrafficRetrievalError(f"thumbnail size must be at least 16 pixels, got {size}")
        self.size = size
        self.max_entries = max_entries
        self.max_bytes = max_bytes
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
        data = make_thumbnail(path, self.size)  # outside the lock: decoding is the slow part
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
                    "max_entries": self.max_entries, "max_bytes": self.max_bytes, "size": self.size}
