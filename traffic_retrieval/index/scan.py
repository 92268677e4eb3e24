"""What is in the gallery folder now: every image file under it (recursively) with
its size and modification time, and the optional labels that name those files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.prepare import IMAGE_SUFFIXES
from ..errors import TrafficRetrievalError


@dataclass(frozen=True)
class GalleryFile:
    path: str  # relative to the gallery root, '/'-separated: the file's key in the index
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def scan_gallery(root: str | Path) -> list[GalleryFile]:
    """Every image file under ``root``, sorted by relative path (hidden files and folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise TrafficRetrievalError(f"{root}: gallery directory not found")
    files: list[GalleryFile] = []
    for directory, folders, names in os.walk(root, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        relative_dir = Path(directory).relative_to(root).as_posix()
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            try:
                stat = os.stat(os.path.join(directory, name))
            except OSError:
                continue  # vanished while walking, or a dangling link
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            files.append(GalleryFile(relative, stat.st_size, stat.st_mtime_ns))
    files.sort(key=lambda f: f.path)
    return files


@dataclass(frozen=True)
class ImageLabel:
    attr: str  # canonical ATTR: the relevance key ("white Audi." or 21 flags)
    text: str
    category: str


def read_labels(path: str | Path) -> tuple[dict[str, ImageLabel], list[str]]:
    """``IMAGE$ATTR$TEXT`` labels by image name, plus the one-line errors of skipped lines.

    Image names may omit the suffix (as in the real data): they are matched
    against file names with or without it (see ``label_for``).
    """
    from ..data.labels import read_label_file

    records, errors = read_label_file(path)
    return {r.image_name: ImageLabel(r.attr, r.text, r.category) for r in records}, [str(e) for e in errors]


def label_for(name: str, labels: dict[str, ImageLabel]) -> ImageLabel | None:
    return labels.get(name) or labels.get(os.path.splitext(name)[0])
