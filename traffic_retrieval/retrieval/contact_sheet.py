"""A contact sheet of ranked results: one row per query, its text on the left and its
top-k images in rank order, each outlined green (relevant) or red (not) when the
ground truth is given. ``predict --contact-sheet OUT.png`` writes one.

Geometry (pixels), so a sheet's size is known in advance (``sheet_size``):
cells are ``thumb + 2 * OUTLINE`` square with ``GAP`` between them; a row is a cell
plus ``RANK_HEIGHT`` for the rank line; the text column is ``TEXT_COLUMNS * thumb``
wide; a ``HEADER`` band on top holds the legend.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Collection, Sequence

from ..errors import TrafficRetrievalError

OUTLINE = 3
GAP = 6
MARGIN = 10
RANK_HEIGHT = 16
HEADER = 28
TEXT_COLUMNS = 3  # the query text column is this many thumbnails wide
GREEN = (0, 170, 0)
RED = (220, 0, 0)
NEUTRAL = (200, 200, 200)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)


def sheet_size(rows: int, columns: int, thumb: int) -> tuple[int, int]:
    """(width, height) of a sheet with ``rows`` queries and ``columns`` results per row."""
    cell = thumb + 2 * OUTLINE
    width = 2 * MARGIN + TEXT_COLUMNS * thumb + GAP + columns * cell + max(0, columns - 1) * GAP
    height = 2 * MARGIN + HEADER + rows * (cell + RANK_HEIGHT) + max(0, rows - 1) * GAP
    return width, height


def cell_origin(row: int, column: int, thumb: int) -> tuple[int, int]:
    """Top-left pixel of the outline of result ``column`` (0-based) in query row ``row``."""
    cell = thumb + 2 * OUTLINE
    return (MARGIN + TEXT_COLUMNS * thumb + GAP + column * (cell + GAP), MARGIN + HEADER + row * (cell + RANK_HEIGHT + GAP))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Lines of ``text`` that fit ``width`` pixels, at most ``max_lines`` (the last one ellipsised)."""
    average = max(1.0, draw.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    lines = textwrap.wrap(" ".join(text.split()) or "(empty query)", width=max(8, int(width / average)))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 1)] + "…"
    return lines


def render_contact_sheet(queries: Sequence[str], ranked_names: Sequence[Sequence[str]], gallery_dir: str | Path,
                         relevant: Sequence[Collection[str] | None] | None = None, thumb: int = 96, max_queries: int = 20):
    """The sheet as a PIL image (see ``make_contact_sheet``)."""
    from PIL import Image, ImageDraw, ImageOps

    from ..data.images import load_image

    if len(queries) != len(ranked_names):
        raise TrafficRetrievalError(f"contact sheet: {len(queries)} queries but {len(ranked_names)} result lists")
    if relevant is not None and len(relevant) != len(queries):
        raise TrafficRetrievalError(f"contact sheet: {len(queries)} queries but {len(relevant)} ground-truth entries")
    if thumb < 16:
        raise TrafficRetrievalError(f"contact sheet: thumb must be at least 16 pixels, got {thumb}")
    if max_queries < 1:
        raise TrafficRetrievalError(f"contact sheet: max_queries must be at least 1, got {max_queries}")
    gallery_dir = Path(gallery_dir)
    rows = min(len(queries), max_queries)
    columns = max((len(names) for names in ranked_names[:rows]), default=0)
    sheet = Image.new("RGB", sheet_size(rows, columns, thumb), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    text_font, small_font = _font(max(11, min(16, thumb // 7))), _font(11)

    legend = f"{rows} of {len(queries)} queries, top {columns}"
    legend += " · outline: green relevant, red not relevant" if relevant is not None else " · no ground truth"
    draw.text((MARGIN, MARGIN), legend, fill=MUTED, font=small_font)
    line_height = text_font.size + 3 if hasattr(text_font, "size") else 14
    cell = thumb + 2 * OUTLINE
    for row in range(rows):
        x0, y0 = cell_origin(row, 0, thumb)
        wanted = set(relevant[row]) if relevant is not None and relevant[row] is not None else None
        lines = _wrap(draw, queries[row], text_font, TEXT_COLUMNS * thumb - GAP, max(1, (cell + RANK_HEIGHT - 14) // line_height))
        for number, line in enumerate(lines):
            draw.text((MARGIN, y0 + number * line_height), line, fill=TEXT, font=text_font)
        if wanted is not None:
            found = sum(name in wanted for name in ranked_names[row])
            draw.text((MARGIN, y0 + cell + RANK_HEIGHT - 14), f"{found}/{len(ranked_names[row])} relevant ({len(wanted)} in all)", fill=MUTED, font=small_font)
        for column, name in enumerate(ranked_names[row]):
            x, y = cell_origin(row, column, thumb)
            color = NEUTRAL if wanted is None else GREEN if name in wanted else RED
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color)
            draw.rectangle((x + OUTLINE, y + OUTLINE, x + OUTLINE + thumb - 1, y + OUTLINE + thumb - 1), fill=(0, 0, 0))
            try:
                image = ImageOps.contain(load_image(gallery_dir / name), (thumb, thumb))
                sheet.paste(image, (x + OUTLINE + (thumb - image.width) // 2, y + OUTLINE + (thumb - image.height) // 2))
            except TrafficRetrievalError:
                draw.text((x + OUTLINE + 4, y + OUTLINE + thumb // 2 - 6), "missing", fill=(230, 230, 230), font=small_font)
            label = f"{column + 1}. {name}"
            while len(label) > 4 and draw.textlength(label, font=small_font) > cell:
                label = label[:-2] + "…"
            draw.text((x, y + cell + 2), label, fill=MUTED, font=small_font)
    return sheet


def make_contact_sheet(queries: Sequence[str], ranked_names: Sequence[Sequence[str]], gallery_dir: str | Path, out_png: str | Path,
                       relevant: Sequence[Collection[str] | None] | None = None, thumb: int = 96, max_queries: int = 20) -> Path:
    """Write a PNG of the first ``max_queries`` queries' ranked results.

    ``ranked_names[i]`` are the image names returned for ``queries[i]``, best first,
    found in ``gallery_dir``; ``relevant[i]``, when given, is the set of names
    relevant to query ``i`` (the ground truth), which outlines each result green or red.
    """
    from ..io import atomic_path

    sheet = render_contact_sheet(queries, ranked_names, gallery_dir, relevant, thumb, max_queries)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return out_png
