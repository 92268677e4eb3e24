"""The index on disk: SQLite metadata, one row per gallery file, and embedding shards.

```
INDEX/
  index.json                  what the index is (its model: checkpoint or open_clip model + weights,
                              and identity; dim, counts,
                              FAISS files and their recall@10, the last build's config);
                              written last, it is the commit point of a build
  meta.sqlite                 table images (one row per gallery file), table meta (key/values);
                              PRAGMA user_version: the schema version (``SCHEMA_VERSION``)
  shards/shard_00000.npy      float16 [rows, dim] L2-normalised image embeddings
  shards/shard_00000.json     the shard's rows: id, path, checksum, size, mtime_ns, row or error
  faiss/<category>.<fingerprint>.index   one FAISS index per category, FAISS ids = image ids
  build_report.json           the last build's report (counts, unreadable and skipped gallery entries, timings)
  .lock                       held by the one ``index`` run updating the index (``io.folder_lock``)
```

An index may come from someone else: index.json is checked field by field before use
(``info.py``), its parts must not be symbolic links (``IndexLayout.check_parts``: a
build deletes stale files in ``shards/`` and ``faiss/``), a database carrying triggers
or views is refused, and a row naming a shard row that does not exist is an error.

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
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from ..errors import TrafficRetrievalError
from ..io import Closeable, atomic_path

# index.json (independent of the SQLite schema version). Format 2 records the model as a
# ``source`` (a checkpoint, or an open_clip model and its weights: ``source.py``); format 1
# (checkpoint only) is still read, as a checkpoint source, and a build rewrites it as 2.
INDEX_FORMAT = "traffic-retrieval-index/2"
INDEX_FORMAT_V1 = "traffic-retrieval-index/1"
READABLE_INDEX_FORMATS = (INDEX_FORMAT, INDEX_FORMAT_V1)
SHARD_FORMAT = "traffic-retrieval-shard/1"
EMBEDDING_DTYPE = "float16"

# -- the SQLite schema and its versions ------------------------------------------------
# ``PRAGMA user_version`` holds the schema version. Version 1 is the schema of the
# indexes written before versions were recorded (user_version 0 with an ``images``
# table). A new database is created as version 1 and brought up to date by the same
# migrations an old one goes through, so both end with the same schema.

SCHEMA_V1 = (  # frozen: the schema indexes of format 1 were written with; change the schema by a migration
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS images (
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
)""",
    "CREATE INDEX IF NOT EXISTS images_by_shard ON images (shard)",
    "CREATE INDEX IF NOT EXISTS images_by_state ON images (state, category)",
    "CREATE INDEX IF NOT EXISTS images_by_name ON images (name)",
)


def migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Partial indexes for the two reads that scanned every indexed row: a category's
    images in id order (one FAISS index per category) and the indexed images the model
    has not categorised yet (after an incremental run: a few among millions)."""
    db.execute("CREATE INDEX images_indexed_by_category ON images (category, id) WHERE state = 'indexed'")
    db.execute("CREATE INDEX images_uncategorised ON images (id) WHERE state = 'indexed' AND predicted_category IS NULL")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: migrate_1_to_2}  # version -> the step to version + 1
SCHEMA_VERSION = max(MIGRATIONS) + 1

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
    """What planning needs of a row (lighter than ``StoredImage`` for millions of rows)."""

    id: int
    size: int
    mtime_ns: int
    sha256: str | None
    state: str


class IndexedImage(NamedTuple):
    """An indexed row: where its embedding is, and what readers of the whole gallery need."""

    id: int
    name: str
    path: str  # relative to the gallery root
    category: str | None
    shard: int
    row: int


class ExportedImage(NamedTuple):
    """An indexed row with what an export of the embeddings lists beside each vector."""

    id: int
    name: str
    path: str  # relative to the gallery root
    category: str | None
    label: str | None
    caption: str | None
    shard: int
    row: int


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

    def check_parts(self) -> None:
        """Refuse an index whose parts are symbolic links or not what they should be: a
        rebuild deletes stale files in ``shards/`` and ``faiss/`` (through a link: in the
        link's target), and SQLite writes through a linked ``meta.sqlite``."""
        parts = [(self.shards, True), (self.faiss, True)]
        parts += [(path, False) for path in (self.index_json, self.meta_db, self.root / "meta.sqlite-wal", self.root / "meta.sqlite-shm",
                                             self.report, self.lock)]
        for path, is_folder in parts:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise TrafficRetrievalError(f"{path}: cannot read ({exc.strerror or exc})") from None
            if stat.S_ISLNK(mode):
                raise TrafficRetrievalError(f"{path}: is a symbolic link; an index's files and folders must be its own "
                                            "(a build writes and deletes in them)")
            if is_folder and not stat.S_ISDIR(mode):
                raise TrafficRetrievalError(f"{path}: not a folder")
            if not is_folder and not stat.S_ISREG(mode):
                raise TrafficRetrievalError(f"{path}: not a regular file")

    def read_index_json(self) -> dict:
        """index.json, every field checked (``info.check_index_info``): an index may come from someone else."""
        from .info import MAX_INDEX_JSON_BYTES, check_index_info

        self.check_parts()
        try:
            with self.index_json.open("rb") as handle:
                data = handle.read(MAX_INDEX_JSON_BYTES + 1)
        except FileNotFoundError:
            hint = "an interrupted build: run `traffic-retrieval index` again to finish it" if self.meta_db.exists() else "run `traffic-retrieval index` first"
            raise TrafficRetrievalError(f"{self.root}: not an index (no index.json; {hint})") from None
        except OSError as exc:
            raise TrafficRetrievalError(f"{self.index_json}: cannot read ({exc.strerror or exc})") from None
        if len(data) > MAX_INDEX_JSON_BYTES:
            raise TrafficRetrievalError(f"{self.index_json}: larger than {MAX_INDEX_JSON_BYTES // 2**20} MiB, not an index.json")
        try:
            info = json.loads(data.decode("utf-8"))
        except RecursionError:
            raise TrafficRetrievalError(f"{self.index_json}: cannot read (nested too deeply)") from None
        except ValueError as exc:  # not UTF-8, not JSON
            raise TrafficRetrievalError(f"{self.index_json}: cannot read ({str(exc)[:200]})") from None
        if not isinstance(info, dict) or info.get("format") not in READABLE_INDEX_FORMATS:
            found = info.get("format") if isinstance(info, dict) else None
            raise TrafficRetrievalError(f"{self.index_json}: not a traffic-retrieval index (format {found!r:.60})")
        return check_index_info(info, self.index_json)


@contextmanager
def index_lock(layout: IndexLayout) -> Iterator[None]:
    """One writer per index (``io.folder_lock``); the index's parts checked once it is held."""
    from ..io import folder_lock

    with folder_lock(layout.root, "index"):
        layout.check_parts()
        yield


def _stored_version(db: sqlite3.Connection) -> int:
    """The schema version of an open database: ``user_version``, or 1 for an index written
    before versions were recorded, or 0 for an empty database."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'").fetchone():
        return 1
    return version


class IndexStore(Closeable):
    """The SQLite metadata of an index, and the only code that speaks SQL to it. Writes
    happen on one process (rank 0); every method is thread-safe (one connection, a lock).

    Opening brings an older schema up to ``SCHEMA_VERSION`` (``MIGRATIONS``, in order,
    in one transaction), also for a read-only store (which needs write access once for
    that); a newer schema than this code knows is refused.
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self._lock = threading.RLock()
        if readonly and not self.path.is_file():
            raise TrafficRetrievalError(f"{self.path}: index metadata not found")
        self._db = self._connect(readonly)
        try:
            self._open(readonly)
        except BaseException:
            self._db.close()
            raise

    def _open(self, readonly: bool) -> None:
        try:
            # this code creates neither: in a database from someone else they would run SQL of theirs on our reads and writes
            found = self._db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchone()
            if found:
                raise TrafficRetrievalError(f"{self.path}: holds a {found[0]} ({str(found[1])[:60]!r}), which traffic-retrieval never creates: "
                                            "refusing it")
            if readonly:
                version = self._checked_version()
                if 0 < version < SCHEMA_VERSION:
                    self._db.close()
                    self._upgrade_for_reading(version)
                    self._db = self._connect(readonly=True)
            else:
                self._checked_version()
                # WAL: a Retriever can read while a build writes; a killed writer loses only its open transaction
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
            self._db.execute("SELECT count(*) FROM images").fetchone()
        except sqlite3.DatabaseError as exc:
            raise TrafficRetrievalError(f"{self.path}: not an index database ({exc})") from None

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target, uri = (f"{self.path.resolve().as_uri()}?mode=ro", True) if readonly else (str(self.path), False)
        return sqlite3.connect(target, uri=uri, timeout=60, isolation_level=None, check_same_thread=False)

    def _checked_version(self) -> int:
        version = _stored_version(self._db)
        if version > SCHEMA_VERSION:
            raise TrafficRetrievalError(f"{self.path}: index metadata schema version {version} is newer than this traffic-retrieval "
                                        f"reads (up to {SCHEMA_VERSION}): upgrade traffic-retrieval")
        return version

    def _upgrade_for_reading(self, version: int) -> None:
        """Migrate an older database through a short-lived writable connection."""
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            raise TrafficRetrievalError(f"{self.path}: index metadata of schema version {version} needs upgrading to {SCHEMA_VERSION}, "
                                        "and it is read-only here: run `traffic-retrieval index` on it once with write access")
        self._db = self._connect()
        try:
            self._migrate()
        finally:
            self._db.close()

    def _migrate(self) -> None:
        """Create a new database, or bring an older one up to ``SCHEMA_VERSION``, in one
        transaction: a failed step leaves the database as it was."""
        if _stored_version(self._db) == SCHEMA_VERSION:
            return
        version = None
        try:
            with self._transaction(one_line_errors=False) as db:
                version = self._checked_version()  # again under the write lock: another process may have migrated meanwhile
                if version == 0:
                    for statement in SCHEMA_V1:
                        db.execute(statement)
                for step in range(max(version, 1), SCHEMA_VERSION):
                    MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        except sqlite3.DatabaseError as exc:
            if version is None:  # not even readable: the caller says "not an index database"
                raise
            action = "create the index metadata" if version == 0 else f"upgrade index metadata from schema version {version} to {SCHEMA_VERSION}"
            raise TrafficRetrievalError(f"{self.path}: cannot {action} ({exc})") from None

    @property
    def schema_version(self) -> int:
        with self._lock:
            return _stored_version(self._db)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, one_line_errors: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; a SQLite failure in it (a full disk: ``database or disk is
        full``) rolls it back and is a one-line error naming the database."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite rolled back already (it does on a full disk)
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if not one_line_errors:
                    raise
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.DatabaseError) -> TrafficRetrievalError:
        return TrafficRetrievalError(f"{self.path}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    # -- key/values ----------------------------------------------------------------
    def meta(self, key: str, default=None):
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, key: str, value) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict) -> None:
        """Several keys in one transaction (JSON values)."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(key, json.dumps(value)) for key, value in values.items()])

    # -- rows ----------------------------------------------------------------------
    def _rows(self, where: str = "", params: tuple = ()) -> list[StoredImage]:
        return [StoredImage(*values) for values in self._query(f"SELECT {', '.join(ROW_COLUMNS)} FROM images {where}", params)]

    def stats_by_path(self) -> dict[str, StoredStat]:
        """Every row's ``StoredStat`` by relative path."""
        return {values[0]: StoredStat(*values[1:]) for values in self._query("SELECT path, id, size, mtime_ns, sha256, state FROM images")}

    def record(self, image_id: int) -> StoredImage | None:
        found = self._rows("WHERE id = ?", (int(image_id),))
        return found[0] if found else None

    def indexed_id_of(self, relative_path: str) -> int | None:
        """The id of the indexed image at ``relative_path`` (under the gallery root), if there is one."""
        found = self._query("SELECT id FROM images WHERE path = ? AND state = 'indexed'", (relative_path,))
        return int(found[0][0]) if found else None

    def records(self, image_ids: Iterable[int]) -> dict[int, StoredImage]:
        ids = [int(i) for i in image_ids]
        found: dict[int, StoredImage] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found.update((row.id, row) for row in self._rows(f"WHERE id IN ({', '.join('?' * len(chunk))})", tuple(chunk)))
        return found

    def image_names(self) -> list[tuple[int, str]]:
        """``(id, file name)`` of every row, whatever its state, in id order."""
        return self._query("SELECT id, name FROM images ORDER BY id")

    def unreadable(self) -> list[StoredImage]:
        return self._rows("WHERE state = 'unreadable' ORDER BY path")

    def pending_shards(self) -> list[tuple[int, list[tuple[int, str]]]]:
        """The shards still to encode, each with its ``(id, path)`` rows in id order."""
        shards: dict[int, list[tuple[int, str]]] = {}
        for image_id, path, shard in self._query("SELECT id, path, shard FROM images WHERE state = 'pending' ORDER BY shard, id"):
            shards.setdefault(shard, []).append((image_id, path))
        return list(shards.items())

    def indexed_images(self) -> list[IndexedImage]:
        """Every indexed row, in id order."""
        return [IndexedImage(*values) for values in
                self._query("SELECT id, name, path, category, shard, row FROM images WHERE state = 'indexed' ORDER BY id")]

    def indexed_page(self, after_id: int, limit: int) -> list[ExportedImage]:
        """Up to ``limit`` indexed rows with ids above ``after_id``, in id order: the whole
        gallery a page at a time (keyset paging: each page is one indexed lookup)."""
        return [ExportedImage(*values) for values in self._query(
            "SELECT id, name, path, category, label, caption, shard, row FROM images WHERE state = 'indexed' AND id > ? ORDER BY id LIMIT ?",
            (int(after_id), int(limit)))]

    def count_indexed_after(self, after_id: int, limit: int) -> int:
        """How many indexed rows have ids above ``after_id``, counting at most ``limit``."""
        return self._query("SELECT count(*) FROM (SELECT id FROM images WHERE state = 'indexed' AND id > ? ORDER BY id LIMIT ?)",
                           (int(after_id), int(limit)))[0][0]

    def indexed_locations(self, category: str | None = None, uncategorised_only: bool = False) -> list[tuple[int, int, int]]:
        """``(id, shard, row)`` of indexed images in id order: all of them, those of
        ``category``, or (``uncategorised_only``) those the model has not categorised yet."""
        where, params = "", ()
        if category is not None:
            where, params = " AND category = ?", (category,)
        if uncategorised_only:
            where += " AND predicted_category IS NULL"
        return self._query(f"SELECT id, shard, row FROM images WHERE state = 'indexed'{where} ORDER BY id", params)

    def category_counts(self) -> dict[str, int]:
        """Indexed images per category (``?``: not categorised yet)."""
        return dict(self._query("SELECT coalesce(category, '?'), count(*) FROM images WHERE state = 'indexed' GROUP BY 1 ORDER BY 1"))

    def state_counts(self) -> dict[str, int]:
        counts = dict(self._query("SELECT state, count(*) FROM images GROUP BY state"))
        return {state: counts.get(state, 0) for state in ("indexed", "pending", "unreadable")}

    def referenced_shards(self) -> set[int]:
        return {shard for (shard,) in self._query("SELECT DISTINCT shard FROM images")}

    # -- writes --------------------------------------------------------------------
    def apply_plan(self, plan, shard_size: int) -> int:
        """Apply a ``GalleryPlan`` in one transaction; files to encode go to new shards
        of ``shard_size`` in path order (ids of new files follow that order too).
        Returns the number of shards planned."""
        to_encode = sorted([(f.path, image_id, f) for image_id, f in plan.reencode] + [(f.path, None, f) for f in plan.new], key=lambda item: item[0])
        with self._transaction() as db:
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
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_shard', ?)", (json.dumps(first_shard + planned),))
        return planned

    def commit_shard(self, shard: int, rows: list[dict]) -> int:
        """Mark a written shard's rows indexed (or unreadable), in one transaction.
        Rows re-planned meanwhile (their file changed) are left alone."""
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE images SET state = ?, row = ?, sha256 = ?, size = ?, mtime_ns = ?, error = ? WHERE id = ? AND shard = ? AND state = 'pending'",
                [("indexed" if r["row"] is not None else "unreadable", r["row"], r["sha256"], r["size"], r["mtime_ns"], r["error"], r["id"], shard) for r in rows],
            )
            return db.total_changes - before

    def set_predicted_categories(self, pairs: list[tuple[int, str]]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE images SET predicted_category = ?, category = coalesce(label_category, ?) WHERE id = ?", [(c, c, i) for i, c in pairs])

    def set_labels(self, labels_by_id: dict[int, object]) -> None:
        """Replace every row's label with ``labels_by_id`` (``ImageLabel`` values); the
        label's category becomes the row's category (truth beats the model's vote)."""
        with self._transaction() as db:
            db.execute("UPDATE images SET label = NULL, caption = NULL, label_category = NULL, category = predicted_category")
            db.executemany("UPDATE images SET label = ?, caption = ?, label_category = ?, category = ? WHERE id = ?",
                           [(lab.attr, lab.text, lab.category, lab.category, i) for i, lab in labels_by_id.items()])


# -- shard files ---------------------------------------------------------------------

def write_shard(layout: IndexLayout, shard: int, embeddings, rows: list[dict], identity: str) -> None:
    """Write a shard's embeddings and rows, each to a temporary file renamed into place
    (data flushed to disk first), embeddings before rows: the ``.json`` marks a complete shard."""
    import numpy as np

    embeddings = np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE)
    target = layout.shard_embeddings(shard)
    try:  # a full disk is a one-line error; the shard stays pending and the next run writes it again
        with atomic_path(target) as tmp, tmp.open("wb") as handle:
            np.save(handle, embeddings)
            handle.flush()
            os.fsync(handle.fileno())
        document = {"format": SHARD_FORMAT, "shard": shard, "identity": identity, "dim": int(embeddings.shape[1]), "dtype": EMBEDDING_DTYPE, "rows": rows}
        target = layout.shard_rows(shard)
        with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise TrafficRetrievalError(f"{target}: cannot write ({exc.strerror or exc})") from None


def read_shard_rows(layout: IndexLayout, shard: int) -> dict | None:
    """The ``.json`` of a complete shard, or None when the shard is missing or incomplete."""
    import numpy as np

    try:
        document = json.loads(layout.shard_rows(shard).read_text(encoding="utf-8"))
        shape = np.load(layout.shard_embeddings(shard), mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != SHARD_FORMAT or not _well_formed_rows(document.get("rows")):
        return None
    if shape[0] != sum(1 for r in document["rows"] if r["row"] is not None):
        return None
    return document


def _well_formed_rows(rows) -> bool:
    """The rows of a shard's ``.json`` have the types ``commit_shard`` records (a file from
    someone else's index is re-encoded rather than trusted when they do not)."""
    def integer(value, optional=False):
        return (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool))

    def text(value):
        return value is None or isinstance(value, str)

    return isinstance(rows, list) and all(
        isinstance(r, dict) and integer(r.get("id")) and integer(r.get("row"), optional=True) and integer(r.get("size")) and integer(r.get("mtime_ns"))
        and text(r.get("sha256")) and text(r.get("error")) and isinstance(r.get("path"), str) for r in rows)


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
            path = self.layout.shard_embeddings(shard)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):  # never a link, a FIFO or a device from someone else's index
                    raise TrafficRetrievalError(f"{path}: not a regular file")
                embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise TrafficRetrievalError(f"{path}: cannot read embedding shard ({getattr(exc, 'strerror', None) or str(exc)[:200]})") from None
            if embeddings.ndim != 2 or embeddings.dtype != np.dtype(EMBEDDING_DTYPE) or (self.dim is not None and embeddings.shape[1] != self.dim):
                raise TrafficRetrievalError(f"{path}: not an embedding shard of this index ({embeddings.dtype} {list(embeddings.shape)}, "
                                            f"expected {EMBEDDING_DTYPE} [rows, {self.dim}])")
            self._open[shard] = embeddings
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
            embeddings = self._shard(int(shard))
            wanted = rows[positions]
            if wanted.min() < 0 or wanted.max() >= len(embeddings):
                raise TrafficRetrievalError(f"{self.layout.shard_embeddings(int(shard))}: has {len(embeddings)} rows, the index's metadata names row "
                                            f"{int(wanted.max() if wanted.max() >= len(embeddings) else wanted.min())}")
            block = embeddings[wanted]
            if out is None:
                out = np.empty((len(locations), block.shape[1]), dtype=np.float32)
            out[positions] = block
        return out
