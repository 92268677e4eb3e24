"""The index's SQLite store: schema versions (an index written before versions were
recorded is migrated on open, a newer schema is refused in one line, a failed
migration leaves the database as it was), and every public method used without SQL.

``fixtures/index_meta_v1.sql`` is the ``meta.sqlite`` of a small index as the code
before schema versions wrote it (version 1), dumped by sqlite3's ``iterdump``.
"""

import re
import sqlite3
from pathlib import Path

import pytest

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.index import store as store_module
from traffic_retrieval.index.plan import GalleryPlan
from traffic_retrieval.index.scan import GalleryFile, ImageLabel
from traffic_retrieval.index.store import MIGRATIONS, SCHEMA_VERSION, IndexStore, StoredImage

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGE = Path(__file__).resolve().parents[1] / "traffic_retrieval"


def write_v1_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / "index_meta_v1.sql").read_text(encoding="utf-8"))
    db.close()


def raw_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Every image and meta row, read with plain sqlite3 (what the file holds)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM images ORDER BY id").fetchall(), db.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    finally:
        db.close()


def schema_of(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        db.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def v1_database(tmp_path) -> Path:
    path = tmp_path / "meta.sqlite"
    write_v1_database(path)
    assert user_version(path) == 0  # as the code before schema versions left it
    return path


@pytest.mark.parametrize("readonly", [False, True])
def test_a_version_1_index_is_migrated_on_open_and_reads_back_the_same_rows(v1_database, tmp_path, readonly):
    images_before, meta_before = raw_rows(v1_database)
    with IndexStore(v1_database, readonly=readonly) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        records = store.records(row[0] for row in images_before)
        assert [tuple(vars(records[row[0]]).values()) for row in images_before] == images_before
        assert store.meta("identity") == "c6c48d5a82da160fd4421a0544a7deca0dfb7fb51e52f0cd2ab54b5d44521aca"
        assert store.meta("next_shard") == 3 and store.meta("labels")["labelled"] == 6
        assert store.state_counts() == {"indexed": 6, "pending": 1, "unreadable": 1}
        assert store.category_counts() == {"pedestrian": 3, "vehicle": 3}
        assert [image.name for image in store.indexed_images()] == ["207843.jpg", "341851.jpg", "387570.jpg", "iwnnekgygf.jpg", "riegystpex.jpg",
                                                                     "ybxqoarnix.jpg"]
    assert user_version(v1_database) == SCHEMA_VERSION
    assert raw_rows(v1_database) == (images_before, meta_before)  # the migration adds, never rewrites, rows
    fresh = tmp_path / "fresh.sqlite"
    IndexStore(fresh).close()
    assert schema_of(v1_database) == schema_of(fresh)  # a migrated and a new database end with one schema
    assert {"images_indexed_by_category", "images_uncategorised"} <= {name for _, name, _, _ in schema_of(fresh)}


def test_migrations_are_stepwise_from_every_known_version():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))  # one step per version, none missing


def test_a_failed_migration_leaves_the_database_as_it_was(v1_database, monkeypatch):
    def half_a_migration(db):
        db.execute("CREATE INDEX images_half ON images (name)")
        raise sqlite3.OperationalError("disk I/O error")

    schema_before = schema_of(v1_database)
    monkeypatch.setitem(MIGRATIONS, 1, half_a_migration)
    with pytest.raises(TrafficRetrievalError, match="disk I/O error"):
        IndexStore(v1_database)
    assert schema_of(v1_database) == schema_before and user_version(v1_database) == 0
    monkeypatch.undo()
    with IndexStore(v1_database) as store:
        assert store.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    path = tmp_path / "meta.sqlite"
    IndexStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    for readonly in (False, True):
        with pytest.raises(TrafficRetrievalError) as raised:
            IndexStore(path, readonly=readonly)
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"{path}: ") and f"version {SCHEMA_VERSION + 1} is newer" in message
    assert user_version(path) == SCHEMA_VERSION + 1  # untouched


def test_an_old_read_only_index_says_how_to_upgrade_it(v1_database, monkeypatch):
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)  # as a non-owner sees it (root writes anything)
    with pytest.raises(TrafficRetrievalError, match="schema version 1 needs upgrading to 2, .* once with write access"):
        IndexStore(v1_database, readonly=True)
    monkeypatch.undo()
    assert user_version(v1_database) == 0


def test_not_an_index_database(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(TrafficRetrievalError, match="not an index database"):
        IndexStore(tmp_path / "junk.sqlite")
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(TrafficRetrievalError, match="not an index database"):
        IndexStore(empty, readonly=True)  # readers never create the schema
    with pytest.raises(TrafficRetrievalError, match="not found"):
        IndexStore(tmp_path / "missing.sqlite", readonly=True)


def test_every_public_method_works_without_sql_in_the_caller(tmp_path):
    path = tmp_path / "meta.sqlite"
    files = [GalleryFile(f"cams/{name}.jpg", 100 + i, 1_000 + i) for i, name in enumerate("abcde")]
    with IndexStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.state_counts() == {"indexed": 0, "pending": 0, "unreadable": 0}
        store.set_meta("identity", "abc")
        store.set_metas({"model": "TR-Tiny-RN", "labels": {"file": "x", "labelled": 2}})
        assert (store.meta("identity"), store.meta("model"), store.meta("labels"), store.meta("missing", 7)) == ("abc", "TR-Tiny-RN", {"file": "x", "labelled": 2}, 7)

        assert store.apply_plan(GalleryPlan(new=files), shard_size=2) == 3 and store.meta("next_shard") == 3
        pending = store.pending_shards()
        assert [(shard, [path for _, path in rows]) for shard, rows in pending] == [
            (0, ["cams/a.jpg", "cams/b.jpg"]), (1, ["cams/c.jpg", "cams/d.jpg"]), (2, ["cams/e.jpg"])]
        ids = {path: image_id for _, rows in pending for image_id, path in rows}
        assert list(ids.values()) == sorted(ids.values())  # ids follow path order
        assert store.referenced_shards() == {0, 1, 2}
        stats = store.stats_by_path()
        assert stats["cams/c.jpg"].size == 102 and stats["cams/c.jpg"].state == "pending" and stats["cams/c.jpg"].sha256 is None

        def written(shard, readable):
            """A shard's rows as ``write_shard`` records them: readable images numbered in order."""
            rows, row = [], 0
            for image_id, p in dict(pending)[shard]:
                rows.append({"id": image_id, "path": p, "sha256": f"sha-{p}", "size": 100, "mtime_ns": 5, "row": row if p in readable else None,
                             "error": None if p in readable else f"{p}: cannot read image"})
                row += p in readable
            return rows

        assert store.commit_shard(0, written(0, {"cams/a.jpg", "cams/b.jpg"})) == 2
        assert store.commit_shard(1, written(1, {"cams/c.jpg"})) == 2
        assert store.commit_shard(1, written(1, {"cams/c.jpg"})) == 0  # committed once
        assert store.state_counts() == {"indexed": 3, "pending": 1, "unreadable": 1}
        assert [row.path for row in store.unreadable()] == ["cams/d.jpg"] and store.unreadable()[0].error.endswith("cannot read image")

        locations = store.indexed_locations()
        assert [image_id for image_id, _, _ in locations] == [ids["cams/a.jpg"], ids["cams/b.jpg"], ids["cams/c.jpg"]]
        assert store.indexed_locations(uncategorised_only=True) == locations and store.category_counts() == {"?": 3}
        store.set_predicted_categories([(ids["cams/a.jpg"], "vehicle"), (ids["cams/b.jpg"], "pedestrian")])
        assert store.indexed_locations(uncategorised_only=True) == [locations[2]]
        assert store.indexed_locations(category="vehicle") == [locations[0]]
        assert store.indexed_locations(category="vehicle", uncategorised_only=True) == []
        store.set_predicted_categories([(ids["cams/c.jpg"], "vehicle")])
        assert store.category_counts() == {"pedestrian": 1, "vehicle": 2}

        store.set_labels({ids["cams/a.jpg"]: ImageLabel("1,0,1", "A man.", "pedestrian")})  # truth beats the model's vote
        record = store.record(ids["cams/a.jpg"])
        assert isinstance(record, StoredImage) and (record.category, record.predicted_category, record.label, record.caption) == (
            "pedestrian", "vehicle", "1,0,1", "A man.")
        assert store.category_counts() == {"pedestrian": 2, "vehicle": 1}
        store.set_labels({})
        assert store.record(ids["cams/a.jpg"]).category == "vehicle" and store.record(ids["cams/a.jpg"]).label is None
        assert store.record(10_000) is None and set(store.records([ids["cams/a.jpg"], 10_000])) == {ids["cams/a.jpg"]}
        assert store.image_names() == [(ids[f.path], f.name) for f in files]
        assert [(image.id, image.name, image.path, image.category) for image in store.indexed_images()] == [
            (ids["cams/a.jpg"], "a.jpg", "cams/a.jpg", "vehicle"), (ids["cams/b.jpg"], "b.jpg", "cams/b.jpg", "pedestrian"),
            (ids["cams/c.jpg"], "c.jpg", "cams/c.jpg", "vehicle")]

        changed = GalleryFile("cams/b.jpg", 999, 2_000)
        plan = GalleryPlan(reencode=[(ids["cams/b.jpg"], changed)], restat=[(ids["cams/c.jpg"], 103, 3_000)], deleted=[ids["cams/a.jpg"]])
        assert store.apply_plan(plan, shard_size=2) == 1
        assert store.record(ids["cams/a.jpg"]) is None
        b = store.record(ids["cams/b.jpg"])
        assert (b.state, b.shard, b.size, b.sha256, b.predicted_category, b.category) == ("pending", 3, 999, None, None, None)
        assert (store.record(ids["cams/c.jpg"]).size, store.record(ids["cams/c.jpg"]).mtime_ns, store.record(ids["cams/c.jpg"]).state) == (103, 3_000, "indexed")
        assert [shard for shard, _ in store.pending_shards()] == [2, 3] and store.referenced_shards() == {1, 2, 3}
    with IndexStore(path, readonly=True) as reader:  # what a Retriever sees
        assert reader.state_counts() == {"indexed": 1, "pending": 2, "unreadable": 1}


def test_no_sql_outside_the_store():
    """``index/store.py`` is the only module that speaks SQL (or imports sqlite3)."""
    sql = re.compile(r"\bsqlite3\b|\.execute(many|script)?\(|\bSELECT\s+\w|\bUPDATE\s+images\b|\bINSERT\s+INTO\b")
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path != PACKAGE / "index" / "store.py" and sql.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_store_hands_out_no_connection(tmp_path):
    with IndexStore(tmp_path / "meta.sqlite") as store:
        assert not [name for name in vars(store) if not name.startswith("_") and name != "path"]
        assert not [name for name in dir(IndexStore) if not name.startswith("_") and "transaction" in name]


def test_store_module_exports_the_migration_api():
    assert store_module.SCHEMA_VERSION == max(store_module.MIGRATIONS) + 1
    assert store_module.MIGRATIONS[1] is store_module.migrate_1_to_2
