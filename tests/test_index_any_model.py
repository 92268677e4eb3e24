"""Indexing with any open_clip model, zero-shot (``index --model NAME --pretrained TAG|FILE``):
the index records the model (name, tag or weights file by sha256), ``Retriever.open`` loads it
and refuses another, a build refuses to add to an index with another model, index.json's new
fields are checked, an index.json of format 1 (checkpoint only) still opens, a model an index
names loads nothing from elsewhere unless trusted, and ``Retriever.embeddings`` gives the
stored vectors row for row with their metadata.

Routine tests use TR-Tiny-RN weights files (``torch.save(model.state_dict())``, as open_clip
saves weights); one end-to-end test indexes, searches and serves with a ViT-B-32 weights file.
"""

import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from traffic_retrieval.cli import main
from traffic_retrieval.commands.index import IndexConfig
from traffic_retrieval.commands.index import run as build_index
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.index import Retriever, read_indexed_gallery
from traffic_retrieval.index.store import IndexStore
from traffic_retrieval.io import atomic_torch_save, file_sha256
from traffic_retrieval.model.factory import checkpoint_payload, create_model
from traffic_retrieval.synth import SynthConfig, generate_dataset


def save_weights(model_name: str, seed: int, path: Path) -> Path:
    """A randomly initialised open_clip model's weights, saved as open_clip saves them."""
    import open_clip

    from traffic_retrieval.model.factory import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(model_name).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A synthetic gallery (14 pedestrians, 10 vehicles) with labels, two TR-Tiny-RN weights files and a checkpoint."""
    root = tmp_path_factory.mktemp("any_model")
    generate_dataset(SynthConfig(out=root / "data", seed=3, train_pedestrians=2, train_vehicles=2, val_pedestrians=0, val_vehicles=0,
                                 test_pedestrians=14, test_vehicles=10, workers=1), progress=False)
    torch.manual_seed(0)
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), root / "tiny.pt")
    return {"root": root, "gallery": root / "data" / "test" / "test_images", "labels": root / "data" / "ground_truth" / "test_label.txt",
            "weights": save_weights("TR-Tiny-RN", 0, root / "weights_a.pt"), "other_weights": save_weights("TR-Tiny-RN", 1, root / "weights_b.pt"),
            "checkpoint": root / "tiny.pt"}


def config(source, out, **overrides) -> IndexConfig:
    values = dict(images=source["gallery"], model="TR-Tiny-RN", pretrained=str(source["weights"]), out=out, shard_size=8, batch_size=8, workers=0,
                  progress=False, device="cpu", precision="fp32")
    return IndexConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def zero_shot(source, tmp_path_factory):
    """A zero-shot index of the gallery without labels: every category is the model's vote."""
    out = tmp_path_factory.mktemp("zero_shot") / "INDEX"
    return out, build_index(config(source, out))


@pytest.fixture(scope="module")
def from_checkpoint(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("from_checkpoint") / "INDEX"
    build_index(config(source, out, model=None, pretrained=None, checkpoint=source["checkpoint"], labels=source["labels"]))
    return out


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def edit_info(index: Path, change) -> None:
    info = json.loads((index / "index.json").read_text())
    change(info)
    (index / "index.json").write_text(json.dumps(info))


def test_zero_shot_index_records_the_model_and_routes_like_predict(zero_shot, source, monkeypatch):
    from traffic_retrieval.retrieval.encode import ZERO_SHOT_CATEGORY_TEXTS, gallery_categories

    out, report = zero_shot
    assert report["count"] == 24 and report["encoded"] == 24 and sum(report["categories"].values()) == 24
    info = json.loads((out / "index.json").read_text())
    sha = file_sha256(source["weights"])
    assert info["format"] == "traffic-retrieval-index/2" and info["checkpoint"] is None and info["model"] == "TR-Tiny-RN" and info["identity"] == sha
    assert info["source"] == {"kind": "pretrained", "model": "TR-Tiny-RN", "weights": "file", "pretrained": str(source["weights"].resolve()),
                              "sha256": sha}
    assert info["config"]["model"] == "TR-Tiny-RN" and info["config"]["checkpoint"] is None
    with IndexStore(out / "meta.sqlite", readonly=True) as store:
        assert store.meta("source") == info["source"] and store.meta("identity") == sha and store.meta("checkpoint") is None
    # categories: predict's function (prompts, as the model has no stored captions) over the stored embeddings
    loaded = create_model("TR-Tiny-RN", str(source["weights"]), None, "cpu")
    assert "category_texts" not in (loaded.checkpoint or {})
    gallery = read_indexed_gallery(out)
    assert gallery.categories == gallery_categories(loaded, gallery.embeddings, "cpu", None)
    assert set(gallery.categories) <= set(ZERO_SHOT_CATEGORY_TEXTS)

    with Retriever.open(out, device="cpu", precision="fp32") as retriever:  # the recorded model, nothing given
        results = retriever.search("a red car", k=5, category="all")
        assert len(results) == 5 and [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        assert retriever.info()["model"] == "TR-Tiny-RN" and retriever.info()["checkpoint"] is None
        query = retriever._queries.encode(["a red car"], ["vehicle"]).embeddings  # the recorded model encodes queries
    from traffic_retrieval.retrieval.encode import encode_texts

    np.testing.assert_allclose(query.numpy(), encode_texts(loaded, ["a red car"], "cpu", None).numpy(), atol=1e-5)


def test_the_build_uses_gallery_categories_for_an_open_clip_model(source, tmp_path, monkeypatch):
    """One routing path: the build calls ``retrieval.encode.gallery_categories``, the function predict uses."""
    import traffic_retrieval.retrieval.encode as encode

    calls = []
    real = encode.gallery_categories

    def spy(loaded, embeddings, device, dtype, **kwargs):
        calls.append((loaded.model_name, len(embeddings), (loaded.checkpoint or {}).get("category_texts")))
        return real(loaded, embeddings, device, dtype, **kwargs)

    monkeypatch.setattr(encode, "gallery_categories", spy)
    build_index(config(source, tmp_path / "INDEX", kind="flat"))
    assert calls == [("TR-Tiny-RN", 24, None)]


def test_opening_with_another_model_is_refused_and_moved_weights_are_found(zero_shot, source, tmp_path):
    out, _ = zero_shot
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(out, device="cpu", pretrained=str(source["other_weights"]))
    assert "not the weights index" in one_line(excinfo) and file_sha256(source["weights"])[:12] in str(excinfo.value)
    with pytest.raises(TrafficRetrievalError) as excinfo:  # refused before anything is loaded
        Retriever.open(out, device="cpu", model="TR-Tiny-ViT", pretrained=str(source["weights"]))
    assert "built with open_clip TR-Tiny-RN" in one_line(excinfo) and "TR-Tiny-ViT" in str(excinfo.value)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(out, device="cpu", checkpoint=source["checkpoint"])
    assert "not a checkpoint" in one_line(excinfo)

    moved = tmp_path / "elsewhere.pt"
    shutil.copy(source["weights"], moved)
    with Retriever.open(out, device="cpu", pretrained=str(moved)) as by_path, Retriever.open(out, device="cpu", model="TR-Tiny-RN") as by_name:
        assert [r.id for r in by_path.search("a man", k=3, category="all")] == [r.id for r in by_name.search("a man", k=3, category="all")]

    copy = tmp_path / "COPY"
    shutil.copytree(out, copy)
    edit_info(copy, lambda info: [info["source"].update(pretrained=str(tmp_path / "gone.pt"))])
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(copy, device="cpu")
    assert "weights file of index" in one_line(excinfo) and "gone.pt" in str(excinfo.value)
    with Retriever.open(copy, device="cpu", pretrained=str(moved)):
        pass


def test_a_build_with_another_model_is_refused(zero_shot, from_checkpoint, source, tmp_path):
    out, _ = zero_shot
    for overrides in (dict(pretrained=str(source["other_weights"])), dict(model=None, pretrained=None, checkpoint=source["checkpoint"]),
                      dict(model="TR-Tiny-ViT", pretrained=str(save_weights("TR-Tiny-ViT", 0, tmp_path / "vit.pt")))):
        with pytest.raises(TrafficRetrievalError) as excinfo:
            build_index(config(source, out, **overrides))
        assert "different model" in one_line(excinfo)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        build_index(config(source, from_checkpoint))  # a checkpoint's index, updated zero-shot
    assert "built with checkpoint" in one_line(excinfo) and "different model" in str(excinfo.value)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(from_checkpoint, device="cpu", model="TR-Tiny-RN", pretrained=str(source["weights"]))
    assert "give that checkpoint" in one_line(excinfo)

    copy = tmp_path / "INDEX"
    shutil.copytree(out, copy)
    moved = tmp_path / "moved.pt"
    shutil.copy(source["weights"], moved)
    report = build_index(config(source, copy, pretrained=str(moved)))  # the same weights elsewhere: nothing to encode
    assert report["encoded"] == 0 and not report["faiss_rebuilt"]
    assert json.loads((copy / "index.json").read_text())["source"]["pretrained"] == str(moved.resolve())


def test_an_index_json_of_format_1_still_opens_and_is_rewritten_by_a_build(from_checkpoint, source, tmp_path):
    """An index written before sources were recorded: format 1, no source in index.json or SQLite."""
    old = tmp_path / "OLD"
    shutil.copytree(from_checkpoint, old)

    def to_format_1(info):
        info["format"] = "traffic-retrieval-index/1"
        del info["source"]
        del info["config"]["model"], info["config"]["pretrained"]

    edit_info(old, to_format_1)
    with sqlite3.connect(old / "meta.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'source'")
    with Retriever.open(from_checkpoint, device="cpu") as current, Retriever.open(old, device="cpu") as upgraded:
        assert [r.id for r in upgraded.search("This is a white Audi.", k=10)] == [r.id for r in current.search("This is a white Audi.", k=10)]
        assert upgraded.info()["identity"] == file_sha256(source["checkpoint"])
    with pytest.raises(TrafficRetrievalError, match="not the checkpoint"):
        Retriever.open(old, device="cpu", checkpoint=make_other_checkpoint(tmp_path))
    with pytest.raises(TrafficRetrievalError, match="different model"):
        build_index(config(source, old))  # zero-shot on a format-1 checkpoint index

    report = build_index(config(source, old, model=None, pretrained=None, checkpoint=source["checkpoint"], labels=source["labels"]))
    assert report["encoded"] == 0
    info = json.loads((old / "index.json").read_text())
    assert info["format"] == "traffic-retrieval-index/2" and info["source"] == {"kind": "checkpoint", "path": str(source["checkpoint"].resolve()),
                                                                                "sha256": file_sha256(source["checkpoint"])}

    edit_info(old, lambda info: [info.update(format="traffic-retrieval-index/1", checkpoint=None), info.pop("source")])
    with pytest.raises(TrafficRetrievalError) as excinfo:  # format 1 always names its checkpoint
        Retriever.open(old, device="cpu")
    assert one_line(excinfo).startswith(f"{old / 'index.json'}: checkpoint: ")


def make_other_checkpoint(root: Path) -> Path:
    torch.manual_seed(1)
    path = root / "other.pt"
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), path)
    return path


SOURCE_CASES = [
    (lambda i: i.pop("source"), "source: missing"),
    (lambda i: i["source"].update(kind="weights"), "source.kind: must be one of checkpoint, pretrained"),
    (lambda i: i["source"].update(weights="url"), "source.weights: must be one of file, tag, model"),
    (lambda i: i["source"].update(sha256="0" * 64), "identity: must be source.sha256"),
    (lambda i: i["source"].update(sha256=None), "source.sha256: must be the weights file's sha256"),
    (lambda i: i["source"].update(pretrained="weights.pt"), "source.pretrained: must be an absolute path"),
    (lambda i: i["source"].update(model="../TR-Tiny-RN"), "model: must be source.model"),
    (lambda i: [i["source"].update(model="../x"), i.update(model="../x")], "source.model: must be a plain open_clip model name"),
    (lambda i: i.update(checkpoint="/somewhere/tiny.pt"), "checkpoint: must be null"),
    (lambda i: i["source"].update(weights="tag", pretrained="a/b", sha256=None), "source.pretrained: must be an open_clip pretrained tag"),
    (lambda i: i["source"].update(weights="model"), "source.model: must be hf-hub:ORG/REPO"),
    (lambda i: i["source"].update(kind="checkpoint", path=i["source"]["pretrained"]), "checkpoint: must be source.path"),
    (lambda i: i.update(source=["pretrained"]), "source: must be an object"),
]


@pytest.mark.parametrize("change, named", SOURCE_CASES, ids=[named.split(":")[0] + f"-{n}" for n, (_, named) in enumerate(SOURCE_CASES)])
def test_index_json_source_fields_are_checked(zero_shot, tmp_path, change, named):
    out = tmp_path / "INDEX"
    shutil.copytree(zero_shot[0], out)
    edit_info(out, change)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(out, device="cpu")
    assert one_line(excinfo).startswith(f"{out / 'index.json'}: {named}"), str(excinfo.value)


@pytest.mark.parametrize("model, weights, pretrained, expected", [
    ("hf-hub:someone/their-model", "model", None, "loads from the Hugging Face Hub or a local folder"),
    ("ViT-B-16-SigLIP", "tag", "webli", "tokenizer is downloaded from the Hugging Face Hub"),
])
def test_a_model_an_index_names_loads_nothing_from_elsewhere_unless_trusted(zero_shot, tmp_path, monkeypatch, model, weights, pretrained, expected):
    import traffic_retrieval.model.factory as factory

    out = tmp_path / "INDEX"
    shutil.copytree(zero_shot[0], out)
    edit_info(out, lambda info: info.update(model=model, identity=f"{model}:{pretrained}",
                                            source={"kind": "pretrained", "model": model, "weights": weights, "pretrained": pretrained, "sha256": None}))
    built = []
    monkeypatch.setattr(factory, "create_model", lambda *args, **kwargs: built.append(args) or (_ for _ in ()).throw(RuntimeError("test: no model")))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(out, device="cpu")
    assert expected in one_line(excinfo) and "--trust-checkpoint" in str(excinfo.value) and built == []
    with pytest.raises(RuntimeError, match="test: no model"):  # trusted: it would load (here: a stub)
        Retriever.open(out, device="cpu", trust_checkpoint=True)
    assert built == [(model, pretrained, None, "cpu")]


@pytest.mark.parametrize("flags, message", [
    (["--model", "TR-Tiny-RN"], "--model 'TR-Tiny-RN' needs --pretrained"),
    (["--pretrained", "WEIGHTS"], "needs --model"),
    (["--model", "TR-Tiny-RN", "--pretrained", "WEIGHTS", "--checkpoint", "CKPT"], "not both"),
    (["--model", "TR-Tiny-RN", "--pretrained", "hf-hub:someone/model"], "give --model 'hf-hub:someone/model' and no --pretrained"),
    (["--model", "hf-hub:someone/model", "--pretrained", "WEIGHTS"], "drop --pretrained"),
    (["--model", "hf-hub:../../etc", ], "not a Hugging Face Hub id"),
    (["--model", "TR-Tiny-RN", "--pretrained", "missing.pt"], "neither a weights file nor a pretrained tag of TR-Tiny-RN"),
    (["--model", "ViT-B-32", "--pretrained", "laion9000"], "neither a weights file nor a pretrained tag of ViT-B-32 (openai, laion400m_e31"),
    (["--model", "No-Such-Model", "--pretrained", "WEIGHTS"], "unknown model 'No-Such-Model'"),
    ([], "index needs --checkpoint (a trained model) or --model and --pretrained"),
])
def test_model_flags_are_checked_with_one_line_errors(source, tmp_path, capsys, flags, message):
    replaced = [str(source["weights"]) if f == "WEIGHTS" else str(source["checkpoint"]) if f == "CKPT" else f for f in flags]
    assert main(["index", "--images", str(source["gallery"]), "--out", str(tmp_path / "INDEX"), "--device", "cpu", "--no-progress"] + replaced) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "INDEX").exists()


def test_embeddings_iterate_the_stored_vectors_row_for_row(from_checkpoint):
    gallery = read_indexed_gallery(from_checkpoint)
    with Retriever.open(from_checkpoint, device="cpu") as retriever:
        batches = list(retriever.embeddings(batch_rows=7))
        assert [len(b) for b in batches] == [7, 7, 7, 3]
        ids = np.concatenate([b.ids for b in batches])
        assert ids.dtype == np.int64 and ids.tolist() == gallery.ids
        vectors = np.concatenate([b.embeddings for b in batches])
        assert vectors.dtype == np.float32 and vectors.shape == (24, 128)
        np.testing.assert_array_equal(vectors, gallery.embeddings.numpy())  # the shards' float16, exactly
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
        names = [n for b in batches for n in b.names]
        paths = [p for b in batches for p in b.paths]
        assert names == gallery.names and paths == [str(p) for p in gallery.paths]
        assert [c for b in batches for c in b.categories] == gallery.categories
        for image_id, label, caption in zip(ids.tolist(), [x for b in batches for x in b.labels], [x for b in batches for x in b.captions]):
            record = retriever.record(image_id)
            assert (record.label, record.caption) == (label, caption) and label and caption
        assert sum(len(b) for b in retriever.embeddings()) == 24
        for bad in (0, -1, 2.5, True):
            with pytest.raises(TrafficRetrievalError, match="batch_rows must be a positive integer"):
                retriever.embeddings(batch_rows=bad)


def test_vit_b_32_weights_file_end_to_end(tmp_path, capsys):
    """``index --model ViT-B-32 --pretrained FILE`` over 6 images, then ``search`` and the server."""
    from fastapi.testclient import TestClient

    from traffic_retrieval.serve.app import ServeSettings, create_app

    started = time.perf_counter()
    generate_dataset(SynthConfig(out=tmp_path / "data", seed=5, train_pedestrians=1, train_vehicles=1, val_pedestrians=0, val_vehicles=0,
                                 test_pedestrians=3, test_vehicles=3, workers=1), progress=False)
    gallery = tmp_path / "data" / "test" / "test_images"
    weights = save_weights("ViT-B-32", 0, tmp_path / "vit_b_32.pt")
    out = tmp_path / "INDEX"
    assert main(["index", "--images", str(gallery), "--model", "ViT-B-32", "--pretrained", str(weights), "--out", str(out), "--workers", "0",
                 "--device", "cpu", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 6 and report["encoded"] == 6
    info = json.loads((out / "index.json").read_text())
    assert info["dim"] == 512 and info["source"]["model"] == "ViT-B-32" and info["source"]["sha256"] == file_sha256(weights)

    assert main(["search", "--index", str(out), "a red car", "-k", "3", "--category", "all", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in printed["results"]] == [1, 2, 3]
    with Retriever.open(out, device="cpu") as retriever:
        with TestClient(create_app(retriever, ServeSettings()), base_url="http://localhost") as client:
            answer = client.get("/api/search", params={"q": "a woman with a backpack", "k": 4, "category": "all"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["count"] == 4
            about = client.get("/api/info")
            assert about.status_code == 200, about.text
            assert about.json()["checkpoint"] is None and about.json()["pretrained"] == "vit_b_32.pt"  # a file's name, never its path
            assert about.json()["checkpoint_sha256"] == file_sha256(weights)
    # search --pretrained names the weights at another path: the same file is accepted, another refused
    moved = tmp_path / "moved.pt"
    moved.write_bytes(weights.read_bytes())
    assert main(["search", "--index", str(out), "a red car", "-k", "1", "--category", "all", "--device", "cpu", "--pretrained", str(moved)]) == 0
    capsys.readouterr()
    other = save_weights("ViT-B-32", 1, tmp_path / "other.pt")
    assert main(["search", "--index", str(out), "a red car", "--device", "cpu", "--pretrained", str(other)]) == 2
    assert "not the weights index" in capsys.readouterr().err
    print(f"ViT-B-32 end to end: {time.perf_counter() - started:.1f} s")


def test_a_pretrained_tag_an_index_names_is_loaded_without_trust(zero_shot, tmp_path, monkeypatch):
    """open_clip's own pinned weights of a known tag: loaded from the index's record (stubbed here: no network)."""
    import traffic_retrieval.model.factory as factory

    out = tmp_path / "INDEX"
    shutil.copytree(zero_shot[0], out)
    edit_info(out, lambda info: info.update(model="ViT-B-32", identity="ViT-B-32:openai",
                                            source={"kind": "pretrained", "model": "ViT-B-32", "weights": "tag", "pretrained": "openai", "sha256": None}))
    built = []
    monkeypatch.setattr(factory, "create_model", lambda *args, **kwargs: built.append(args) or (_ for _ in ()).throw(RuntimeError("test: no model")))
    with pytest.raises(RuntimeError, match="test: no model"):
        Retriever.open(out, device="cpu")
    assert built == [("ViT-B-32", "openai", None, "cpu")]
    with pytest.raises(TrafficRetrievalError) as excinfo:  # another tag: refused before loading
        Retriever.open(out, device="cpu", pretrained="laion2b_s34b_b79k")
    assert "built with open_clip ViT-B-32 pretrained 'openai', not open_clip ViT-B-32 pretrained 'laion2b_s34b_b79k'" in one_line(excinfo)
    edit_info(out, lambda info: [info["source"].update(pretrained="laion9000"), info.update(identity="ViT-B-32:laion9000")])
    with pytest.raises(TrafficRetrievalError) as excinfo:
        Retriever.open(out, device="cpu")
    assert "not a pretrained tag open_clip knows for ViT-B-32" in one_line(excinfo) and len(built) == 1
