"""The index on disk: SQLite metadata, one row per gallery file, and embedding shards.

```
INDEX/
  index.json                  what the index is (checkpoint + identity, model, dim, counts,
                              FAISS files and their recall@10, the last build's config);
                              written last, it is the commit point of a build
  meta.sqlite                 table images (one row per gallery file), table meta (key/values)
  shards/shard_00000.npy      float16 [rows, dim] L2-normalised image embeddings
  shards/shard_00000.json     the shard's rows: id, path, checksum, size, mtime_ns, row or error
  faiss/<category>.<fingerprint>.index   one FAISS index per category, FAISS ids = image ids
  build_report.json           the last build's report (counts, unreadable images, timings)
```

A row goes ``pending`` (planned into a shard) -> ``indexed`` (its embedding is row
``row`` of shard ``shard``) or ``unreadable`` (``error`` says why). A shard is written
to a temporary file and renamed, its ``.json`` likewise, and only then are its rows
committed, in one SQLite transaction: a killed run leaves either a committed shard,
a written-but-uncommitted one (committed from its ``.json`` by the next run), or
nothing, and the next run encodes exactly the shards still pending.

Embeddings are stored as float16: half the disk of float32 and far below the
ranking's resolution (cosine similarities move by about 1e-3 at most); FAISS and
every reader work in float32.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from ..errors import TrafficRetrievalError
from ..io import atomic_path

INDEX_FORMAT = "traffic-retrieval-index/1"
SHARD_FORMAT = "traffic-retrieval-shard/1"
EMBEDDING_DTYPE = "float16"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a stale FAISS file never names another image
    path TEXT NOT NULL UNIQUE,             -- relative to the gallery root, '/'-separated
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,                           -- of the bytes that were encoded
    state TEXT NOT NULL CHECK (state IN ('pending', 'indexed', 'unreadable')),
    shard INTEGER NOT NULL,                -- planned shard (pending) or the shard holding the embedding
    row INTEGER,                           -- row in the shard (indexed)
    category TEXT,                         -- label_category when labelled, else predicted_category
    predicted_category TEXT,               -- gallery_categories' vote
    label TEXT,                            -- ATTR from --labels (the relevance key)
    caption TEXT,                          -- TEXT from --labels
    label_category TEXT,
    error TEXT                             -- why an unreadable image could not be read
);
CREATE INDEX IF NOT EXISTS images_by_shard ON images (shard);
CREATE INDEX IF NOT EXISTS images_by_state ON images (state, category);
CREATE INDEX IF NOT EXISTS images_by_name ON images (name);
"""

ROW_COLUMNS = ("id", "path", "name", "size", "mtime_ns", "sha256", "state", "shard", "row", "category",
               "predicted_category", "label", "caption", "label_category", "error")


@dataclass(frozen=True)
class StoredImage:
    id: int
    path: str
    name: str
    size: int
    mtime_ns: int
    sha256: str | None
    state: str
    shard: int
    row: int | None
    category: str | None
    predicted_category: str | None
    label: str | None
    caption: str | None
    label_category: str | None
    error: str | None


class StoredStat(NamedTuple):
    id: int
    size: int
    mtime_ns: int
    sha256: str | None
    state: str


class IndexLayout:
    """The paths of an index folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta_db = self.root / "meta.sqlite"
        self.shards = self.root / "shards"
        self.faiss = self.root / "faiss"
        self.index_json = self.root / "index.json"
        self.report = self.root / "build_report.json"
        self.lock = self.root / ".lock"

    def shard_embeddings(self, shard: int) -> Path:
        return self.shards / f"shard_{shard:05d}.npy"

    def shard_rows(self, shard: int) -> Path:
        return self.shards / f"shard_{shard:05d}.json"

    def read_index_json(self) -> dict:
        try:
            info = json.loads(self.index_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            hint = "an interrupted build: run `traffic-retrieval index` again to finish it" if self.meta_db.exists() else "run `traffic-retrieval index` first"
            raise TrafficRetrievalError(f"{self.root}: not an index (no index.json; {hint})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise TrafficRetrievalError(f"{self.index_json}: cannot read ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
            raise TrafficRetrievalError(f"{self.index_json}: not a traffic-retrieval index (format {info.get('format') if isinstance(info, dict) else None!r})")
        return info


@contextmanager
def index_lock(layout: IndexLayout) -> Iterator[None]:
    """One writer per index: a second ``index`` run on the same folder is refused, not interleaved."""
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrafficRetrievalError(f"{layout.root}: another `index` run is updating this index") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class IndexStore:
    """The SQLite metadata of an index. Writes happen on one process (rank 0)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise TrafficRetrievalError(f"{self.path}: index metadata not found")
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                # WAL: a Retriever can read while a build writes; a killed writer loses only its open transaction
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM images").fetchone()
        except sqlite3.DatabaseError as exc:
            raise TrafficRetrievalError(f"{self.path}: not an index database ({exc})") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- key/values ----------------------------------------------------------------
    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value, db: sqlite3.Connection | None = None) -> None:
        (db or self.db).execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- rows ----------------------------------------------------------------------
    def _rows(self, where: str = "", params: tuple = ()) -> Iterator[StoredImage]:
        for values in self.db.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM images {where}", params):
            yield StoredImage(*values)

    def stats_by_path(self) -> dict[str, "StoredStat"]:
        """What planning needs of every row (lighter than ``StoredImage`` for millions of rows)."""
        return {values[0]: StoredStat(*values[1:]) for values in self.db.execute("SELECT path, id, size, mtime_ns, sha256, state FROM images")}

    def record(self, image_id: int) -> StoredImage | None:
        return next(self._rows("WHERE id = ?", (int(image_id),)), None)

    def records(self, image_ids: Iterable[int]) -> dict[int, StoredImage]:
        ids = [int(i) for i in image_ids]
        found: dict[int, StoredImage] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found.update((row.id, row) for row in self._rows(f"WHERE id IN ({', '.join('?' * len(chunk))})", tuple(chunk)))
        return found

    def unreadable(self) -> list[StoredImage]:
        return list(self._rows("WHERE state = 'unreadable' ORDER BY path"))

    def pending_shards(self) -> list[tuple[int, list[tuple[int, str]]]]:
        """The shards still to encode, each with its ``(id, path)`` rows in id order."""
        shards: dict[int, list[tuple[int, str]]] = {}
        for image_id, path, shard in self.db.execute("SELECT id, path, shard FROM images WHERE state = 'pending' ORDER BY shard, id"):
            shards.setdefault(shard, []).append((image_id, path))
        return list(shards.items())

    def indexed_locations(self, where: str = "", params: tuple = ()) -> list[tuple[int, int, int]]:
        """``(id, shard, row)`` of indexed images in id order (``where`` adds ``AND ...``)."""
        return list(self.db.execute(f"SELECT id, shard, row FROM images WHERE state = 'indexed' {where} ORDER BY id", params))

    def category_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT coalesce(category, '?'), count(*) FROM images WHERE state = 'indexed' GROUP BY 1 ORDER BY 1"))

    def state_counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT state, count(*) FROM images GROUP BY state"))
        return {state: counts.get(state, 0) for state in ("indexed", "pending", "unreadable")}

    def referenced_shards(self) -> set[int]:
        return {shard for (shard,) in self.db.execute("SELECT DISTINCT shard FROM images")}

    # -- writes --------------------------------------------------------------------
    def apply_plan(self, plan, shard_size: int) -> int:
        """Apply a ``GalleryPlan`` in one transaction; files to encode go to new shards
        of ``shard_size`` in path order (ids of new files follow that order too).
        Returns the number of shards planned."""
        to_encode = sorted([(f.path, image_id, f) for image_id, f in plan.reencode] + [(f.path, None, f) for f in plan.new], key=lambda item: item[0])
        with self.transaction() as db:
            first_shard = self.meta("next_shard", 0)
            db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in plan.deleted])
            db.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", [(size, mtime_ns, i) for i, size, mtime_ns in plan.restat])
            for position, (path, image_id, gallery_file) in enumerate(to_encode):
                shard = first_shard + position // shard_size
                if image_id is None:
                    db.execute("INSERT INTO images (path, name, size, mtime_ns, state, shard) VALUES (?, ?, ?, ?, 'pending', ?)",
                               (path, gallery_file.name, gallery_file.size, gallery_file.mtime_ns, shard))
                else:
                    db.execute("UPDATE images SET size = ?, mtime_ns = ?, sha256 = NULL, state = 'pending', shard = ?, row = NULL, "
                               "predicted_category = NULL, category = label_category, error = NULL WHERE id = ?",
                               (gallery_file.size, gallery_file.mtime_ns, shard, image_id))
            planned = -(-len(to_encode) // shard_size)
            self.set_meta("next_shard", first_shard + planned, db)
        return planned

    def commit_shard(self, shard: int, rows: list[dict]) -> int:
        """Mark a written shard's rows indexed (or unreadable), in one transaction.
        Rows re-planned meanwhile (their file changed) are left alone."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE images SET state = ?, row = ?, sha256 = ?, size = ?, mtime_ns = ?, error = ? WHERE id = ? AND shard = ? AND state = 'pending'",
                [("indexed" if r["row"] is not None else "unreadable", r["row"], r["sha256"], r["size"], r["mtime_ns"], r["error"], r["id"], shard) for r in rows],
            )
            return db.total_changes - before

    def set_predicted_categories(self, pairs: list[tuple[int, str]]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE images SET predicted_category = ?, category = coalesce(label_category, ?) WHERE id = ?", [(c, c, i) for i, c in pairs])

    def set_labels(self, labels_by_id: dict[int, object]) -> None:
        """Replace every row's label with ``labels_by_id`` (``ImageLabel`` values); the
        label's category becomes the row's category (truth beats the model's vote)."""
        with self.transaction() as db:
            db.execute("UPDATE images SET label = NULL, caption = NULL, label_category = NULL, category = predicted_category")
            db.executemany("UPDATE images SET label = ?, caption = ?, label_category = ?, category = ? WHERE id = ?",
                           [(lab.attr, lab.text, lab.category, lab.category, i) for i, lab in labels_by_id.items()])


# -- shard files ---------------------------------------------------------------------

def write_shard(layout: IndexLayout, shard: int, embeddings, rows: list[dict], identity: str) -> None:
    """Write a shard's embeddings and rows, each to a temporary file renamed into place
    (data flushed to disk first), embeddings before rows: the ``.json`` marks a complete shard."""
    import numpy as np

    embeddings = np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE)
    with atomic_path(layout.shard_embeddings(shard)) as tmp, tmp.open("wb") as handle:
        np.save(handle, embeddings)
        handle.flush()
        os.fsync(handle.fileno())
    document = {"format": SHARD_FORMAT, "shard": shard, "identity": identity, "dim": int(embeddings.shape[1]), "dtype": EMBEDDING_DTYPE, "rows": rows}
    with atomic_path(layout.shard_rows(shard)) as tmp, tmp.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())


def read_shard_rows(layout: IndexLayout, shard: int) -> dict | None:
    """The ``.json`` of a complete shard, or None when the shard is missing or incomplete."""
    import numpy as np

    try:
        document = json.loads(layout.shard_rows(shard).read_text(encoding="utf-8"))
        shape = np.load(layout.shard_embeddings(shard), mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != SHARD_FORMAT:
        return None
    if shape[0] != sum(1 for r in document["rows"] if r["row"] is not None):
        return None
    return document


def shard_files_on_disk(layout: IndexLayout) -> tuple[dict[int, list[Path]], list[Path]]:
    """Shard files by shard number, and leftover temporary files of killed writes."""
    by_shard: dict[int, list[Path]] = {}
    leftovers: list[Path] = []
    if layout.shards.is_dir():
        for path in layout.shards.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                leftovers.append(path)
            elif path.name.startswith("shard_") and path.suffix in (".npy", ".json"):
                try:
                    by_shard.setdefault(int(path.stem[len("shard_"):]), []).append(path)
                except ValueError:
                    pass
    return by_shard, leftovers


class ShardReader:
    """Gathers embeddings by ``(shard, row)`` from memory-mapped shards, as float32."""

    def __init__(self, layout: IndexLayout, dim: int | None = None):
        self.layout = layout
        self.dim = dim
        self._open: dict[int, object] = {}

    def _shard(self, shard: int):
        import numpy as np

        if shard not in self._open:
            if len(self._open) >= 64:
                self._open.pop(next(iter(self._open)))
            self._open[shard] = np.load(self.layout.shard_embeddings(shard), mmap_mode="r")
        return self._open[shard]

    def gather(self, locations: list[tuple[int, int]]):
        """Embeddings ``[len(locations), dim]`` for ``(shard, row)`` pairs, in the given order."""
        import numpy as np

        if not locations:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        shards = np.fromiter((s for s, _ in locations), dtype=np.int64, count=len(locations))
        rows = np.fromiter((r for _, r in locations), dtype=np.int64, count=len(locations))
        out = None
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            block = self._shard(int(shard))[rows[positions]]
            if out is None:
                out = np.empty((len(locations), block.shape[1]), dtype=np.float32)
            out[positions] = block
        return out
