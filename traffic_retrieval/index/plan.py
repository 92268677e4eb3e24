"""What an incremental run must do: compare the files in the gallery now with the
rows of the index. A file whose size and mtime are unchanged is unchanged; one
whose size or mtime changed is checksummed, and re-encoded only when its bytes
changed. Deleted files are dropped. Rows still pending from an interrupted run keep
their planned shard, so a resumed run encodes exactly the shards an uninterrupted
one would have."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .scan import GalleryFile


@dataclass
class GalleryPlan:
    new: list[GalleryFile] = field(default_factory=list)
    reencode: list[tuple[int, GalleryFile]] = field(default_factory=list)  # (id, file): its bytes changed
    restat: list[tuple[int, int, int]] = field(default_factory=list)  # (id, size, mtime_ns): same bytes (or still pending)
    deleted: list[int] = field(default_factory=list)
    unchanged: int = 0
    resumed: int = 0  # rows left pending by an interrupted run

    def summary(self) -> dict:
        return {"new": len(self.new), "changed": len(self.reencode), "deleted": len(self.deleted), "unchanged": self.unchanged,
                "touched": len(self.restat), "resumed": self.resumed}


def plan_update(files: list[GalleryFile], stored: dict, root: Path, checksum: Callable[[Path], str]) -> GalleryPlan:
    """``stored`` maps relative path -> ``StoredStat``; ``checksum`` hashes a file."""
    plan = GalleryPlan()
    present = set()
    for gallery_file in files:
        present.add(gallery_file.path)
        row = stored.get(gallery_file.path)
        if row is None:
            plan.new.append(gallery_file)
            continue
        if row.state == "pending":
            plan.resumed += 1
            if (row.size, row.mtime_ns) != (gallery_file.size, gallery_file.mtime_ns):
                plan.restat.append((row.id, gallery_file.size, gallery_file.mtime_ns))
            continue
        if (row.size, row.mtime_ns) == (gallery_file.size, gallery_file.mtime_ns):
            plan.unchanged += 1
            continue
        try:
            same_bytes = row.sha256 is not None and checksum(root / gallery_file.path) == row.sha256
        except OSError:
            same_bytes = False
        if same_bytes:
            plan.restat.append((row.id, gallery_file.size, gallery_file.mtime_ns))
            plan.unchanged += 1
        else:
            plan.reencode.append((row.id, gallery_file))
    plan.deleted = sorted(row.id for path, row in stored.items() if path not in present)
    return plan
