"""``query_bank: captions`` (issue #14): querybank normalisation with an inverted softmax,
each gallery image ranked by ``cosine - offset`` against the training captions a
checkpoint stores (``retrieval.adapt.bank_offsets``), through the search wrapper, the
query recipe, predict, training's validation, the index build and ``Retriever``."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch

from tests.tiny_gallery import index_tiny, make_tiny_gallery, predict_tiny, random_images, six_car_val_set
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.adapt import DEFAULT_BANK_BETA, bank_offsets, check_bank_beta
from traffic_retrieval.retrieval.queries import RECIPE_KEY, QueryConfig, query_recipe, resolve_query_config
from traffic_retrieval.retrieval.search import BankNormalisedSearch, ExactGallerySearch, bank_normalised, search_routed

CATEGORY_TEXTS = {"pedestrian": ["A woman with a backpack.", "A man in a long coat.", "A girl under 18 with a hat."],
                  "vehicle": ["This is a white Audi Sedan.", "This is a black Toyota SUV.", "This is a red Balong Heavy Truck."]}


def unit(n, dim=16, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# -- the offsets and the exact search over them -------------------------------------------------
def test_offsets_are_the_inverted_softmax_denominator_per_image():
    gallery, bank = unit(7, seed=1), unit(5, seed=2)
    offsets = bank_offsets(gallery, bank, beta=10, block=3)  # blocks of 3: the same numbers
    expected = [(math.log(sum(math.exp(10 * float(g @ b)) for b in bank)) - math.log(5)) / 10 for g in gallery]
    assert torch.allclose(offsets, torch.tensor(expected), atol=1e-5)
    # cosine minus the offset is, up to a constant, the log of the inverted softmax exp(beta q.g) / sum_b exp(beta b.g)
    query = unit(1, seed=3)[0]
    scores = gallery @ query - offsets
    inverted = torch.exp(10 * (gallery @ query)) / torch.exp(10 * (gallery @ bank.T)).sum(dim=1)
    assert torch.equal(torch.argsort(scores, descending=True), torch.argsort(inverted, descending=True))
    as_numpy = bank_offsets(gallery.numpy(), bank.numpy(), beta=10)
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, offsets.numpy(), atol=1e-6)
    # an image equal to a bank caption and far from the rest has an offset near 1 - log(B)/beta; a hub's exceeds an outlier's
    assert float(bank_offsets(bank[:1], bank, beta=1000)[0]) == pytest.approx(1 - math.log(5) / 1000, abs=1e-3)


@pytest.mark.parametrize("beta", [0, -1, float("nan"), float("inf"), 1001, True, "10"])
def test_a_bad_beta_or_an_empty_bank_is_one_line(beta):
    with pytest.raises(TrafficRetrievalError, match="query_bank_beta must be a number in"):
        check_bank_beta(beta)
    with pytest.raises(TrafficRetrievalError, match="the bank holds no captions"):
        bank_offsets(unit(3), torch.zeros(0, 16))


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_the_wrapped_search_is_exactly_the_ranking_by_cosine_minus_offset(k):
    gallery = unit(60, seed=4)
    queries = unit(9, seed=5)
    categories = ["pedestrian" if i % 3 else "vehicle" for i in range(60)]
    # offsets that turn the cosine order upside down for some images: the search must fetch deeper than 4k
    offsets = torch.rand(60, generator=torch.Generator().manual_seed(6)) * 1.5
    searched = bank_normalised(ExactGallerySearch(gallery, categories), offsets)
    for category in ("pedestrian", "vehicle"):
        rows = [i for i, c in enumerate(categories) if c == category]
        found = searched.search(queries, k, category)
        for query, hits in zip(queries, found):
            scores = {i: float(gallery[i] @ query - offsets[i]) for i in rows}
            best = sorted(scores, key=lambda i: (-scores[i], i))[: min(k, len(rows))]
            assert [image for image, _ in hits] == best
            assert [score for _, score in hits] == pytest.approx([scores[i] for i in best], abs=1e-5)
    merged = search_routed(searched, queries, ["all"] * len(queries), 5)  # across categories: merged by the normalised score
    for query, hits in zip(queries, merged):
        scores = (gallery @ query - offsets).tolist()
        assert [image for image, _ in hits] == sorted(range(60), key=lambda i: (-scores[i], i))[:5]


def test_the_search_fetches_at_most_max_depth_candidates():
    gallery = unit(50, seed=8)
    offsets = torch.rand(50, generator=torch.Generator().manual_seed(9)) * 2
    depths = []

    class Counting(ExactGallerySearch):
        def search(self, query_embeddings, k, category):
            depths.append(k)
            return super().search(query_embeddings, k, category)

    capped = BankNormalisedSearch(Counting(gallery, ["vehicle"] * 50), offsets, max_depth=20)
    hits = capped.search(unit(3, seed=10), 5, "vehicle")
    assert depths == [37] and all(len(row) == 5 for row in hits)  # the first fetch, max(4k, k + 32), is already past the cap: no second
    cosines = gallery @ unit(3, seed=10).T
    for column, row in enumerate(hits):  # the best by cosine minus offset among the 37 nearest by cosine
        nearest = torch.argsort(-cosines[:, column])[:37].tolist()
        best = sorted(nearest, key=lambda i: -(float(cosines[i, column]) - float(offsets[i])))[:5]
        assert [image for image, _ in row] == best


def test_offsets_follow_ids_and_none_leaves_the_search_as_it_is():
    gallery = unit(6, seed=7)
    inner = ExactGallerySearch(gallery, ["vehicle"] * 6, ids=[60, 50, 40, 30, 20, 10])
    assert bank_normalised(inner, None) is inner
    offsets = [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]  # the image of id 10 (position 5) drops to the end
    searched = BankNormalisedSearch(inner, offsets, ids=[60, 50, 40, 30, 20, 10])
    hits = searched.search(gallery[5:6], 6, "vehicle")[0]
    assert hits[-1][0] == 10 and hits[-1][1] == pytest.approx(1 - 5.0, abs=1e-5)
    assert searched.offsets_of([10, 60]) == [5.0, 0.0]
    with pytest.raises(ValueError):
        searched.offsets_of([11])


# -- the query recipe ---------------------------------------------------------------------------
def test_the_recipe_records_the_bank_and_its_beta_only_when_set():
    assert "query_bank" not in query_recipe(resolve_query_config(QueryConfig()))
    banked = resolve_query_config(QueryConfig(), {RECIPE_KEY: {"query_bank": "captions", "query_bank_beta": 20}})
    assert (banked.query_bank, banked.query_bank_beta) == ("captions", 20)
    assert query_recipe(banked) == {**query_recipe(resolve_query_config(QueryConfig())), "query_bank": "captions", "query_bank_beta": 20.0}
    defaulted = resolve_query_config(QueryConfig(query_bank="captions"))
    assert query_recipe(defaulted)["query_bank_beta"] == DEFAULT_BANK_BETA
    tampered = resolve_query_config(QueryConfig(), {RECIPE_KEY: {"query_bank": "os.system", "query_bank_beta": -3}})
    assert (tampered.query_bank, tampered.query_bank_beta) == ("none", DEFAULT_BANK_BETA)  # a tampered recipe: the defaults


def test_validation_ranks_by_the_bank_and_says_so_when_it_has_no_captions(tiny_resnet):
    from traffic_retrieval.train.validate import ValQueries, val_queries, validate

    model = copy.deepcopy(tiny_resnet.model)
    val_set = six_car_val_set(tiny_resnet, random_images(6))
    plain = ValQueries(val_set.tokens, ["vehicle"] * 6, "all", tokenizer=tiny_resnet.tokenizer)
    banked = ValQueries(val_set.tokens, ["vehicle"] * 6, "all", tokenizer=tiny_resnet.tokenizer, query_bank="captions", query_bank_beta=10.0,
                        bank_texts=CATEGORY_TEXTS)
    first, second = (validate(model, val_set, tiny_resnet.preprocess, "cpu", None, q) for q in (plain, banked))
    assert first.keys() == second.keys() and 0 <= second["official_mAP@10"] <= 1
    assert first["t2i_R@10"] == second["t2i_R@10"]  # open_clip's recall: raw embeddings, whatever the ranking
    recipe = resolve_query_config(QueryConfig(query_bank="captions"))
    assert val_queries(val_set, tiny_resnet.tokenizer, recipe, routing_texts=CATEGORY_TEXTS).bank_texts == CATEGORY_TEXTS
    with pytest.raises(TrafficRetrievalError, match="stores no training captions") as refused:
        val_queries(val_set, tiny_resnet.tokenizer, recipe)
    assert "\n" not in str(refused.value)


# -- predict, the index and the retriever ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny gallery, its checkpoint storing captions as a trained one does."""
    from traffic_retrieval.io import atomic_torch_save

    root = tmp_path_factory.mktemp("bank")
    source = make_tiny_gallery(root, seed=9, test_pedestrians=6, test_vehicles=6)
    payload = torch.load(source["checkpoint"], map_location="cpu", weights_only=True)
    atomic_torch_save({**payload, "category_texts": CATEGORY_TEXTS}, root / "trained.pt")
    return {**source, "checkpoint": root / "trained.pt", "bare_checkpoint": source["checkpoint"]}


def manual_scores(tiny, query_bank: bool) -> list[dict]:
    """Each test query's score of every gallery image (by file name), cosine (minus the offset), computed here in fp32."""
    from traffic_retrieval.commands.predict import list_gallery_images, load_model_for_inference
    from traffic_retrieval.retrieval.encode import encode_image_files, encode_texts
    from traffic_retrieval.retrieval.queries import QueryEncoder, read_queries

    loaded = load_model_for_inference(tiny["checkpoint"], None, None, "cpu", False)
    paths = list_gallery_images(tiny["gallery"])
    gallery = encode_image_files(loaded, [str(p) for p in paths], "cpu", None, 64, 0, False).embeddings
    queries = read_queries(tiny["root"] / "data" / "test" / "test_text.txt")
    texts = QueryEncoder(loaded, resolve_query_config(QueryConfig(), loaded.checkpoint), "cpu", None).encode(queries).embeddings
    scores = texts @ gallery.T
    if query_bank:
        bank = encode_texts(loaded, [t for c in sorted(CATEGORY_TEXTS) for t in CATEGORY_TEXTS[c]], "cpu", None)
        scores = scores - bank_offsets(gallery, bank, DEFAULT_BANK_BETA)[None, :]
    return [{path.name: float(score) for path, score in zip(paths, row)} for row in scores]


def assert_top_k(ranked: list[list[str]], scores: list[dict], tolerance: float = 2e-3):
    """Each ranking is a top 10 of its scores: in order, and no image left out scores above its last (up to rounding)."""
    assert len(ranked) == len(scores)
    for names, row in zip(ranked, scores):
        assert len(names) == min(10, len(row))
        values = [row[name] for name in names]
        assert all(a >= b - tolerance for a, b in zip(values, values[1:]))
        assert all(score <= values[-1] + tolerance for name, score in row.items() if name not in names)


def test_predict_ranks_by_cosine_minus_the_offset(tiny, tmp_path, capsys):
    assert predict_tiny(tiny, tmp_path / "bank.json", "--query-bank", "captions", "--precision", "fp32") == 0
    assert "query bank captions (beta 10)" in capsys.readouterr().out
    assert predict_tiny(tiny, tmp_path / "plain.json", "--precision", "fp32") == 0
    assert "query bank" not in capsys.readouterr().out
    bank, plain = ([r["image_names"] for r in json.loads((tmp_path / name).read_text())["results"]] for name in ("bank.json", "plain.json"))
    assert_top_k(plain, manual_scores(tiny, False))
    assert_top_k(bank, manual_scores(tiny, True))
    assert bank != plain


def test_a_model_without_stored_captions_is_refused_in_one_line(tiny, tmp_path, capsys):
    assert predict_tiny({**tiny, "checkpoint": tiny["bare_checkpoint"]}, tmp_path / "x.json", "--query-bank", "captions") == 2
    err = capsys.readouterr().err
    assert "stores no training captions" in err and "--query-bank none" in err and "Traceback" not in err
    assert predict_tiny(tiny, tmp_path / "y.json", "--query-bank", "captions", "--query-bank-beta", "0") == 2
    assert "query_bank_beta must be at least 0.001" in capsys.readouterr().err


def test_an_index_refuses_a_bank_without_captions_before_encoding(tiny, tmp_path, capsys):
    out = tmp_path / "index"
    assert index_tiny({**tiny, "checkpoint": tiny["bare_checkpoint"]}, out, "--query-bank", "captions") == 2
    assert "stores no training captions" in capsys.readouterr().err
    assert not list((out / "shards").glob("*")) if (out / "shards").exists() else True  # nothing was encoded


def test_an_index_keeps_the_offsets_and_the_retriever_ranks_as_predict(tiny, tmp_path, capsys):
    from traffic_retrieval.index import Retriever
    from traffic_retrieval.retrieval.queries import read_queries

    gallery = tmp_path / "gallery"
    shutil.copytree(tiny["gallery"], gallery)
    out = tmp_path / "index"
    assert index_tiny(tiny, out, "--query-bank", "captions", "--kind", "flat", "--precision", "fp32", gallery=gallery) == 0
    assert "query bank captions" in capsys.readouterr().out
    info = json.loads((out / "index.json").read_text())
    record = info["faiss"]["bank_offsets"]
    assert info["query_bank"] == info["faiss"]["query_bank"] == "captions" and info["faiss"]["query_bank_beta"] == DEFAULT_BANK_BETA
    assert record["count"] == 12 and (out / record["file"]).is_file()

    queries = read_queries(tiny["root"] / "data" / "test" / "test_text.txt")
    with Retriever.open(out, device="cpu", query_config=QueryConfig(gallery_scope="all"), precision="fp32") as retriever:
        assert retriever.info()["query_bank"] == "captions" and retriever.query_config.query_bank == "captions"
        found = retriever.search_batch(queries, k=10)
        assert_top_k([[result.name for result in row] for row in found], manual_scores(tiny, True), tolerance=5e-3)  # the index stores float16
        own = retriever.search_image(found[0][0].id, k=1)  # image queries rank by cosine: an image still finds itself at 1
        assert own[0].id == found[0][0].id and own[0].score == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(TrafficRetrievalError, match="with query_bank captions, the query recipe asks for none"):
        Retriever.open(out, device="cpu", query_config=QueryConfig(query_bank="none"))
    with pytest.raises(TrafficRetrievalError, match="with query_bank_beta 10.0, the query recipe asks for 20"):
        Retriever.open(out, device="cpu", query_config=QueryConfig(query_bank_beta=20.0))

    # turning it off rebuilds only FAISS and removes the offsets file
    capsys.readouterr()
    assert index_tiny(tiny, out, "--query-bank", "none", "--kind", "flat", "--precision", "fp32", "--json", gallery=gallery) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoded"] == 0 and report["faiss_rebuilt"] and report["query_bank"] == "none"
    assert not (out / record["file"]).exists() and "bank_offsets" not in json.loads((out / "index.json").read_text())["faiss"]


def test_tampered_offsets_or_their_record_are_refused_in_one_line(tiny, tmp_path):
    from safetensors.numpy import save_file

    from traffic_retrieval.index import Retriever

    out = tmp_path / "index"
    assert index_tiny(tiny, out, "--query-bank", "captions") == 0
    info = json.loads((out / "index.json").read_text())
    offsets_file = out / info["faiss"]["bank_offsets"]["file"]
    original = offsets_file.read_bytes()

    def refused(pattern):
        with pytest.raises(TrafficRetrievalError, match=pattern) as caught:
            Retriever.open(out, device="cpu")
        assert "\n" not in str(caught.value)

    save_file({"ids": np.arange(12, dtype=np.int64), "offsets": np.full(12, -100, dtype=np.float32)}, str(offsets_file))
    refused("sha256 differs")
    offsets_file.unlink()
    refused("missing")
    offsets_file.write_bytes(original)
    for field, value, pattern in (("file", "../../etc/passwd", "bank_offsets.file"), ("count", 5, "bank_offsets.count"),
                                  ("sha256", "x", "bank_offsets.sha256")):
        tampered = copy.deepcopy(info)
        tampered["faiss"]["bank_offsets"][field] = value
        (out / "index.json").write_text(json.dumps(tampered))
        refused(pattern)
    for key, value, pattern in (("query_bank", "eval", "faiss.query_bank"), ("query_bank_beta", float("inf"), "query_bank_beta")):
        tampered = copy.deepcopy(info)
        tampered["faiss"][key] = value
        (out / "index.json").write_text(json.dumps(tampered))
        refused(pattern)
    (out / "index.json").write_text(json.dumps(info))
    with Retriever.open(out, device="cpu") as retriever:
        assert retriever.search("This is a white Audi.", k=3)
