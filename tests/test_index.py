"""The persistent gallery index: build, search, incremental updates, resumption after
SIGKILL, checkpoint identity, unreadable images, FAISS recall, torchrun (1 and 2 CPU
ranks), and the ``index`` and ``search`` commands.

A tiny randomly initialised TR-Tiny-RN and 40 synthetic test-split images keep it fast.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from traffic_retrieval.synth import SynthConfig, generate_dataset
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.cli import main
from traffic_retrieval.commands.index import IndexConfig, format_report
from traffic_retrieval.commands.index import run as build_index
from traffic_retrieval.index import Retriever, SearchResult, read_indexed_gallery
from traffic_retrieval.index import faiss_index
from traffic_retrieval.index.faiss_search import FaissGallerySearch
from traffic_retrieval.index.store import IndexStore
from traffic_retrieval.retrieval.search import search_routed, search_targets
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import checkpoint_payload, create_model, file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Synthetic gallery (24 pedestrians, 16 vehicles) with labels, and two different tiny checkpoints."""
    root = tmp_path_factory.mktemp("index_source")
    generate_dataset(SynthConfig(out=root / "data", seed=1, train_pedestrians=2, train_vehicles=2, val_pedestrians=0, val_vehicles=0,
                                 test_pedestrians=24, test_vehicles=16, workers=1), progress=False)
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = root / f"tiny_{seed}.pt"
        atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), path)
        checkpoints.append(path)
    return {"root": root, "gallery": root / "data" / "test" / "test_images", "labels": root / "data" / "ground_truth" / "test_label.txt",
            "checkpoint": checkpoints[0], "other_checkpoint": checkpoints[1]}


def config(source, out, gallery=None, **overrides) -> IndexConfig:
    values = dict(images=gallery or source["gallery"], checkpoint=source["checkpoint"], out=out, labels=source["labels"],
                  shard_size=8, batch_size=8, workers=0, progress=False, device="cpu")
    return IndexConfig(**{**values, **overrides})


def snapshot(index_dir) -> dict:
    """id -> (relative path, category, label, embedding) of an index."""
    gallery = read_indexed_gallery(index_dir)
    root = Path(gallery.info["images"])
    return {i: (p.relative_to(root).as_posix(), c, e) for i, p, c, e in zip(gallery.ids, gallery.paths, gallery.categories, gallery.embeddings.numpy())}


def assert_same_index(a: dict, b: dict, atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for image_id in a:
        assert a[image_id][:2] == b[image_id][:2], image_id
        np.testing.assert_allclose(a[image_id][2], b[image_id][2], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("index_built") / "INDEX"
    report = build_index(config(source, out))
    return out, report


def test_build_writes_sqlite_shards_faiss_and_index_json(built, source):
    out, report = built
    assert report["count"] == 40 and report["encoded"] == 40 and report["new"] == 40 and report["unreadable"] == 0
    assert report["categories"] == {"pedestrian": 24, "vehicle": 16} and report["labelled"] == 40
    info = json.loads((out / "index.json").read_text())
    store = IndexStore(out / "meta.sqlite", readonly=True)
    assert info["identity"] == store.meta("identity") == file_sha256(source["checkpoint"])
    store.close()
    assert info["model"] == "TR-Tiny-RN" and info["dim"] == 128 and info["count"] == 40 and info["embedding_dtype"] == "float16"
    assert info["kind"] == {"pedestrian": "flat", "vehicle": "flat"} and info["recall@10"] == 1.0
    assert Path(info["checkpoint"]) == source["checkpoint"].resolve()
    shards = sorted((out / "shards").glob("shard_*.npy"))
    assert len(shards) == 5 and np.load(shards[0]).dtype == np.float16 and np.load(shards[0]).shape == (8, 128)
    for entry in info["faiss"]["indexes"].values():
        assert (out / entry["file"]).is_file()
    with sqlite3.connect(out / "meta.sqlite") as db:
        rows = db.execute("SELECT name, size, mtime_ns, sha256, category, label, shard, row FROM images ORDER BY id").fetchall()
    assert len(rows) == 40 and all(len(row[3]) == 64 and row[4] in ("pedestrian", "vehicle") for row in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # ids follow path order


def assert_same_results(found, expected, atol=1e-5):
    """Same images in the same order; scores equal up to the float noise of a different batch size."""
    assert [[r.id for r in results] for results in found] == [[r.id for r in results] for results in expected]
    np.testing.assert_allclose([[r.score for r in results] for results in found], [[r.score for r in results] for results in expected], atol=atol)


def test_search_returns_typed_results_sorted_by_score(built):
    out, _ = built
    with Retriever.open(out, device="cpu") as retriever:
        results = retriever.search("This is a white Audi.", k=10)
        assert len(results) == 10 and all(isinstance(r, SearchResult) for r in results)
        assert [r.rank for r in results] == list(range(1, 11))
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        assert {r.category for r in results} == {"vehicle"}  # routed by the vehicle vocabulary
        first = results[0]
        assert isinstance(first.id, int) and isinstance(first.score, float) and Path(first.path).is_file() and first.label.endswith(".")
        assert retriever.image_path(first.id) == Path(first.path) and retriever.record(first.id).name == first.name
        assert {r.category for r in retriever.search("A man with a backpack.", k=10)} == {"pedestrian"}

        for category, size in (("pedestrian", 24), ("vehicle", 16)):
            filtered = retriever.search("This is a white Audi.", k=20, category=category)
            assert len(filtered) == min(20, size) and {r.category for r in filtered} == {category}
        everything = retriever.search("a person", k=1000, category="all")
        assert len(everything) == 40 and len({r.id for r in everything}) == 40
        assert [r.score for r in everything] == sorted((r.score for r in everything), reverse=True)

        queries = ["This is a white Audi.", "A woman in a long coat.", "A red Truck."]
        batch = retriever.search_batch(queries, k=5)
        assert_same_results(batch, [retriever.search(q, k=5) for q in queries])  # a batch encodes up to float noise
        with ThreadPoolExecutor(4) as pool:  # concurrent searches give the sequential answers
            assert_same_results(list(pool.map(lambda q: retriever.search(q, k=5), queries * 4)), batch * 4)

        info = retriever.info()
        assert info["count"] == 40 and info["categories"] == {"pedestrian": 24, "vehicle": 16} and info["model"] == "TR-Tiny-RN"
        for bad_k in (0, 1001, 2.5, True):
            with pytest.raises(TrafficRetrievalError, match="k must be"):
                retriever.search("a car", k=bad_k)
        with pytest.raises(TrafficRetrievalError, match="category"):
            retriever.search("a car", category="bicycle")
        with pytest.raises(TrafficRetrievalError):
            retriever.record(10_000)


def test_search_and_index_commands(built, source, tmp_path, capsys):
    out, _ = built
    assert main(["search", "--index", str(out), "This is a white Audi.", "-k", "3", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["query"] == "This is a white Audi." and [r["rank"] for r in printed["results"]] == [1, 2, 3]
    assert main(["search", "--index", str(out), "a man", "--category", "pedestrian", "--device", "cpu", "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all("pedestrian" in line and line.split()[3].endswith(".jpg") for line in lines)
    assert main(["search", "--index", str(out), "a man", "a car", "--k", "2", "--category", "all", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("query: ") == 2
    assert main(["index", "--images", str(source["gallery"]), "--checkpoint", str(source["checkpoint"]), "--out", str(out), "--labels", str(source["labels"]),
                 "--kind", "flat", "--flat-max", "100000", "--recall-target", "0.95", "--reduce-dim", "128", "--batch-size", "8", "--workers", "0",
                 "--shard-size", "8", "--device", "cpu", "--precision", "auto", "--no-progress"]) == 0
    assert "encoded 0" in capsys.readouterr().out
    assert main(["search", "--index", str(out), "a car", "-k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err
    config_file = tmp_path / "index.yaml"
    config_file.write_text(f"images: {source['gallery']}\ncheckpoint: {source['checkpoint']}\nout: {out}\nworkers: 0\ndevice: cpu\nprogress: false\n")
    assert main(["index", "--config", str(config_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["encoded"] == 0


def test_search_command_returns_data(built):
    from traffic_retrieval.commands import search

    out, _ = built
    result = search.run(search.SearchConfig(text=["This is a white Audi.", "A man."], index=out, k=4, device="cpu"))
    assert [s["query"] for s in result["searches"]] == ["This is a white Audi.", "A man."]
    assert [[r["rank"] for r in s["results"]] for s in result["searches"]] == [[1, 2, 3, 4]] * 2
    for bad, message in ((dict(index=None), "needs --index"), (dict(category="bicycle"), "category must be one of"), (dict(k=1001), "k must be at most")):
        with pytest.raises(TrafficRetrievalError, match=message):
            search.run(search.SearchConfig(**{"text": ["a car"], "index": out, "device": "cpu", **bad}))


def test_faiss_search_equals_exact_search_over_the_same_index(built):
    """The FAISS gallery search behind Retriever and the exact one behind predict --index
    answer routed queries alike (flat indexes: the same images, the same scores)."""
    out, _ = built
    gallery = read_indexed_gallery(out)
    faiss_search = FaissGallerySearch.load(out, gallery.info["faiss"])
    exact = gallery.exact_search(by_id=True)
    assert faiss_search.categories() == exact.categories() == ["pedestrian", "vehicle"]
    queries = torch.nn.functional.normalize(torch.randn(6, gallery.embeddings.shape[1], generator=torch.Generator().manual_seed(0)), dim=1)
    targets = search_targets(["pedestrian", "vehicle", "all", "pedestrian", "bicycle", "vehicle"], faiss_search.categories())
    assert targets[4] == "all"
    found, expected = search_routed(faiss_search, queries, targets, 7), search_routed(exact, queries, targets, 7)
    assert [[i for i, _ in row] for row in found] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose([[s for _, s in row] for row in found], [[s for _, s in row] for row in expected], atol=1e-5)
    by_position = gallery.exact_search().search(queries[:1], 3, "vehicle")[0]
    assert [gallery.ids[position] for position, _ in by_position] == [i for i, _ in search_routed(exact, queries[:1], ["vehicle"], 3)[0]]


def test_incremental_updates_encode_only_what_changed(built, source, tmp_path):
    gallery, out = tmp_path / "gallery", tmp_path / "INDEX"
    shutil.copytree(source["gallery"], gallery)  # keeps mtimes: the index below is up to date for it
    shutil.copytree(built[0], out)
    before = snapshot(out)
    names = sorted(p.name for p in gallery.iterdir())

    report = build_index(config(source, out, gallery))
    assert (report["encoded"], report["unchanged"], report["faiss_rebuilt"]) == (0, 40, False)
    assert snapshot(out).keys() == before.keys()

    shutil.copy(gallery / names[0], gallery / "zzz_added.jpg")  # new file
    report = build_index(config(source, out, gallery))
    assert (report["encoded"], report["new"], report["count"]) == (1, 1, 41) and report["faiss_rebuilt"]
    added = snapshot(out)
    added_id = max(added)
    assert added_id not in before and added[added_id][0] == "zzz_added.jpg"
    np.testing.assert_allclose(added[added_id][2], before[min(before)][2], atol=2e-3)  # same bytes as names[0]

    (gallery / names[1]).unlink()  # deleted file
    modified = gallery / names[2]  # same path, other bytes: re-encoded under the same id
    modified_id = next(i for i, v in added.items() if v[0] == names[2])
    modified.write_bytes((gallery / names[3]).read_bytes())
    os.utime(modified, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = gallery / names[4]  # mtime changed, bytes unchanged: the checksum says unchanged
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    (gallery / "broken.jpg").write_bytes(b"not an image")  # unreadable: counted and listed, never fatal
    report = build_index(config(source, out, gallery))
    assert (report["encoded"], report["attempted"], report["changed"], report["dropped"], report["count"]) == (1, 2, 1, 1, 40)
    assert report["unreadable"] == 1 and "broken.jpg" in report["unreadable_images"][0]
    after = snapshot(out)
    assert names[1] not in {v[0] for v in after.values()} and after[modified_id][0] == names[2]
    third = next(v for v in after.values() if v[0] == names[3])
    np.testing.assert_allclose(after[modified_id][2], third[2], atol=2e-3)
    with Retriever.open(out, device="cpu") as retriever:
        assert names[1] not in {r.name for r in retriever.search("a person", k=1000, category="all")}

    report = build_index(config(source, out, gallery))  # the unreadable file is not retried while unchanged, still reported
    assert (report["encoded"], report["attempted"], report["unreadable"]) == (0, 0, 1)


def test_an_index_written_before_schema_versions_is_upgraded_in_place(built, source, tmp_path):
    """A whole index of schema version 1 (its meta.sqlite put back to the v1 schema of
    tests/fixtures/index_meta_v1.sql) is searched as it was, and updating it rebuilds nothing."""
    out = tmp_path / "INDEX"
    shutil.copytree(built[0], out)
    db = sqlite3.connect(out / "meta.sqlite", isolation_level=None)
    db.execute("DROP INDEX images_indexed_by_category")
    db.execute("DROP INDEX images_uncategorised")
    db.execute("PRAGMA user_version = 0")
    v1_schema = [sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'")]
    db.close()
    fixture = (REPO_ROOT / "tests" / "fixtures" / "index_meta_v1.sql").read_text()
    assert all(sql in fixture for sql in v1_schema) and len(v1_schema) == fixture.count("CREATE ")
    with Retriever.open(built[0], device="cpu") as current, Retriever.open(out, device="cpu") as upgraded:
        assert_same_results([upgraded.search("This is a white Audi.", k=10)], [current.search("This is a white Audi.", k=10)], atol=0)
    with IndexStore(out / "meta.sqlite", readonly=True) as store:
        assert store.schema_version == 2
    report = build_index(config(source, out))
    assert (report["encoded"], report["unchanged"], report["faiss_rebuilt"]) == (0, 40, False)


def test_a_different_checkpoint_is_refused(built, source):
    out, _ = built
    with pytest.raises(TrafficRetrievalError, match="different model"):
        build_index(config(source, out, checkpoint=source["other_checkpoint"]))
    with pytest.raises(TrafficRetrievalError, match="not the checkpoint"):
        Retriever.open(out, device="cpu", checkpoint=source["other_checkpoint"])
    with pytest.raises(TrafficRetrievalError, match="another model"):
        read_indexed_gallery(out, identity="0" * 64)


def test_shards_written_but_not_committed_are_recovered(built, source, tmp_path, monkeypatch):
    out = tmp_path / "INDEX"
    original = IndexStore.commit_shard
    calls = []

    def commit_then_die(self, shard, rows):
        calls.append(shard)
        if len(calls) == 3:  # the third shard's files are on disk, its rows not recorded
            raise KeyboardInterrupt
        return original(self, shard, rows)

    monkeypatch.setattr(IndexStore, "commit_shard", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_index(config(source, out))
    monkeypatch.setattr(IndexStore, "commit_shard", original)
    report = build_index(config(source, out))
    assert (report["recovered"], report["encoded"], report["resumed"]) == (8, 40 - 24, 40 - 24)
    assert_same_index(snapshot(out), snapshot(built[0]))


KILLABLE_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from traffic_retrieval.index.build import build_index
    from traffic_retrieval.index.store import IndexStore

    original = IndexStore.commit_shard
    def slow_commit(self, shard, rows):  # time for the test to kill us between shards
        committed = original(self, shard, rows)
        time.sleep(0.4)
        return committed
    IndexStore.commit_shard = slow_commit
    images, checkpoint, out, labels = map(Path, sys.argv[1:])
    build_index(images, checkpoint, out, labels=labels, shard_size=8, batch_size=8, workers=0, progress=False, device="cpu")
""")


def test_sigkill_then_rerun_equals_an_uninterrupted_build(built, source, tmp_path):
    out = tmp_path / "INDEX"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_BUILD, str(source["gallery"]), str(source["checkpoint"]), str(out), str(source["labels"])],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed = 0
    while process.poll() is None and time.monotonic() < deadline:
        if (out / "meta.sqlite").exists():
            try:
                with sqlite3.connect(f"{(out / 'meta.sqlite').as_uri()}?mode=ro", uri=True, timeout=5) as db:
                    committed = db.execute("SELECT count(*) FROM images WHERE state != 'pending'").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0  # the schema is being created
            if committed:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert 0 < committed < 40 and not (out / "index.json").exists()

    report = build_index(config(source, out))
    assert report["resumed"] == report["attempted"] > 0 and report["encoded"] < 40 and report["count"] == 40
    assert_same_index(snapshot(out), snapshot(built[0]))


@pytest.mark.parametrize("processes", [2, 1])
def test_torchrun_cpu_ranks_equal_one_process(built, source, tmp_path, processes):
    """torchrun with 2 ranks, and with 1 (a process group of one: the same code path)."""
    out = tmp_path / "INDEX"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "traffic_retrieval", "index",
               "--images", str(source["gallery"]), "--checkpoint", str(source["checkpoint"]), "--out", str(out), "--labels", str(source["labels"]),
               "--shard-size", "8", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress", "--json"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout[finished.stdout.index("{"):])
    assert report["world_size"] == processes and report["encoded"] == 40 and report["count"] == 40
    assert json.loads((out / "index.json").read_text())["world_size"] == processes
    # same ids -> paths, categories; embeddings up to the float noise of a different thread count
    assert_same_index(snapshot(out), snapshot(built[0]), atol=2e-3)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_reaches_recall_against_exact(kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 4000)
    ann = faiss_index.build(vectors, ids, faiss_index.AnnConfig(kind=kind))
    assert ann.kind == kind and ann.recall >= 0.95 and ann.search_param
    queries = rng.standard_normal((200, 32)).astype(np.float32)  # independent of the tuning queries
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, found = faiss_index.search(ann, queries, 10)
    _, exact = faiss_index.exact_topk(queries, vectors, 10)
    recall = np.mean([len(set(f) & set(ids[e])) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.95, recall
    assert faiss_index.choose_kind("auto", 3000, flat_max=100_000) == "flat" and faiss_index.choose_kind("auto", 200_001, 100_000) == "hnsw"


def _power_law_vectors(count, dim, seed=0):
    """Most variance in a few directions, as in image embeddings (variance of direction i ~ 1/i)."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    vectors = ((rng.standard_normal((count, dim)) * np.arange(1, dim + 1) ** -0.5) @ rotation).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_hnsw_on_principal_directions_rescores_exactly_and_survives_a_reload(tmp_path):
    import faiss

    drawn = _power_law_vectors(4400, 256)
    vectors, tuning, queries = drawn[:4000], drawn[4000:4200], drawn[4200:]
    ids = np.arange(4000) + 50
    ann = faiss_index.build(vectors, ids, faiss_index.AnnConfig(kind="hnsw", reduce_dim=32, recall_queries=0), text_queries=tuning)
    assert isinstance(faiss.downcast_index(ann.index.index), faiss.IndexRefine)
    assert ann.search_param["k_factor"] == 8 and ann.recall >= 0.95
    faiss_index.save(ann, tmp_path / "reduced.index")
    reloaded = faiss_index.load(tmp_path / "reduced.index", "hnsw", ann.search_param)
    exact_scores, exact_positions = faiss_index.exact_topk(queries, vectors, 10)
    for index in (ann, reloaded):
        scores, found = faiss_index.search(index, queries, 10)
        assert faiss_index.recall_at_k(scores, exact_scores, 10) >= 0.95
        # returned scores are the full-dimension inner products, not the reduced ones
        np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, vectors[found[:, 0] - 50]), atol=1e-5)
    assert (faiss_index.search(reloaded, queries, 10)[1] == faiss_index.search(ann, queries, 10)[1]).all()
    narrow = faiss_index.search(ann, queries, 10, {"efSearch": 10, "k_factor": 1})[0]  # the per-call setting reaches the graph
    assert faiss_index.recall_at_k(narrow, exact_scores, 10) < faiss_index.recall_at_k(faiss_index.search(ann, queries, 10)[0], exact_scores, 10)


def test_switching_to_a_reduced_hnsw_rebuilds_faiss_only_and_searches_the_same(built, source, tmp_path):
    out = tmp_path / "INDEX"
    shutil.copytree(built[0], out)
    report = build_index(config(source, out, kind="hnsw", reduce_dim=32))
    assert report["encoded"] == 0 and report["kind"] == {"pedestrian": "hnsw", "vehicle": "hnsw"}
    entries = json.loads((out / "index.json").read_text())["faiss"]["indexes"]
    assert {entry["structure"] for entry in entries.values()} == {"HNSW32 on 32 principal directions + exact re-scoring"}
    with Retriever.open(built[0]) as flat, Retriever.open(out) as reduced:
        for query in ("This is a white Audi.", "A man with a backpack."):
            assert_same_results([reduced.search(query, k=10)], [flat.search(query, k=10)])  # 40 images: every candidate re-scored exactly


def test_ivfpq_is_compressed_and_reaches_recall_measured_by_exact_rescoring(tmp_path):
    drawn = _power_law_vectors(12_400, 64, seed=2)
    vectors, tuning, queries = drawn[:12_000], drawn[12_000:12_200], drawn[12_200:]
    ids = np.arange(12_000) * 3
    ann = faiss_index.build(vectors, ids, faiss_index.AnnConfig(kind="ivfpq", recall_queries=0), text_queries=tuning)
    assert ann.kind == "ivfpq" and ann.structure().startswith("IVF") and "PQ8 codes" in ann.structure()
    assert ann.recall >= 0.95 and ann.search_param["k_factor"] in (32, 128)
    _, found = faiss_index.search(ann, queries, 10)
    exact_scores, exact_positions = faiss_index.exact_topk(queries, vectors, 10)
    assert np.mean([len(set(f) & set(ids[e])) / 10 for f, e in zip(found, exact_positions)]) >= 0.93  # independent queries
    flat = faiss_index.build(vectors, ids, faiss_index.AnnConfig(kind="flat"))
    faiss_index.save(ann, tmp_path / "pq.index")
    faiss_index.save(flat, tmp_path / "flat.index")
    assert (tmp_path / "pq.index").stat().st_size < 0.5 * (tmp_path / "flat.index").stat().st_size
    reloaded = faiss_index.load(tmp_path / "pq.index", "ivfpq", ann.search_param)
    assert (faiss_index.search(reloaded, queries, 10)[1] == found).all()
    assert faiss_index.build(vectors[:500], ids[:500], faiss_index.AnnConfig(kind="ivfpq")).kind == "flat"  # too few to train codebooks
    assert [faiss_index.pq_code_bytes(d) for d in (512, 1280, 100, 4)] == [64, 160, 10, 1]


def test_report_warns_when_recall_is_under_the_target(built):
    _, report = built
    assert "warning" not in format_report(report)
    assert "warning: recall@10 0.800 is under the target 0.95" in format_report({**report, "recall@10": 0.8})


def test_reduced_graph_that_misses_the_target_is_rebuilt_on_full_vectors():
    import faiss

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 128)).astype(np.float32)  # isotropic: 16 directions hold 1/8 of the variance
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = faiss_index.build(vectors, np.arange(3000), faiss_index.AnnConfig(kind="hnsw", reduce_dim=16))
    assert isinstance(faiss.downcast_index(ann.index.index), faiss.IndexHNSWFlat)
    assert ann.recall >= 0.95 and "k_factor" not in ann.search_param


def test_config_errors_are_one_line(source, tmp_path):
    for overrides, message in ((dict(images=tmp_path / "missing"), "gallery directory not found"), (dict(kind="annoy"), "kind must be one of"),
                               (dict(shard_size=0), "shard_size must be at least 1"), (dict(labels=tmp_path / "missing.txt"), "label file not found"),
                               (dict(device="gpu"), "device must be"), (dict(recall_target=1.5), "recall_target must be at most 1"),
                               (dict(checkpoint=None), "index needs --checkpoint")):
        with pytest.raises(TrafficRetrievalError, match=message):
            build_index(config(source, tmp_path / "INDEX", **overrides))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrafficRetrievalError, match="no images"):
        build_index(config(source, tmp_path / "INDEX", tmp_path / "empty"))
    with pytest.raises(TrafficRetrievalError, match="not an index"):
        Retriever.open(tmp_path / "INDEX", device="cpu")  # created, never finished


def test_query_recipe_in_search_and_retriever(built):
    """``--gallery-scope all`` ranks a routed query against every category (the seed's); the text form
    rewrites it first; the info reports the recipe applied."""
    from traffic_retrieval.commands import search
    from traffic_retrieval.retrieval.queries import QueryConfig

    out, _ = built
    with Retriever.open(out, device="cpu", query_config=QueryConfig(gallery_scope="all", text_form="a3r", router="a3r")) as everywhere:
        assert everywhere.info()["query_recipe"] == {"text_form": "a3r", "router": "a3r", "gallery_scope": "all"}
        assert everywhere.query_config.text_form == "a3r"
        found = everywhere.search("This is a white Audi.", k=40)
        assert len(found) == 40 and {r.category for r in found} == {"pedestrian", "vehicle"}  # the whole gallery
        assert len(everywhere.search("This is a white Audi.", k=40, category="vehicle")) == 16  # an explicit category still filters
    with Retriever.open(out, device="cpu") as routed:
        assert routed.info()["query_recipe"]["gallery_scope"] == "routed"
        assert {r.category for r in routed.search("This is a white Audi.", k=40)} == {"vehicle"}
    result = search.run(search.SearchConfig(text=["This is a white Audi."], index=out, k=40, device="cpu", query=QueryConfig(gallery_scope="all")))
    assert len(result["searches"][0]["results"]) == 40
