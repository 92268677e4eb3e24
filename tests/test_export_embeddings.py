"""``export-embeddings``: an index's stored embeddings and metadata in clip-retrieval's layout
(``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet``), read back with numpy and pyarrow
equal to ``Retriever.embeddings`` row for row, split into parts of ``--part-size`` rows, written
atomically, never over a folder that is not an earlier export, errors on one line."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install -e .[dev])")

from tiny_gallery import build_tiny_index, make_tiny_gallery  # noqa: E402
from traffic_retrieval.commands import export_embeddings as command  # noqa: E402
from traffic_retrieval.errors import TrafficRetrievalError  # noqa: E402
from traffic_retrieval.index import Retriever  # noqa: E402
from traffic_retrieval.index.export import export_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    source = make_tiny_gallery(root, seed=2, test_pedestrians=12, test_vehicles=11)
    (source["gallery"] / "broken.jpg").write_bytes(b"not an image")  # unreadable: not exported
    return build_tiny_index(source, root / "INDEX")


@pytest.fixture(scope="module")
def expected(index):
    """What the index holds: ``Retriever.embeddings`` concatenated."""
    with Retriever.open(index, device="cpu") as retriever:
        batches = list(retriever.embeddings())
    rows = {"id": [], "path": [], "name": [], "category": [], "label": [], "caption": []}
    for batch in batches:
        rows["id"] += batch.ids.tolist()
        for column, values in (("path", batch.paths), ("name", batch.names), ("category", batch.categories), ("label", batch.labels),
                               ("caption", batch.captions)):
            rows[column] += values
    return rows, np.concatenate([batch.embeddings for batch in batches])


def read_export(out: Path):
    """Every part, in order, concatenated: (metadata columns, embeddings, rows per part)."""
    parts = sorted((out / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    tables = sorted((out / "metadata").glob("metadata_*.parquet"), key=lambda p: int(p.stem.split("_")[-1]))
    assert [p.stem.split("_")[-1] for p in parts] == [t.stem.split("_")[-1] for t in tables] == [str(i) for i in range(len(parts))]
    arrays = [np.load(p) for p in parts]
    metadata = [pq.read_table(t).to_pydict() for t in tables]
    for array, table in zip(arrays, metadata):
        assert len(array) == len(table["id"])  # each part's rows aligned
    columns = {key: [v for table in metadata for v in table[key]] for key in metadata[0]}
    return columns, np.concatenate(arrays), [len(a) for a in arrays]


@pytest.mark.parametrize("part_size, sizes", [(10, [10, 10, 3]), (23, [23]), (1_000_000, [23]), (1, [1] * 23)])
def test_export_equals_the_index_row_for_row(index, expected, tmp_path, part_size, sizes):
    rows, vectors = expected
    out = tmp_path / "export"
    summary = command.run(command.Config(index=index, out=out, part_size=part_size))
    columns, exported, part_rows = read_export(out)
    assert part_rows == sizes and summary["count"] == 23 == len(rows["id"])
    assert list(columns) == ["id", "path", "name", "category", "label", "caption"] and columns == rows
    assert exported.dtype == np.float32 and exported.shape == (23, 128)
    np.testing.assert_array_equal(exported, vectors)
    assert "broken.jpg" not in columns["name"] and len(set(columns["id"])) == 23
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in columns["path"])
    written = json.loads((out / "export.json").read_text())
    assert written == summary and [p["rows"] for p in written["parts"]] == sizes and written["dim"] == 128 and written["dtype"] == "float32"
    assert sorted(os.listdir(out)) == ["export.json", "img_emb", "metadata"]
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary folder left


def test_float16_is_what_the_shards_hold(index, expected, tmp_path):
    out = tmp_path / "export"
    export_embeddings(index, out, part_size=8, dtype="float16")
    _, exported, sizes = read_export(out)
    assert exported.dtype == np.float16 and sizes == [8, 8, 7]
    np.testing.assert_array_equal(exported.astype(np.float32), expected[1])


def test_an_existing_folder_is_replaced_only_when_asked_and_only_an_export(index, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()  # an empty folder is written into
    command.print_result(command.run(command.Config(index=index, out=out, part_size=10)), command.Config())
    assert "wrote 23 embeddings (float32, dim 128, TR-Tiny-RN) in 3 parts to" in capsys.readouterr().out
    with pytest.raises(TrafficRetrievalError, match="not empty .--overwrite replaces an earlier export there."):
        export_embeddings(index, out, part_size=5)
    assert len(list((out / "img_emb").iterdir())) == 3  # untouched
    export_embeddings(index, out, part_size=5, overwrite=True)
    assert len(list((out / "img_emb").iterdir())) == 5 and json.loads((out / "export.json").read_text())["part_size"] == 5
    assert sorted(os.listdir(tmp_path)) == ["export"]

    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrafficRetrievalError, match="holds 'notes.txt', which an export does not write: not replaced"):
        export_embeddings(index, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrafficRetrievalError, match="exists and is not a folder"):
        export_embeddings(index, tmp_path / "file", overwrite=True)
    with pytest.raises(TrafficRetrievalError, match="inside the index"):
        export_embeddings(index, index / "embeddings")


def test_a_failed_export_leaves_nothing(index, tmp_path, monkeypatch):
    import traffic_retrieval.index.export as export

    real = export.iter_embeddings

    def fail_midway(*args, **kwargs):
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 1:
                raise TrafficRetrievalError("test: disk gone")
            yield batch

    monkeypatch.setattr(export, "BLOCK_ROWS", 4)
    monkeypatch.setattr(export, "iter_embeddings", fail_midway)
    with pytest.raises(TrafficRetrievalError, match="test: disk gone"):
        export_embeddings(index, tmp_path / "export")
    assert os.listdir(tmp_path) == []


def test_errors_are_one_line(index, tmp_path):
    cases = [
        (dict(index=None, out=tmp_path / "o"), "export-embeddings needs --index"),
        (dict(index=index, out=None), "export-embeddings needs --out"),
        (dict(index=index, out=tmp_path / "o", part_size=0), "part_size must be at least 1"),
        (dict(index=index, out=tmp_path / "o", dtype="float64"), "dtype must be one of float32, float16"),
        (dict(index=tmp_path / "missing", out=tmp_path / "o"), "not an index"),
    ]
    for values, message in cases:
        with pytest.raises(TrafficRetrievalError) as excinfo:
            command.run(command.Config(**values))
        assert message in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not (tmp_path / "o").exists()


def test_the_export_embeddings_command(index, tmp_path, capsys):
    from traffic_retrieval.cli import main

    out = tmp_path / "o"
    assert main(["export-embeddings", "--index", str(index), "--out", str(out), "--part-size", "7", "--dtype", "float16", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parts"][-1] == {"img_emb": "img_emb/img_emb_3.npy", "metadata": "metadata/metadata_3.parquet", "rows": 2}
    assert printed["dtype"] == "float16" and np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16
    assert main(["export-embeddings", "--index", str(index), "--out", str(out)]) == 2  # not empty, no --overwrite
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out}: not empty"), err
    assert main(["export-embeddings", "--index", str(index), "--out", str(out), "--overwrite"]) == 0
    assert "wrote 23 embeddings (float32, dim 128, TR-Tiny-RN) in 1 part to" in capsys.readouterr().out
    assert main(["export-embeddings", "--index", str(index), "--out", str(out), "--part-size", "0"]) == 2
    assert "part_size must be at least 1" in capsys.readouterr().err


def test_without_pyarrow_the_export_names_the_extra(index, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow fails
    with pytest.raises(TrafficRetrievalError, match=r"pip install 'traffic-retrieval\[export\]'"):
        export_embeddings(index, tmp_path / "export")
    assert not (tmp_path / "export").exists()
