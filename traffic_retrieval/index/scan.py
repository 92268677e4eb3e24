"""What is in the gallery folder now: every image file under it (recursively) with
its size and modification time, and the optional labels that name those files.

Only regular files are indexed: a FIFO, a device or a socket named like an image (or a
link to one, such as ``x.jpg -> /dev/zero``) would make the checksum read forever. A
symbolic link is followed only when it leads to a regular file whose real path lies
inside the gallery's real root; links out of the gallery, dangling links and links to
folders (never walked: no loops, no second copy of a folder) are skipped. Every skipped
entry is counted in the build report, never silently dropped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..data.prepare import IMAGE_SUFFIXES
from ..errors import TrafficRetrievalError

SKIPPED_KINDS = ("not_regular", "outside_gallery", "linked_folders")  # the build report's ``skipped`` counts


@dataclass(frozen=True)
class GalleryFile:
    path: str  # relative to the gallery root, '/'-separated: the file's key in the index
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class GalleryScan:
    files: list[GalleryFile]  # sorted by path
    skipped: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in SKIPPED_KINDS})  # kind -> "path: why"

    def counts(self) -> dict[str, int]:
        return {kind: len(entries) for kind, entries in self.skipped.items()}


def inside(path: str, root: str) -> bool:
    """``path`` lies strictly inside ``root`` (both real, absolute paths)."""
    return path != root and os.path.commonpath([path, root]) == root


_KINDS_OF_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                   (stat.S_ISDIR, "a folder"))


def _kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS_OF_FILES if test(mode)), "not a regular file")


def scan_gallery_entries(root: str | Path) -> GalleryScan:
    """Every indexable image file under ``root``, sorted by relative path, and the entries
    skipped (module docstring); hidden files and folders are left out."""
    root = Path(root)
    if not root.is_dir():
        raise TrafficRetrievalError(f"{root}: gallery directory not found")
    real_root = os.path.realpath(root)
    scan = GalleryScan([])
    for directory, folders, names in os.walk(root, followlinks=False):
        relative_dir = Path(directory).relative_to(root).as_posix()

        def relative(name: str) -> str:
            return name if relative_dir == "." else f"{relative_dir}/{name}"

        visible = sorted(f for f in folders if not f.startswith("."))
        linked = {f for f in visible if os.path.islink(os.path.join(directory, f))}
        folders[:] = [f for f in visible if f not in linked]
        scan.skipped["linked_folders"] += [f"{relative(name)}: a symbolic link to a folder (not followed)" for name in visible if name in linked]
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):  # else: vanished while walking
                    scan.skipped["not_regular"].append(f"{relative(name)}: cannot read ({exc.strerror or exc})")
                continue
            is_link = stat.S_ISLNK(info.st_mode)
            if is_link:
                try:
                    info = os.stat(path)  # the link's target
                except OSError as exc:
                    reason = "a symbolic link to nothing" if isinstance(exc, FileNotFoundError) else f"cannot follow the link ({exc.strerror or exc})"
                    scan.skipped["not_regular"].append(f"{relative(name)}: {reason}")
                    continue
            if not stat.S_ISREG(info.st_mode):
                scan.skipped["not_regular"].append(f"{relative(name)}: {'a symbolic link to ' if is_link else ''}{_kind_of(info.st_mode)}, not a regular file")
                continue
            if is_link and not inside(os.path.realpath(path), real_root):
                scan.skipped["outside_gallery"].append(f"{relative(name)}: a symbolic link out of the gallery")
                continue
            scan.files.append(GalleryFile(relative(name), info.st_size, info.st_mtime_ns))
    scan.files.sort(key=lambda f: f.path)
    return scan


def scan_gallery(root: str | Path) -> list[GalleryFile]:
    """Every indexable image file under ``root``, sorted by relative path (``scan_gallery_entries``)."""
    return scan_gallery_entries(root).files


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
