"""Combined queries: texts and images added and subtracted with weights
(``docs/queries.md``), parsed by a small hand-written tokenizer and parser, and the
vector arithmetic that turns their embeddings into one query.

```python
from traffic_retrieval.retrieval.compose import parse_expression, combine

terms = parse_expression('0.5*"red car" + 2*#123 - "truck"')
# [Term(kind='text', value='red car', weight=0.5, column=1), Term('id', 123, 2.0, 17), Term('text', 'truck', -1.0, 24)]
query = combine(embeddings_of(terms), [t.weight for t in terms])  # weighted sum of L2-normalised vectors, re-normalised
```

The syntax: ``[W*]TERM`` terms joined by ``+`` or ``-`` (the first may have a sign too);
a TERM is ``"text"`` (or ``'text'``; ``\\"``, ``\\'`` and ``\\\\`` escape), ``#ID`` (an
indexed image by its id) or a bare token ending in an image suffix (an image file
path, no spaces). ``W`` is a positive number (``0.5``, ``2``, ``1e-1``) at most
``MAX_WEIGHT``. Every problem is one ``TrafficRetrievalError`` line naming the column
(1-based) where it is. Which terms a caller accepts is its own choice: the server
refuses file paths (``allow_paths=False``).

This module also turns a PIL image into the model's uint8 input (``image_uint8``):
the pixels ``data.images`` gives a gallery file, so an image query matches its
gallery copy.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ..data.prepare import IMAGE_SUFFIXES
from ..errors import TrafficRetrievalError, printable

MAX_TERMS = 8
MAX_EXPRESSION_CHARS = 4000
MAX_WEIGHT = 100.0
MAX_IMAGE_ID = 2**63 - 1  # SQLite's integer range
CANCELLED = 1e-3  # a weighted sum shorter than this times the total weight: the terms cancel out (what is left is rounding)

TEXT, IMAGE_ID, IMAGE_PATH = "text", "id", "path"

_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_DIGITS = re.compile(r"\d+")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'"}
_SPACE = " \t\r\n"
_WEIGHT_FIRST = 'a weight goes before * (2*"red car")'


@dataclass(frozen=True)
class Term:
    kind: str  # "text", "id" (an indexed image) or "path" (an image file)
    value: str | int  # the text, the id, or the path
    weight: float  # signed: a term after "-" has a negative weight
    column: int  # where the term (its sign or weight) starts, 1-based

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "number", "star", TEXT, IMAGE_ID, IMAGE_PATH
    value: object
    column: int


def _error(column: int, message: str) -> TrafficRetrievalError:
    return TrafficRetrievalError(f"combined query, column {column}: {message}")


def _shown(text: str) -> str:
    return repr(printable(text, 40))


def _quoted(expression: str, start: int) -> tuple[str, int]:
    """The text of the quoted string opening at ``start``, and the position after its closing quote."""
    quote, i, text = expression[start], start + 1, []
    while i < len(expression):
        char = expression[i]
        if char == quote:
            return "".join(text), i + 1
        if char == "\\":
            if i + 1 >= len(expression) or expression[i + 1] not in _ESCAPES:
                shown = _shown(expression[i:i + 2])
                raise _error(i + 1, f"unknown escape {shown} in a text (only \\\" \\' and \\\\ escape)")
            text.append(_ESCAPES[expression[i + 1]])
            i += 2
            continue
        text.append(char)
        i += 1
    raise _error(start + 1, f"the text opened by {quote} here is never closed")


def tokenize(expression: str):
    """The tokens of ``expression``, one at a time (so the parser reports the first problem from the left)."""
    i, n = 0, len(expression)
    while i < n:
        char, column = expression[i], i + 1
        if char in _SPACE:
            i += 1
        elif char in "+-":
            yield _Token("op", char, column)
            i += 1
        elif char == "*":
            yield _Token("star", char, column)
            i += 1
        elif char in "\"'":
            text, i = _quoted(expression, i)
            yield _Token(TEXT, text, column)
        elif char == "#":
            digits = _DIGITS.match(expression, i + 1)
            end = digits.end() if digits else i + 1
            if not digits or (end < n and expression[end] not in _SPACE + "+-"):
                word = expression[i:end + 1] if end < n else expression[i:end]
                raise _error(column, f"{_shown(word)}: an indexed image is # and its id, e.g. #123")
            image_id = int(digits.group())
            if image_id > MAX_IMAGE_ID:
                raise _error(column, f"image id {printable(digits.group(), 30)} is out of range")
            yield _Token(IMAGE_ID, image_id, column)
            i = end
        else:
            number = _NUMBER.match(expression, i)
            if number:  # a weight when a * follows (spaces allowed), else the start of a path such as 0001.jpg
                after = number.end()
                while after < n and expression[after] in _SPACE:
                    after += 1
                if after < n and expression[after] == "*":
                    yield _Token("number", number.group(), column)
                    i = number.end()
                    continue
            end = i
            while end < n and expression[end] not in _SPACE:
                end += 1
            word = expression[i:end]
            if not word.lower().endswith(IMAGE_SUFFIXES):
                raise _error(column, f"{_shown(word)} is not a term: quote texts (\"red car\"); an image is #ID or a file path ending in "
                                     f"{', '.join(IMAGE_SUFFIXES)} (no spaces)")
            yield _Token(IMAGE_PATH, word, column)
            i = end


def _weight(token: _Token) -> float:
    weight = float(token.value)
    if not math.isfinite(weight):
        raise _error(token.column, f"weight {printable(token.value, 30)} is not a finite number")
    if weight <= 0:
        raise _error(token.column, f"weight {printable(token.value, 30)} must be above 0 (to subtract a term, write - before it)")
    if weight > MAX_WEIGHT:
        raise _error(token.column, f"weight {printable(token.value, 30)} is over {MAX_WEIGHT:g}")
    return weight


def parse_expression(expression: str, allow_paths: bool = True, max_terms: int = MAX_TERMS,
                     max_chars: int = MAX_EXPRESSION_CHARS) -> list[Term]:
    """The terms of a combined query, in order; a one-line error naming the column of the
    first problem. ``allow_paths=False``: image file paths are refused (clients of a server)."""
    if not isinstance(expression, str):
        raise TrafficRetrievalError(f"a combined query is a string, got {type(expression).__name__}")
    if len(expression) > max_chars:
        raise _error(max_chars + 1, f"the expression is longer than {max_chars} characters")
    if not expression.strip():
        raise TrafficRetrievalError("combined query: the expression is empty")
    tokens = tokenize(expression)
    end = len(expression.rstrip()) + 1  # the column just after the last character
    terms: list[Term] = []
    token = next(tokens, None)
    while token is not None:
        start, sign = token.column, 1.0
        if token.kind == "op":
            sign = -1.0 if token.value == "-" else 1.0
            token = next(tokens, None)
        elif token.kind == "star":
            raise _error(token.column, _WEIGHT_FIRST)
        elif terms:
            raise _error(token.column, "expected + or - between two terms")
        if len(terms) == max_terms:
            raise _error(start, f"more than {max_terms} terms")
        weight = 1.0
        if token is not None and token.kind == "number":  # the tokenizer makes a number only when a * follows
            weight = _weight(token)
            next(tokens)  # the *
            token = next(tokens, None)
        if token is None:
            raise _error(end, "a term is missing at the end")
        if token.kind in ("op", "star"):
            what = _WEIGHT_FIRST if token.kind == "star" else f"a term is missing before {token.value}"
            raise _error(token.column, what)
        if token.kind == TEXT and not token.value.strip():
            raise _error(token.column, "the text is empty")
        if token.kind == IMAGE_PATH and not allow_paths:
            raise _error(token.column, f"image file paths ({_shown(token.value)}) are not accepted here: use #ID for an indexed image, "
                                       "or upload the image")
        terms.append(Term(token.kind, token.value, sign * weight, start))
        token = next(tokens, None)
    if not any(term.weight > 0 for term in terms):
        raise _error(terms[0].column, "a combined query needs at least one term added (+), not only subtracted ones")
    return terms


def format_terms(terms: list[Term]) -> str:
    """The terms written back in the syntax (weights shown where not 1)."""
    parts = []
    for term in terms:
        value = (f"#{term.value}" if term.kind == IMAGE_ID else term.value if term.kind == IMAGE_PATH
                 else '"' + str(term.value).replace("\\", "\\\\").replace('"', '\\"') + '"')
        weight = abs(term.weight)
        written = value if weight == 1 else f"{weight:g}*{value}"
        parts.append(("- " if term.weight < 0 else "+ " if parts else "") + written)
    return " ".join(parts)


def combine(embeddings, weights: list[float]):
    """The weighted sum of the L2-normalised ``embeddings`` ([n, dim]), L2-normalised: a
    ``[dim]`` float tensor. A sum of (nearly) nothing, as ``"car" - "car"``, is a one-line error."""
    import torch

    vectors = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32).reshape(len(weights), -1), dim=1)
    scale = torch.tensor([float(w) for w in weights], dtype=torch.float32)
    total = (scale[:, None] * vectors).sum(dim=0)
    length = float(total.norm())
    if not math.isfinite(length) or length <= CANCELLED * float(scale.abs().sum()):
        raise TrafficRetrievalError("combined query: the terms cancel out (their weighted sum is zero); change a weight or a term")
    return total / length


# -- images as queries ---------------------------------------------------------------------
def rgb_image(image):
    """A PIL image as RGB, transparency over black (as ``data.images.load_image`` reads a file)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    return image.convert("RGB")


def image_uint8(image, preprocess):
    """A PIL image as the model's CHW uint8 input (``preprocess``: a ``PreprocessConfig``)."""
    import numpy as np
    import torch

    from ..data.images import to_square

    if image.size[0] < 1 or image.size[1] < 1:
        raise TrafficRetrievalError(f"an image query has no pixels ({image.size[0]} x {image.size[1]})")
    square = to_square(rgb_image(image), preprocess.size, preprocess.resize_mode, preprocess.fill_color, preprocess.interpolation)
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
