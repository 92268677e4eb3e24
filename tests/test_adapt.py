"""Transfer to the camera domain (issue #14): centring the gallery (``retrieval/adapt.py``),
the soft gallery scope (``retrieval/search.py``), the routing report, and both through
predict, the index build and ``Retriever``."""

import json

import numpy as np
import pytest
import torch

from tests.tiny_gallery import build_tiny_index, make_tiny_gallery
from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.adapt import adapt_gallery, apply_gallery_norm, format_routing, gallery_mean, routing_accuracy
from traffic_retrieval.retrieval.queries import RECIPE_KEY, QueryConfig, query_recipe, resolve_query_config
from traffic_retrieval.retrieval.search import (DEFAULT_ROUTING_PENALTY, ExactGallerySearch, search_routed, search_scoped, search_soft,
                                                search_targets)

normalize = torch.nn.functional.normalize


# -- centring ------------------------------------------------------------------------
def test_centring_removes_the_mean_and_keeps_unit_length():
    generator = torch.Generator().manual_seed(0)
    offset = normalize(torch.randn(16, generator=generator), dim=0)
    gallery = normalize(3 * offset + torch.randn(50, 16, generator=generator), dim=1)
    mean = gallery_mean(gallery)
    assert torch.allclose(mean, gallery.mean(dim=0), atol=1e-6)
    centred = apply_gallery_norm(gallery, mean)
    assert torch.allclose(centred.norm(dim=1), torch.ones(50), atol=1e-5)
    # each row points along (x - mean): rescaled by |x - mean| they sum to zero
    assert torch.allclose((centred * (gallery - mean).norm(dim=1, keepdim=True)).sum(dim=0), torch.zeros(16), atol=1e-4)
    assert gallery_mean(centred * (gallery - mean).norm(dim=1, keepdim=True)).abs().max() < 1e-5
    # numpy in, numpy out, the same numbers
    as_numpy = apply_gallery_norm(gallery.numpy(), gallery_mean(gallery.numpy()))
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, centred.numpy(), atol=1e-5)
    assert adapt_gallery(gallery, "none") is gallery
    assert torch.allclose(adapt_gallery(gallery, "center"), centred)
    assert gallery_mean(torch.zeros((0, 16))).shape == (16,)
    with pytest.raises(TrafficRetrievalError, match="gallery_norm must be one of none, center, got 'whiten'"):
        adapt_gallery(gallery, "whiten")


def test_centring_recovers_the_ranking_a_shared_offset_spoils():
    """Camera crops share an offset direction (e0) whose strength varies; raw cosine ranks a
    clean image that half matches above the heavy-offset image that matches."""
    e = torch.eye(5)
    gallery = normalize(torch.stack([
        4 * e[0] + e[1],  # 0: the relevant image (e1), a heavy camera offset
        0.5 * e[0] + 0.5 * e[1] + e[2],  # 1: a cleaner image that half matches
        4 * e[0] + e[3], 4 * e[0] - e[3], 4 * e[0] + e[4], 4 * e[0] - e[4],  # other camera crops
    ]), dim=1)
    query = e[1][None]
    raw = ExactGallerySearch(gallery, ["vehicle"] * 6).search(query, 2, "vehicle")[0]
    centred = ExactGallerySearch(adapt_gallery(gallery, "center"), ["vehicle"] * 6).search(query, 2, "vehicle")[0]
    assert [image for image, _ in raw] == [1, 0]
    assert [image for image, _ in centred] == [0, 1]
    assert centred[0][1] - centred[1][1] > 0.2


# -- soft routing ----------------------------------------------------------------------
def _misrouted_gallery():
    """Vehicle-like images 0-2 and pedestrian-like 3-5; image 2 is a vehicle the router put
    among pedestrians. The vehicle query matches image 2 best."""
    e = torch.eye(4)
    embeddings = normalize(torch.stack([
        e[0] + 0.6 * e[2], e[0] + 0.8 * e[3], e[0] + 0.1 * e[2],  # 2 is the best match of query 0
        e[1] + 0.5 * e[2], e[1] + 0.3 * e[3], e[1] - 0.3 * e[3],
    ]), dim=1)
    categories = ["vehicle", "vehicle", "pedestrian", "pedestrian", "pedestrian", "pedestrian"]
    queries = normalize(torch.stack([e[0], e[1] + 0.2 * e[2]]), dim=1)
    return ExactGallerySearch(embeddings, categories), queries, ["vehicle", "pedestrian"]


def test_soft_scope_reaches_a_misrouted_image():
    gallery, queries, routed = _misrouted_gallery()
    hard = search_scoped(gallery, queries, routed, 3, "routed")
    assert 2 not in [image for image, _ in hard[0]] and len(hard[0]) == 2  # hidden: the vehicle query never sees image 2
    soft = search_scoped(gallery, queries, routed, 3, "soft", 0.05)
    assert soft[0][0][0] == 2  # its raw score beats the routed images by more than the penalty
    assert [image for image, _ in soft[0]][:3] == [2, 0, 1]
    # the reported scores are the penalised ones: image 2 lies outside the vehicle category
    raw_score_2 = float(queries[0] @ gallery.embeddings[2])
    assert soft[0][0][1] == pytest.approx(raw_score_2 - 0.05, abs=1e-6)


def test_soft_penalty_zero_is_scope_all_and_a_huge_penalty_keeps_the_routed_order():
    gallery, queries, routed = _misrouted_gallery()
    for k in (1, 3, 6, 10):
        everywhere = search_routed(gallery, queries, search_targets(routed, gallery.categories(), "all"), k)
        assert search_soft(gallery, queries, routed, k, 0.0) == everywhere
        assert search_scoped(gallery, queries, routed, k, "all") == everywhere
        routed_hits = search_routed(gallery, queries, search_targets(routed, gallery.categories(), "routed"), k)
        assert search_scoped(gallery, queries, routed, k, "routed") == routed_hits
        huge = search_soft(gallery, queries, routed, k, 100.0)
        for row, (soft_row, hard_row) in enumerate(zip(huge, routed_hits)):
            assert len(soft_row) == min(k, 6)  # nothing is hidden: the other category fills up the k
            assert [image for image, _ in soft_row[: len(hard_row)]] == [image for image, _ in hard_row]
            assert all(gallery_category(gallery, image) != routed[row] for image, _ in soft_row[len(hard_row):])
    assert search_soft(gallery, queries[:0], [], 5) == []


def gallery_category(gallery: ExactGallerySearch, image: int) -> str:
    return next(category for category, rows in gallery._rows.items() if image in rows.tolist())


def test_soft_scope_with_a_routed_category_that_has_no_images_ranks_as_all():
    gallery, queries, _ = _misrouted_gallery()
    assert search_soft(gallery, queries, ["bicycle", "bicycle"], 4, 0.05) == search_scoped(gallery, queries, ["bicycle", "bicycle"], 4, "all")


# -- the recipe ---------------------------------------------------------------------------
def test_recipe_fields_resolve_from_flags_then_checkpoint_then_defaults():
    default = resolve_query_config(QueryConfig())
    assert (default.gallery_norm, default.routing_penalty) == ("none", DEFAULT_ROUTING_PENALTY)
    assert query_recipe(default) == {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "routed"}  # today's: three keys
    recorded = {RECIPE_KEY: {"gallery_scope": "soft", "gallery_norm": "center", "routing_penalty": 0.1}}
    resolved = resolve_query_config(QueryConfig(), recorded)
    assert (resolved.gallery_scope, resolved.gallery_norm, resolved.routing_penalty) == ("soft", "center", 0.1)
    assert query_recipe(resolved) == {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "soft", "gallery_norm": "center",
                                      "routing_penalty": 0.1}
    flagged = resolve_query_config(QueryConfig(gallery_norm="none", routing_penalty=0.0), recorded)
    assert (flagged.gallery_norm, flagged.routing_penalty) == ("none", 0.0)
    junk = resolve_query_config(QueryConfig(), {RECIPE_KEY: {"gallery_norm": "<x>", "routing_penalty": float("nan")}})
    assert (junk.gallery_norm, junk.routing_penalty) == ("none", DEFAULT_ROUTING_PENALTY)


# -- routing report -----------------------------------------------------------------------
def test_routing_accuracy_counts():
    predicted = ["vehicle", "pedestrian", "pedestrian", "vehicle", "pedestrian", "pedestrian"]
    truth = ["vehicle", "vehicle", "pedestrian", "vehicle", "pedestrian", "vehicle"]
    report = routing_accuracy(predicted, truth)
    assert report["images"] == 6 and report["correct"] == 4 and report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_category"] == {"pedestrian": {"images": 2, "correct": 2, "accuracy": 1.0},
                                      "vehicle": {"images": 4, "correct": 2, "accuracy": 0.5}}
    assert report["confusion"] == {"pedestrian": {"pedestrian": 2}, "vehicle": {"pedestrian": 2, "vehicle": 2}}
    assert format_routing(report) == "routing accuracy 0.667 over 6 images (pedestrian 1.000 of 2, vehicle 0.500 of 4)"
    assert routing_accuracy([], [])["accuracy"] is None
    with pytest.raises(TrafficRetrievalError, match="2 predicted categories but 1 true ones"):
        routing_accuracy(["vehicle", "vehicle"], ["vehicle"])


# -- through the index and predict ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    source = make_tiny_gallery(root, seed=3, test_pedestrians=10, test_vehicles=8)
    build_tiny_index(source, root / "index_raw")
    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index

    report = build_index(IndexConfig(images=source["gallery"], checkpoint=source["checkpoint"], out=root / "index_center", labels=source["labels"],
                                     workers=0, progress=False, device="cpu", gallery_norm="center"))
    assert report["gallery_norm"] == "center"
    return source


def _random_queries(dim: int, n: int = 7):
    return normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(1)), dim=1)


@pytest.mark.parametrize("name, norm", [("index_raw", "none"), ("index_center", "center")])
def test_exact_and_faiss_soft_search_agree(tiny, name, norm):
    from traffic_retrieval.index import read_indexed_gallery
    from traffic_retrieval.index.faiss_search import FaissGallerySearch

    indexed = read_indexed_gallery(tiny["root"] / name)
    faiss_info = indexed.info["faiss"]
    assert faiss_info["gallery_norm"] == norm and len(faiss_info["gallery_mean"]) == indexed.info["dim"]
    assert np.allclose(faiss_info["gallery_mean"], gallery_mean(indexed.embeddings).numpy(), atol=1e-6)
    exact = ExactGallerySearch(adapt_gallery(indexed.embeddings, norm), indexed.categories, list(indexed.ids))
    approximate = FaissGallerySearch.load(tiny["root"] / name, faiss_info, indexed.info["dim"])
    assert approximate.categories() == exact.categories() == ["pedestrian", "vehicle"]
    queries = _random_queries(indexed.info["dim"])
    routed = ["vehicle", "pedestrian", "vehicle", "vehicle", "pedestrian", "pedestrian", "vehicle"]
    for scope in ("routed", "all", "soft"):
        for k in (3, 12, 40):
            want = search_scoped(exact, queries, routed, k, scope, 0.05)
            got = search_scoped(approximate, queries, routed, k, scope, 0.05)
            assert [[image for image, _ in row] for row in got] == [[image for image, _ in row] for row in want], (scope, k)
            assert np.allclose([s for row in got for _, s in row], [s for row in want for _, s in row], atol=1e-4)


def test_the_retriever_follows_the_index_and_refuses_another_gallery_norm(tiny):
    from traffic_retrieval.index import Retriever

    with Retriever.open(tiny["root"] / "index_center", device="cpu", query_config=QueryConfig(gallery_scope="soft", routing_penalty=0.2)) as retriever:
        assert retriever.info()["gallery_norm"] == "center" and retriever.query_config.gallery_norm == "center"
        assert retriever.info()["query_recipe"] == {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "soft", "routing_penalty": 0.2}
        results = retriever.search("This is a white Audi.", k=30)
        assert len(results) == 18  # soft: every image reachable
        first = results[0].id
        own = retriever.search_image(first, k=3)
        assert own[0].id == first and own[0].score == pytest.approx(1.0, abs=1e-3)  # centred like the gallery: itself scores 1
    with Retriever.open(tiny["root"] / "index_raw", device="cpu") as retriever:
        assert retriever.info()["gallery_norm"] == "none"
        assert len(retriever.search("This is a white Audi.", k=30)) == 8  # routed: the vehicles only
    with pytest.raises(TrafficRetrievalError) as refused:
        Retriever.open(tiny["root"] / "index_raw", device="cpu", query_config=QueryConfig(gallery_norm="center"))
    message = str(refused.value)
    assert "\n" not in message and "gallery_norm none" in message and "--gallery-norm center" in message


def test_changing_the_gallery_norm_of_an_index_rebuilds_only_faiss(tiny, tmp_path):
    import shutil

    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index

    out = tmp_path / "index"
    shutil.copytree(tiny["root"] / "index_raw", out)
    settings = dict(images=tiny["gallery"], checkpoint=tiny["checkpoint"], out=out, labels=tiny["labels"], workers=0, progress=False, device="cpu")
    assert build_index(IndexConfig(**settings))["faiss_rebuilt"] is False
    centred = build_index(IndexConfig(**settings, gallery_norm="center"))
    assert centred["encoded"] == 0 and centred["faiss_rebuilt"] is True and centred["gallery_norm"] == "center"
    assert json.loads((out / "index.json").read_text())["faiss"]["gallery_norm"] == "center"
    assert build_index(IndexConfig(**settings, gallery_norm="center"))["faiss_rebuilt"] is False
    # an index.json that says center without a mean is refused in one line
    info = json.loads((out / "index.json").read_text())
    del info["faiss"]["gallery_mean"]
    (out / "index.json").write_text(json.dumps(info))
    from traffic_retrieval.index.store import IndexLayout

    with pytest.raises(TrafficRetrievalError, match=r"faiss.gallery_mean: missing \(required with gallery_norm center\)"):
        IndexLayout(out).read_index_json()


def _predict(tiny, out, *flags):
    return main(["predict", "--data", str(tiny["root"] / "data"), "--checkpoint", str(tiny["checkpoint"]), "--out", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu", *flags])


def test_predict_with_a_centred_gallery_and_the_soft_scope(tiny, tmp_path, capsys):
    assert _predict(tiny, tmp_path / "soft.json", "--gallery-norm", "center", "--gallery-scope", "soft", "--top-k", "18") == 0
    printed = capsys.readouterr().out
    assert "gallery scope soft (penalty 0.05), gallery norm center" in printed
    assert "gallery routing accuracy" in printed and "over 18 images" in printed
    results = json.loads((tmp_path / "soft.json").read_text())["results"]
    queries = (tiny["root"] / "data" / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines()
    assert [r["text"] for r in results] == queries
    assert all(len(r["image_names"]) == 18 for r in results)  # soft: the whole gallery reachable from every query

    # penalty 0 is scope all; re-ranking runs on the centred embeddings and their centred flips
    assert _predict(tiny, tmp_path / "zero.json", "--gallery-norm", "center", "--gallery-scope", "soft", "--routing-penalty", "0") == 0
    assert _predict(tiny, tmp_path / "all.json", "--gallery-norm", "center", "--gallery-scope", "all") == 0
    assert json.loads((tmp_path / "zero.json").read_text()) == json.loads((tmp_path / "all.json").read_text())
    assert _predict(tiny, tmp_path / "rerank.json", "--gallery-norm", "center", "--gallery-scope", "soft", "--rerank") == 0

    # centring changes the ranking (the tiny random model's gallery is far from centred)
    assert _predict(tiny, tmp_path / "raw_all.json", "--gallery-scope", "all") == 0
    assert json.loads((tmp_path / "raw_all.json").read_text()) != json.loads((tmp_path / "all.json").read_text())

    # from an index: the same centring applied to its stored embeddings
    assert _predict(tiny, tmp_path / "indexed.json", "--gallery-norm", "center", "--gallery-scope", "soft", "--top-k", "18",
                    "--index", str(tiny["root"] / "index_raw")) == 0


def test_predict_reports_routing_accuracy_from_the_labels(tiny, tmp_path):
    from traffic_retrieval.commands.predict import PredictConfig, run
    from traffic_retrieval.data.labels import read_label_file

    summary = run(PredictConfig(data=tiny["root"] / "data", checkpoint=tiny["checkpoint"], out=tmp_path / "s.json", workers=0, progress=False,
                                device="cpu"))
    routing = summary["gallery_routing"]
    records, _ = read_label_file(tiny["labels"])
    assert routing["images"] == len(records) == 18 and routing["unlabelled"] == 0
    assert sum(routing["per_category"][c]["images"] for c in routing["per_category"]) == 18
    assert sum(n for row in routing["confusion"].values() for n in row.values()) == 18
    assert summary["query_recipe"] == {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "routed"}
    # predicted categories are those the summary counts per category
    predicted = {}
    for row in routing["confusion"].values():
        for category, n in row.items():
            predicted[category] = predicted.get(category, 0) + n
    assert predicted == summary["gallery_per_category"]


@pytest.mark.parametrize("argv, message", [
    (["predict", "--data", "D", "--checkpoint", "X.pt", "--gallery-scope", "bogus"], "gallery_scope must be one of routed, all, soft, got 'bogus'"),
    (["predict", "--data", "D", "--checkpoint", "X.pt", "--gallery-norm", "whiten"], "gallery_norm must be one of none, center, got 'whiten'"),
    (["predict", "--data", "D", "--checkpoint", "X.pt", "--routing-penalty", "-1"], "routing_penalty must be zero or more"),
    (["search", "--index", "I", "q", "--gallery-scope", "bogus"], "gallery_scope must be one of routed, all, soft"),
    (["index", "--images", "I", "--checkpoint", "X.pt", "--out", "O", "--gallery-norm", "bogus"], "gallery_norm must be one of none, center"),
])
def test_bad_adaptation_settings_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
