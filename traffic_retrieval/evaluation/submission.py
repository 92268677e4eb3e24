"""Submission JSON and ground-truth files: reading, validating, writing.

Submission: ``{"results": [{"text": T, "image_names": [names...]}, ...]}``, one
result per line of test_text.txt, in that order, texts exactly as in the file.
Ground truth (test_gt.txt): ``TEXT$IMG1$IMG2...``, one line per query in the same
order (UTF-8; a BOM and CRLF line ends are tolerated). Query texts repeat, so
results and ground-truth lines are matched by position, never by text.

Every problem is a one-line ``TrafficRetrievalError`` naming the file and the
result index (``results[i]``, 0-based) or the ground-truth line (1-based).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import TrafficRetrievalError, at
from ..io import read_input_bytes

GROUND_TRUTH_SEPARATOR = "$"
_SHOWN_TEXT_CHARS = 60


@dataclass(frozen=True)
class SubmissionResult:
    """One query's answer: its text and the ranked image names, best first."""

    text: str
    image_names: tuple[str, ...]


@dataclass(frozen=True)
class GroundTruthQuery:
    """One line of test_gt.txt: the query text and its relevant image names."""

    text: str
    relevant_names: frozenset[str]
    line_number: int


def _shorten(text: str, limit: int = _SHOWN_TEXT_CHARS) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters, for one-line messages."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _read_text(path: Path, what: str) -> str:
    try:
        return read_input_bytes(path, what).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrafficRetrievalError(f"{path}: not UTF-8 (byte {exc.start})") from None


def load_ground_truth(path: str | Path) -> list[GroundTruthQuery]:
    """Read test_gt.txt. Trailing blank lines are ignored; an inner blank line or an
    empty file is an error. A line without image names is a query with no relevant
    images (counted as a warning by the evaluation, not an error)."""
    path = Path(path)
    lines = _read_text(path, "ground-truth file").replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TrafficRetrievalError(f"{path}: ground-truth file is empty")
    queries = []
    for line_number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            raise TrafficRetrievalError(f"{at(path, line_number)}: empty line (expected TEXT$IMG1$IMG2...)")
        text, *names = line.split(GROUND_TRUTH_SEPARATOR)
        relevant = frozenset(map(str.strip, names))
        if "" in relevant:  # "TEXT$" or "$$": empty fields name nothing
            relevant = relevant - {""}
        queries.append(GroundTruthQuery(text, relevant, line_number))
    return queries


def list_gallery(gallery_dir: str | Path) -> frozenset[str]:
    """The file names (not paths) directly inside ``gallery_dir``."""
    gallery_dir = Path(gallery_dir)
    if not gallery_dir.is_dir():
        raise TrafficRetrievalError(f"{gallery_dir}: gallery directory not found")
    with os.scandir(gallery_dir) as entries:
        return frozenset(entry.name for entry in entries if entry.is_file())


def load_submission(path: str | Path) -> list[SubmissionResult]:
    """Read a submission JSON and check its structure (types, duplicate names).

    Checks against the ground truth and the gallery are ``check_submission``'s.
    """
    path = Path(path)
    raw = _read_text(path, "submission file")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TrafficRetrievalError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, a number too long to convert
        raise TrafficRetrievalError(f"{path}: not a usable JSON submission ({type(exc).__name__}: {str(exc).split(';')[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise TrafficRetrievalError(f'{path}: expected a JSON object with a "results" list')
    results = []
    for index, entry in enumerate(data["results"]):
        where = f"{path}: results[{index}]"
        if not isinstance(entry, dict):
            raise TrafficRetrievalError(f"{where}: expected an object, got {type(entry).__name__}")
        for key in ("text", "image_names"):
            if key not in entry:
                raise TrafficRetrievalError(f'{where}: missing "{key}"')
        text, names = entry["text"], entry["image_names"]
        if not isinstance(text, str):
            raise TrafficRetrievalError(f'{where}: "text" must be a string, got {type(text).__name__}')
        if not isinstance(names, list):
            raise TrafficRetrievalError(f'{where}: "image_names" must be a list, got {type(names).__name__}')
        if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
            _raise_for_bad_names(where, names)
        results.append(SubmissionResult(text, tuple(names)))
    return results


def _raise_for_bad_names(where: str, names: list) -> None:
    """Name the first non-string or repeated entry (the slow path of load_submission)."""
    seen: set[str] = set()
    for rank, name in enumerate(names):
        if not isinstance(name, str):
            raise TrafficRetrievalError(f'{where}: "image_names"[{rank}] must be a string, got {type(name).__name__}')
        if name in seen:
            raise TrafficRetrievalError(f"{where}: duplicate image name {name!r} at rank {rank + 1}")
        seen.add(name)


def check_submission(
    results: Sequence[SubmissionResult],
    ground_truth: Sequence[GroundTruthQuery],
    gallery_names: frozenset[str] | set[str],
    top_k: int,
    submission_path: str | Path,
    ground_truth_path: str | Path,
) -> None:
    """Check a loaded submission against the ground truth (count and texts, by
    position), the gallery (every name exists) and ``top_k`` (no longer lists)."""
    if len(results) != len(ground_truth):
        raise TrafficRetrievalError(
            f"{submission_path}: {len(results)} results but {ground_truth_path} has {len(ground_truth)} query lines"
        )
    for index, (result, query) in enumerate(zip(results, ground_truth)):
        where = f"{submission_path}: results[{index}]"
        if result.text != query.text:
            raise TrafficRetrievalError(
                f"{where}: text {_shorten(result.text)} differs from "
                f"{at(ground_truth_path, query.line_number)} text {_shorten(query.text)}"
            )
        if len(result.image_names) > top_k:
            raise TrafficRetrievalError(f"{where}: {len(result.image_names)} image names, at most {top_k} allowed")
        if gallery_names.issuperset(result.image_names):
            continue
        for rank, name in enumerate(result.image_names, start=1):
            if name not in gallery_names:
                raise TrafficRetrievalError(f"{where}: image name {name!r} at rank {rank} is not in the gallery")


def _as_json_entry(result: SubmissionResult | Mapping) -> dict:
    if isinstance(result, Mapping):
        text, names = result["text"], result["image_names"]
    else:
        text, names = result.text, result.image_names
    return {"text": str(text), "image_names": [str(name) for name in names]}


def write_submission(path: str | Path, results: Iterable[SubmissionResult | Mapping]) -> Path:
    """Write a submission JSON atomically, one result object per line.

    The file is written to a temporary file in the same directory and moved into
    place with ``os.replace``, so a reader never sees half a submission.
    ``results`` holds ``SubmissionResult``s or mappings with "text" and "image_names".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_as_json_entry(result), ensure_ascii=False) for result in results]
    body = '{"results": [\n' + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; keep the replaced file's mode, else the usual 0644
        # (reading the umask would mean setting it, which races with other threads).
        os.chmod(temp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return path
