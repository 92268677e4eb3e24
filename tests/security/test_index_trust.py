"""What an index and a gallery from someone else may make the tool do (issue #12,
findings 4, 10, 12 and the index parts of 14).

- every field of ``index.json`` is checked (type, range; FAISS files only by their
  name pattern inside the index folder) before anything is loaded: a bad one is a
  one-line error naming the field;
- a file is returned for serving only when its real path lies in the real gallery
  root, it has an image suffix, is a regular file and its size and mtime are the row's;
- gallery entries that are not regular files (a FIFO, a link to ``/dev/zero``) are
  skipped and counted, never read; a symbolic link is followed only when its real path
  lies inside the gallery;
- a symlinked ``faiss/`` or ``shards/`` folder is refused before a rebuild deletes
  anything in the link's target;
- a full disk while indexing (SQLite, FAISS, shard files) is a one-line error, and the
  next run finishes the index.

A tiny randomly initialised TR-Tiny-RN over 16 synthetic images keeps it fast.
"""

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_gallery import make_tiny_gallery  # noqa: E402
from traffic_retrieval.cli import main
from traffic_retrieval.commands.index import IndexConfig
from traffic_retrieval.commands.index import run as build_index
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.index import Retriever, read_indexed_gallery
from traffic_retrieval.index.store import IndexStore

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = b"top-secret-outside-the-gallery"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_tiny_gallery(tmp_path_factory.mktemp("trust_source"), seed=3, test_pedestrians=10, test_vehicles=6)


def index_config(source, out, gallery=None, **overrides) -> IndexConfig:
    values = dict(images=gallery or source["gallery"], checkpoint=source["checkpoint"], out=out, labels=source["labels"], kind="hnsw",
                  shard_size=8, batch_size=8, workers=0, progress=False, device="cpu")
    return IndexConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    """An HNSW index (so its entries carry a tuned ``efSearch``) of a private copy of the gallery."""
    root = tmp_path_factory.mktemp("trust_built")
    gallery = root / "gallery"
    shutil.copytree(source["gallery"], gallery)
    build_index(index_config(source, root / "INDEX", gallery))
    return root / "INDEX"


@pytest.fixture
def index_copy(built, tmp_path):
    copy = tmp_path / "INDEX"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def edit_info(index: Path, edit) -> None:
    path = index / "index.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def set_field(info: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        info = info[key]
    info[last] = value


def delete_field(info: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        info = info[key]
    del info[last]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def assert_cli_error(capsys, argv, *fragments) -> str:
    code, err = run_cli(capsys, *argv)
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert code == 2 and line.startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert str(fragment) in line, (fragment, line)
    return line


# -- finding 4: every field of index.json ----------------------------------------------------
FIELD_CASES = [
    ("faiss.indexes.vehicle.search_param", {"efSearch": 10**9}, "efSearch"),  # would allocate without bound per query
    ("faiss.indexes.vehicle.search_param", {"efSearch": 0}, "efSearch"),
    ("faiss.indexes.vehicle.search_param", {"efSearch": "64"}, "efSearch"),
    ("faiss.indexes.vehicle.search_param", {"efSearch": True}, "efSearch"),
    ("faiss.indexes.vehicle.search_param", {"efSearch": 64, "k_factor": 10**7}, "k_factor"),
    ("faiss.indexes.vehicle.search_param", {"nprobe": 4}, "nprobe"),  # not a setting of an HNSW index
    ("faiss.indexes.vehicle.search_param", {"efSearch": 64, "rogue": 1}, "rogue"),
    ("faiss.indexes.vehicle.search_param", [64], "faiss.indexes.vehicle.search_param"),
    ("faiss.indexes.vehicle.file", "/etc/passwd", "faiss.indexes.vehicle.file"),
    ("faiss.indexes.vehicle.file", "../../outside.index", "faiss.indexes.vehicle.file"),
    ("faiss.indexes.vehicle.file", "faiss/../../vehicle.0123456789ab.index", "faiss.indexes.vehicle.file"),
    ("faiss.indexes.vehicle.file", "faiss/vehicle.index", "faiss.indexes.vehicle.file"),
    ("faiss.indexes.vehicle.file", 5, "faiss.indexes.vehicle.file"),
    ("faiss.indexes.vehicle.kind", "annoy", "faiss.indexes.vehicle.kind"),
    ("faiss.indexes.vehicle.count", -1, "faiss.indexes.vehicle.count"),
    ("faiss.indexes.vehicle.recall@10", float("nan"), "faiss.indexes.vehicle.recall@10"),
    ("faiss.indexes", [], "faiss.indexes"),
    ("faiss.fingerprint", "../../x", "faiss.fingerprint"),
    ("faiss", "all of them", "faiss"),
    ("dim", 0, "dim"),
    ("dim", 10**9, "dim"),
    ("dim", "128", "dim"),
    ("dim", 128.0, "dim"),
    ("images", "/", "images"),
    ("images", "relative/gallery", "images"),
    ("images", 7, "images"),
    ("images", "/gallery\u0000/x", "images"),
    ("checkpoint", ["tiny.pt"], "checkpoint"),
    ("checkpoint", "", "checkpoint"),
    ("identity", "abc", "identity"),
    ("model", {"name": "x"}, "model"),
    ("count", -5, "count"),
    ("count", 2**70, "count"),
    ("categories", {"vehicle": "many"}, "categories.vehicle"),
    ("kind", {"vehicle": "annoy"}, "kind.vehicle"),
    ("recall@10", 7, "recall@10"),
    ("embedding_dtype", "float64", "embedding_dtype"),
    ("unreadable", None, "unreadable"),
]


@pytest.mark.parametrize("field, value, named", FIELD_CASES, ids=[f"{f}={v!r}"[:60] for f, v, _ in FIELD_CASES])
def test_every_index_json_field_is_checked_before_use(index_copy, field, value, named):
    edit_info(index_copy, lambda info: set_field(info, field, value))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(index_copy, device="cpu")
    message = one_line_error(excinfo)
    assert message.startswith(f"{index_copy / 'index.json'}: ") and named in message, message
    with pytest.raises(TrafficRetrievalError, match="index.json"):
        read_indexed_gallery(index_copy)


REQUIRED = ["images", "checkpoint", "identity", "model", "dim", "count", "categories", "kind", "recall@10", "faiss", "faiss.indexes",
            "faiss.fingerprint", "faiss.indexes.vehicle.file", "faiss.indexes.vehicle.kind", "faiss.indexes.vehicle.search_param",
            "faiss.indexes.vehicle.count"]


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_index_json_fields_are_one_line_errors(index_copy, field, capsys):
    edit_info(index_copy, lambda info: delete_field(info, field))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(index_copy, device="cpu")
    assert field in one_line_error(excinfo) and "missing" in str(excinfo.value)
    assert_cli_error(capsys, ["search", "--index", index_copy, "a white car", "--device", "cpu"], str(index_copy / "index.json"), field)


@pytest.mark.parametrize("text", ["[" * 200_000 + "]" * 200_000, '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}", "[]", "\"just text\"", "{"])
def test_deeply_nested_or_malformed_index_json_is_a_one_line_error(index_copy, text, capsys):
    (index_copy / "index.json").write_text(text)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(index_copy, device="cpu")
    assert str(index_copy / "index.json") in one_line_error(excinfo)
    assert_cli_error(capsys, ["search", "--index", index_copy, "a white car", "--device", "cpu"], str(index_copy / "index.json"))


def test_a_faiss_file_outside_the_index_folder_is_never_read(index_copy, tmp_path, monkeypatch):
    """Neither an absolute name nor a link inside ``faiss/`` makes FAISS deserialise a file from elsewhere."""
    import faiss

    info = json.loads((index_copy / "index.json").read_text())
    entry = info["faiss"]["indexes"]["vehicle"]
    outside = tmp_path / "elsewhere" / "vehicle.index"
    outside.parent.mkdir()
    shutil.copy(index_copy / entry["file"], outside)
    read = []
    original = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda path, *args: read.append(os.path.realpath(path)) or original(path, *args))

    edit_info(index_copy, lambda info: set_field(info, "faiss.indexes.vehicle.file", str(outside)))
    with pytest.raises(TrafficRetrievalError, match="faiss.indexes.vehicle.file"):
        Retriever.open(index_copy, device="cpu")

    edit_info(index_copy, lambda info: set_field(info, "faiss.indexes.vehicle.file", entry["file"]))
    (index_copy / entry["file"]).unlink()
    (index_copy / entry["file"]).symlink_to(outside)  # the right name, a link out of the index
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(index_copy, device="cpu")
    assert entry["file"] in one_line_error(excinfo)
    assert str(outside) not in read and all(path.startswith(str(index_copy.resolve())) for path in read), read


def test_a_faiss_file_that_disagrees_with_index_json_is_refused(index_copy):
    """dim and count are checked against what the FAISS file holds, so a search never meets a mismatch."""
    edit_info(index_copy, lambda info: set_field(info, "dim", 64))
    with pytest.raises(TrafficRetrievalError, match="dim"):
        Retriever.open(index_copy, device="cpu")
    edit_info(index_copy, lambda info: (set_field(info, "dim", 128), set_field(info, "faiss.indexes.vehicle.count", 999)))
    with pytest.raises(TrafficRetrievalError, match="count"):
        Retriever.open(index_copy, device="cpu")


def test_metadata_with_triggers_or_rows_past_their_shard_is_refused(index_copy, tmp_path):
    """meta.sqlite comes with the index: SQL of its own (a trigger fires on our writes) is refused,
    and a row naming an embedding its shard does not hold is a one-line error, not an IndexError."""
    with sqlite3.connect(index_copy / "meta.sqlite") as db:
        db.execute("UPDATE images SET row = 10000 WHERE id = (SELECT min(id) FROM images WHERE state = 'indexed')")
    with pytest.raises(TrafficRetrievalError) as excinfo:
        read_indexed_gallery(index_copy)
    assert "shard_00000.npy" in one_line_error(excinfo) and "10000" in str(excinfo.value)

    with sqlite3.connect(index_copy / "meta.sqlite") as db:
        db.execute("CREATE TRIGGER on_update AFTER UPDATE ON images BEGIN DELETE FROM meta; END")
    for open_it in (lambda: Retriever.open(index_copy, device="cpu"), lambda: IndexStore(index_copy / "meta.sqlite")):
        with pytest.raises(TrafficRetrievalError) as excinfo:
            open_it()
        assert "meta.sqlite" in one_line_error(excinfo) and "trigger" in str(excinfo.value)


# -- finding 4: the file served for an image id ----------------------------------------------
def tamper_row(index: Path, image_id: int, **values) -> None:
    with sqlite3.connect(index / "meta.sqlite") as db:
        assignments = ", ".join(f"{key} = ?" for key in values)
        db.execute(f"UPDATE images SET {assignments} WHERE id = ?", (*values.values(), image_id))


def first_indexed(index: Path) -> tuple[int, str]:
    with sqlite3.connect(index / "meta.sqlite") as db:
        return db.execute("SELECT id, path FROM images WHERE state = 'indexed' ORDER BY id LIMIT 1").fetchone()


def stat_of(path: Path) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def test_images_root_of_slash_with_a_row_naming_etc_passwd_is_refused(index_copy):
    image_id, _ = first_indexed(index_copy)
    tamper_row(index_copy, image_id, path="etc/passwd", name="passwd", **stat_of(Path("/etc/passwd")))
    edit_info(index_copy, lambda info: set_field(info, "images", "/"))
    with pytest.raises(TrafficRetrievalError, match="images"):
        Retriever.open(index_copy, device="cpu")
    tamper_row(index_copy, image_id, path="passwd")
    edit_info(index_copy, lambda info: set_field(info, "images", "/etc"))  # a root the index may name; the row is still no image
    with Retriever.open(index_copy, device="cpu") as retriever:
        with pytest.raises(TrafficRetrievalError, match="not an image"):
            retriever.image_path(image_id)


@pytest.fixture
def gallery_and_index(built, tmp_path):
    """A private gallery and its index (so tests may change files), opened."""
    gallery = tmp_path / "gallery"
    shutil.copytree(Path(json.loads((built / "index.json").read_text())["images"]), gallery)
    index = tmp_path / "INDEX"
    shutil.copytree(built, index)
    edit_info(index, lambda info: set_field(info, "images", str(gallery.resolve())))
    return gallery, index


def test_image_path_returns_only_checked_gallery_files(gallery_and_index, tmp_path):
    gallery, index = gallery_and_index
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(SECRET)
    (gallery / "passwd").write_bytes(SECRET)
    (gallery / "link.jpg").symlink_to(outside)
    (gallery / "sub.jpg").mkdir()
    os.mkfifo(gallery / "pipe.jpg")
    with sqlite3.connect(index / "meta.sqlite") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM images WHERE state = 'indexed' ORDER BY id")]
    good, *victims = ids
    cases = {  # row -> what makes it unservable
        victims[0]: (dict(path="../secret.jpg", **stat_of(outside)), "gallery"),
        victims[1]: (dict(path="link.jpg", **stat_of(outside)), "gallery"),  # a link out of the gallery
        victims[2]: (dict(path=str(outside), **stat_of(outside)), "gallery"),  # an absolute path
        victims[3]: (dict(path="passwd", **stat_of(gallery / "passwd")), "image"),  # no image suffix
        victims[4]: (dict(path="pipe.jpg", size=0), "regular file"),  # never opened
        victims[5]: (dict(path="sub.jpg"), "regular file"),
        victims[6]: (dict(size=1), "changed"),  # the bytes are not the ones that were indexed
        victims[7]: (dict(state="unreadable", row=None), "not indexed"),
    }
    for image_id, (values, _) in cases.items():
        tamper_row(index, image_id, **values)
    with Retriever.open(index, device="cpu") as retriever:
        path = retriever.image_path(good)
        assert path.is_file() and os.path.realpath(path).startswith(str(gallery.resolve()) + os.sep)
        for image_id, (_, reason) in cases.items():
            with pytest.raises(TrafficRetrievalError) as excinfo:
                retriever.image_path(image_id)
            assert reason in one_line_error(excinfo) and str(image_id) in str(excinfo.value), (image_id, str(excinfo.value))


def test_the_server_never_serves_a_tampered_row(gallery_and_index, tmp_path):
    """The real app: a row pointing through a link out of the gallery is a 404, not the file."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from traffic_retrieval.serve.app import ServeSettings, create_app

    gallery, index = gallery_and_index
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(next(gallery.glob("*.jpg")).read_bytes() + SECRET)  # a real JPEG (decoders ignore what follows its end)
    (gallery / "link.jpg").symlink_to(outside)
    image_id, _ = first_indexed(index)
    tamper_row(index, image_id, path="link.jpg", **stat_of(outside))
    with Retriever.open(index, device="cpu") as retriever, TestClient(create_app(retriever, ServeSettings()), base_url="http://localhost") as client:
        for route in ("images", "thumbnails"):
            response = client.get(f"/api/{route}/{image_id}")
            assert response.status_code == 404 and SECRET not in response.content, (route, response.status_code)
        assert client.get("/api/health").status_code == 200


# -- finding 10: gallery entries that are not regular files ------------------------------------
def test_fifos_device_links_and_links_out_of_the_gallery_are_skipped_and_counted(source, tmp_path):
    """Before: the FIFO (or the link to /dev/zero) made ``index`` read forever."""
    gallery = tmp_path / "gallery"
    shutil.copytree(source["gallery"], gallery)
    regular = len(list(gallery.iterdir()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(next(source["gallery"].iterdir()), elsewhere / "outside.jpg")
    os.mkfifo(gallery / "fifo.jpg")
    (gallery / "zero.jpg").symlink_to("/dev/zero")
    (gallery / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (gallery / "outside.jpg").symlink_to(elsewhere / "outside.jpg")
    (gallery / "linked_folder").symlink_to(elsewhere)
    (gallery / "inside.jpg").symlink_to(sorted(gallery.glob("*.jpg"))[0].name)  # a relative link to a gallery file: followed
    out = tmp_path / "INDEX"
    finished = subprocess.run([sys.executable, "-m", "traffic_retrieval", "index", "--images", gallery, "--checkpoint", source["checkpoint"], "--out", out,
                               "--workers", "0", "--device", "cpu", "--no-progress", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(finished.stdout[finished.stdout.index("{"):])
    assert report["count"] == regular + 1 and report["unreadable"] == 0
    assert report["skipped"] == {"not_regular": 3, "outside_gallery": 1, "linked_folders": 1}, report["skipped"]
    assert any(entry.startswith("fifo.jpg: ") for entry in report["skipped_entries"])
    with sqlite3.connect(out / "meta.sqlite") as db:
        paths = {path for (path,) in db.execute("SELECT path FROM images")}
    assert "inside.jpg" in paths and not paths & {"fifo.jpg", "zero.jpg", "dangling.jpg", "outside.jpg"} and not any("/" in p for p in paths)


# -- finding 12: symlinked subfolders ------------------------------------------------------------
@pytest.mark.parametrize("part", ["faiss", "shards"])
def test_a_symlinked_subfolder_is_refused_and_nothing_in_its_target_is_deleted(source, built, tmp_path, part):
    index = tmp_path / "INDEX"
    shutil.copytree(built, index)
    gallery = Path(json.loads((built / "index.json").read_text())["images"])
    target = tmp_path / "someone_elses"
    shutil.move(str(index / part), target)
    precious = [target / "precious.0123456789ab.index", target / "shard_00999.npy", target / "shard_00999.json", target / ".shard_00998.npy.x.tmp"]
    for path in precious:
        path.write_bytes(b"keep me")
    before = sorted(p.name for p in target.iterdir())
    (index / part).symlink_to(target)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        build_index(index_config(source, index, gallery))
    message = one_line_error(excinfo)
    assert str(index / part) in message and "symbolic link" in message
    assert sorted(p.name for p in target.iterdir()) == before
    with pytest.raises(TrafficRetrievalError, match="symbolic link"):
        Retriever.open(index, device="cpu")


# -- finding 14: a full disk while indexing ---------------------------------------------------------
class FullDisk:
    """A SQLite connection whose disk fills up when the first shard's rows are committed."""

    def __init__(self, connection):
        self._connection = connection

    def _check(self, sql: str) -> None:
        if sql.lstrip().upper().startswith("UPDATE IMAGES SET STATE"):
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql, *args):
        self._check(sql)
        return self._connection.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self._connection.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._connection, name)


def index_argv(source, out) -> list:
    return ["index", "--images", source["gallery"], "--checkpoint", source["checkpoint"], "--out", out, "--labels", source["labels"],
            "--shard-size", "8", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress"]


def test_sqlite_full_while_indexing_is_a_one_line_error_and_the_next_run_finishes(source, tmp_path, monkeypatch, capsys):
    out = tmp_path / "INDEX"
    connect = IndexStore._connect
    monkeypatch.setattr(IndexStore, "_connect", lambda self, readonly=False: FullDisk(connect(self, readonly)))
    assert_cli_error(capsys, index_argv(source, out), str(out / "meta.sqlite"), "disk is full")
    monkeypatch.setattr(IndexStore, "_connect", connect)
    code, err = run_cli(capsys, *index_argv(source, out))
    assert code == 0, err
    assert json.loads((out / "index.json").read_text())["count"] == 16


def test_faiss_write_on_a_full_disk_is_a_one_line_error(source, tmp_path, monkeypatch, capsys):
    import faiss

    out = tmp_path / "INDEX"
    write_index = faiss.write_index
    monkeypatch.setattr(faiss, "write_index", lambda index, path: write_index(index, "/dev/full"))  # FAISS's own write error (ENOSPC)
    assert_cli_error(capsys, index_argv(source, out), str(out / "faiss"), "No space left on device")
    monkeypatch.setattr(faiss, "write_index", write_index)
    code, err = run_cli(capsys, *index_argv(source, out))
    assert code == 0, err


def test_shard_write_on_a_full_disk_is_a_one_line_error_from_the_library_too(source, tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "INDEX"
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        build_index(index_config(source, out, kind="flat"))
    message = one_line_error(excinfo)
    assert "shard_00000" in message and "No space left on device" in message
    monkeypatch.undo()
    assert build_index(index_config(source, out, kind="flat"))["count"] == 16
