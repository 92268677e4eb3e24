"""Parsing the challenge's label files (``IMAGE$ATTR$TEXT``, one image per line).

One parser for every label file the tool reads. A bad line raises
``LabelError`` naming the file and line; callers either stop (``--strict``) or
skip the line and count it in their report. A label file may come from someone
else: lines are read with a bounded length (a longer one is skipped as "line too
long" without being held), and values echoed in errors are shortened.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import TrafficRetrievalError, at
from .schema import NUM_PEDESTRIAN_FLAGS, PEDESTRIAN, VEHICLE, VEHICLE_TYPES
from .vocabulary import parse_vehicle_attr, strip_vehicle_attr


MAX_LINE_BYTES = 64 * 1024  # a real line is a few hundred bytes; a longer one is skipped, not read
MAX_NAME_BYTES = 255  # no common file system has a longer file name (NAME_MAX)
ECHO_CHARS = 80  # the most of a value an error quotes


def quoted(value: str, limit: int = ECHO_CHARS) -> str:
    """``repr`` of ``value`` cut to ``limit`` characters plus "…" (control characters escaped, as by ``repr``)."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


class LabelError(TrafficRetrievalError):
    """A label line that cannot be used; ``reason`` is the message without the location."""

    def __init__(self, path, line_number: int | None, reason: str):
        self.path = str(path)
        self.line_number = line_number
        self.reason = reason
        super().__init__(f"{at(path, line_number)}: {reason}")


@dataclass(frozen=True)
class LabelRecord:
    image_name: str
    attr: str  # canonical ATTR: "0,1,..." for pedestrians, "white Audi." for vehicles
    text: str
    category: str
    source: str  # "path:line"
    augmented: str | None = None  # the 4th field of the seed's augmented label files (IMAGE$ATTR$TEXT$AUGMENTED), when read

    @property
    def pedestrian_flags(self) -> tuple[int, ...]:
        return tuple(int(flag) for flag in self.attr.split(",")) if self.category == PEDESTRIAN else ()


def canonical_attr(raw_attr: str, vehicle_types=VEHICLE_TYPES) -> tuple[str, str]:
    """Return ``(category, canonical ATTR)`` or raise ValueError with the reason.

    Pedestrian flags are normalised to ``0,1,...`` without spaces; vehicle ATTRs
    to single spaces and one final period, so ``white Audi`` equals ``white Audi.``.
    """
    attr = raw_attr.strip()
    if not attr:
        raise ValueError("empty ATTR field")
    items = [item.strip() for item in attr.split(",")]
    if len(items) > 1 or attr.isdigit():
        if not all(item.lstrip("-").isdigit() for item in items):
            raise ValueError(f"ATTR looks like pedestrian flags but has non-numeric items: {quoted(attr)}")
        if len(items) != NUM_PEDESTRIAN_FLAGS:
            raise ValueError(f"pedestrian ATTR must have {NUM_PEDESTRIAN_FLAGS} flags, found {len(items)}")
        bad = [item for item in items if item not in ("0", "1")]
        if bad:
            raise ValueError(f"pedestrian flags must be 0 or 1, found {quoted(bad[0])}")
        return PEDESTRIAN, ",".join(items)
    vehicle = strip_vehicle_attr(attr)
    if not vehicle:
        raise ValueError("empty ATTR field")
    fields = parse_vehicle_attr(vehicle, vehicle_types)
    if fields.color and not (fields.brand or fields.type):
        raise ValueError(f"vehicle ATTR {quoted(attr)} has a color but no brand or type")
    return VEHICLE, vehicle + "."


def parse_label_line(line: str, path="<labels>", line_number: int | None = None, vehicle_types=VEHICLE_TYPES,
                     allow_augmented: bool = False) -> LabelRecord:
    """Parse one ``IMAGE$ATTR$TEXT`` line (without its line end); with ``allow_augmented``
    also the seed's ``IMAGE$ATTR$TEXT$AUGMENTED`` (the 4th field becomes ``augmented``)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        raise LabelError(path, line_number, "empty line")
    fields = line.split("$")
    augmented = None
    if allow_augmented and len(fields) == 4:
        augmented = " ".join(fields.pop().split())
        if not augmented:
            raise LabelError(path, line_number, "empty AUGMENTED field (the 4th, the seed's chosen caption)")
    if len(fields) != 3:
        expected = "3 '$'-separated fields IMAGE$ATTR$TEXT" + (" (or 4 with the seed's AUGMENTED)" if allow_augmented else "")
        raise LabelError(path, line_number, f"expected {expected}, found {len(line.split('$'))}")
    image_name, raw_attr, text = (field.strip() for field in fields)
    if not image_name:
        raise LabelError(path, line_number, "empty IMAGE field")
    if "/" in image_name or "\\" in image_name or image_name in (".", ".."):
        raise LabelError(path, line_number, f"image name {quoted(image_name)} must be a plain file name (no path separators)")
    if len(image_name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise LabelError(path, line_number, f"image name {quoted(image_name)} is longer than {MAX_NAME_BYTES} bytes (no file can have it)")
    if not text:
        raise LabelError(path, line_number, "empty TEXT field")
    try:
        category, attr = canonical_attr(raw_attr, vehicle_types)
    except ValueError as exc:
        raise LabelError(path, line_number, str(exc)) from None
    return LabelRecord(image_name, attr, " ".join(text.split()), category, at(path, line_number), augmented)


def decode_line(raw: bytes, path, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelError(path, line_number, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})") from None


def iter_label_lines(path: str | Path) -> Iterator[tuple[int, str | LabelError]]:
    """Stream ``(line_number, text)`` pairs from a label file without loading it whole.

    A UTF-8 BOM and CRLF line ends are accepted; a line that is not UTF-8, or longer
    than ``MAX_LINE_BYTES``, is yielded as a ``LabelError`` instead of its text so the
    caller can count it (the rest of a long line is skipped in bounded pieces, so a
    file without line ends is never held whole). Blank lines are skipped silently
    only at the very end of the file.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: label file not found") from None
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read label file ({exc.strerror})") from None
    pending_blank: list[int] = []
    line_number = 0
    with handle:
        while raw := handle.readline(MAX_LINE_BYTES + 2):  # + 2: room for the line end, so a line of exactly the limit fits
            line_number += 1
            too_long = not raw.endswith(b"\n") and len(raw) == MAX_LINE_BYTES + 2
            while too_long and (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass  # the rest of the line, dropped piece by piece
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            raw = raw.rstrip(b"\r\n")
            too_long = too_long or len(raw) > MAX_LINE_BYTES
            if not too_long and not raw.strip():
                pending_blank.append(line_number)
                continue
            for blank in pending_blank:
                yield blank, LabelError(path, blank, "empty line")
            pending_blank.clear()
            if too_long:
                yield line_number, LabelError(path, line_number, f"line too long (over {MAX_LINE_BYTES} bytes; a label line is IMAGE$ATTR$TEXT)")
                continue
            try:
                yield line_number, decode_line(raw, path, line_number)
            except LabelError as exc:
                yield line_number, exc


def read_label_file(path: str | Path, strict: bool = False, vehicle_types=VEHICLE_TYPES,
                    allow_augmented: bool = False) -> tuple[list[LabelRecord], list[LabelError]]:
    """All records of a label file plus the errors of the lines that were skipped.

    With ``strict`` the first bad line raises instead. Duplicate image names are
    errors too (the second occurrence is skipped): relevance is per image.
    ``allow_augmented``: lines may carry the seed's 4th field (``parse_label_line``).
    """
    records: list[LabelRecord] = []
    errors: list[LabelError] = []
    first_line_of: dict[str, int] = {}
    for line_number, line in iter_label_lines(path):
        try:
            if isinstance(line, LabelError):
                raise line
            record = parse_label_line(line, path, line_number, vehicle_types, allow_augmented)
            if record.image_name in first_line_of:
                raise LabelError(path, line_number, f"duplicate image name {quoted(record.image_name)} (first on line {first_line_of[record.image_name]})")
        except LabelError as exc:
            if strict:
                raise
            errors.append(exc)
            continue
        first_line_of[record.image_name] = line_number
        records.append(record)
    return records, errors
