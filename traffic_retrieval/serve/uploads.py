"""Images uploaded as queries (``POST /api/search/image``): decoded by the one image
loader (``data.images.load_image``) within the limits every untrusted image gets.

Bounded the ways thumbnails are: the body is at most ``max_body_bytes`` (the request
guard), the format is read from the header and must be one an index accepts (JPEG,
PNG, BMP or WebP: no other decoder sees the bytes), the pixel count comes from the
header and is refused before decoding past ``max_pixels`` (and PIL's
``Image.MAX_IMAGE_PIXELS``), and at most ``max_decodes`` decode at once (a request
that waits past ``decode_wait_s`` gets a 503).
"""

from __future__ import annotations

import io
import threading

from ..data.images import load_image
from ..errors import TrafficRetrievalError, check_at_least

UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
MAX_UPLOAD_PIXELS = 25_000_000  # a query image is shrunk to the model's input (224 px): 5000 x 5000 is plenty


class UploadRejected(TrafficRetrievalError):
    """The upload is not an image this service decodes; ``status``: the HTTP answer (413 too large, 422 otherwise)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UploadsBusy(TrafficRetrievalError):
    """Every decoding slot stayed taken for the whole wait: a 503, not the image's fault."""


class _Upload(io.BytesIO):
    """The uploaded bytes, named in the loader's messages as what they are (never a path)."""

    def __str__(self) -> str:
        return "the uploaded image"


class UploadDecoder:
    def __init__(self, max_decodes: int = 2, decode_wait_s: float = 30.0, max_pixels: int = MAX_UPLOAD_PIXELS):
        check_at_least("max_decodes", max_decodes, 1)
        check_at_least("max_pixels", max_pixels, 1)
        self.max_decodes, self.decode_wait_s, self.max_pixels = max_decodes, decode_wait_s, max_pixels
        self._decodes = threading.BoundedSemaphore(max_decodes)

    @property
    def pixel_limit(self) -> int:
        from PIL import Image

        return min(self.max_pixels, Image.MAX_IMAGE_PIXELS or self.max_pixels)

    def check(self, data: bytes) -> tuple[str, int, int]:
        """(format, width, height) from the header; ``UploadRejected`` for anything else."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise UploadRejected(422, "image: the file is empty")
        try:
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as image:  # reads the header only
                found, (width, height) = image.format, image.size
        except Image.DecompressionBombError:  # PIL's own refusal, past twice its limit
            raise UploadRejected(413, f"image: over the limit of {self.pixel_limit} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            found, width, height = None, 0, 0
        except Exception:  # noqa: BLE001 - whatever a header makes a decoder raise: not an image we take
            found, width, height = None, 0, 0
        if found is None:
            raise UploadRejected(422, "image: not a JPEG, PNG, BMP or WebP image, or its header is damaged")
        if width * height > self.pixel_limit:
            raise UploadRejected(413, f"image: {width} x {height} pixels is over the limit of {self.pixel_limit} pixels")
        return found, width, height

    def decode(self, data: bytes):
        """The uploaded bytes as an RGB PIL image, or a one-line ``UploadRejected`` / ``UploadsBusy``."""
        self.check(data)
        if not self._decodes.acquire(timeout=self.decode_wait_s):
            raise UploadsBusy(f"image decoding is busy ({self.max_decodes} at once); try again shortly")
        try:
            return load_image(_Upload(data))
        except TrafficRetrievalError as exc:
            raise UploadRejected(413 if "too large" in str(exc) else 422, str(exc)) from None
        finally:
            self._decodes.release()
