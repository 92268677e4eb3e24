"""``image_tta: flip`` (issue #14): every image encoded for retrieval as the mean of its and
its mirror image's embeddings (``retrieval.encode.encode_uint8_images``), through the query
recipe, predict, training's validation, the index build (``index/encoding.py``) and
``Retriever``."""

import copy
import json
import shutil

import pytest
import torch

from tests.tiny_gallery import index_tiny, make_tiny_gallery, predict_tiny, random_images, six_car_val_set
from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.encode import encode_uint8_images
from traffic_retrieval.retrieval.queries import RECIPE_KEY, QueryConfig, query_recipe, resolve_query_config


def images(n=5, seed=0):
    return random_images(n, seed)


def test_flip_is_the_normalised_mean_of_both_views_and_mirror_invariant(tiny_resnet):
    model = tiny_resnet.model.eval()
    batch = images()
    plain = encode_uint8_images(model, batch, tiny_resnet.preprocess, "cpu", None)
    mirrored = encode_uint8_images(model, batch.flip(-1), tiny_resnet.preprocess, "cpu", None)
    flip = encode_uint8_images(model, batch, tiny_resnet.preprocess, "cpu", None, batch_size=2, image_tta="flip")  # batches of 2: same result
    assert torch.allclose(flip, torch.nn.functional.normalize(plain + mirrored, dim=-1), atol=1e-5)
    assert torch.allclose(flip.norm(dim=-1), torch.ones(len(batch)), atol=1e-5)
    assert torch.allclose(encode_uint8_images(model, batch.flip(-1), tiny_resnet.preprocess, "cpu", None, image_tta="flip"), flip, atol=1e-5)
    assert (flip - plain).abs().max() > 1e-4  # a random tower is not mirror-symmetric
    with pytest.raises(TrafficRetrievalError, match="image_tta must be one of none, flip, exposure, flip\\+exposure, got 'rotate'"):
        encode_uint8_images(model, batch, tiny_resnet.preprocess, "cpu", None, image_tta="rotate")


def test_the_recipe_records_image_tta_only_when_set():
    assert "image_tta" not in query_recipe(resolve_query_config(QueryConfig()))
    flipped = resolve_query_config(QueryConfig(), {RECIPE_KEY: {"image_tta": "flip"}})
    assert flipped.image_tta == "flip" and query_recipe(flipped)["image_tta"] == "flip"
    assert resolve_query_config(QueryConfig(image_tta="none"), {RECIPE_KEY: {"image_tta": "flip"}}).image_tta == "none"
    assert resolve_query_config(QueryConfig(), {RECIPE_KEY: {"image_tta": ["flip"]}}).image_tta == "none"  # a tampered recipe: the default


def test_validation_encodes_the_val_images_as_the_recipe_says(tiny_resnet):
    from traffic_retrieval.train.validate import ValQueries, validate

    model = copy.deepcopy(tiny_resnet.model)
    val_set = six_car_val_set(tiny_resnet, images(6))
    plain = validate(model, val_set, tiny_resnet.preprocess, "cpu", None, ValQueries(val_set.tokens, ["vehicle"] * 6, "all"))
    flip = validate(model, val_set, tiny_resnet.preprocess, "cpu", None, ValQueries(val_set.tokens, ["vehicle"] * 6, "all", image_tta="flip"))
    assert plain.keys() == flip.keys() and 0 <= flip["official_mAP@10"] <= 1
    assert plain["t2i_R@10"] != flip["t2i_R@10"] or plain["official_mAP@10"] != flip["official_mAP@10"] or plain["recall@10"] != flip["recall@10"]


# -- through predict, the index and the retriever ----------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    return make_tiny_gallery(root, seed=7, test_pedestrians=6, test_vehicles=5)


def test_predict_encodes_the_gallery_with_flips(tiny, tmp_path, capsys):
    assert predict_tiny(tiny, tmp_path / "flip.json", "--image-tta", "flip") == 0
    assert "image TTA flip" in capsys.readouterr().out
    assert predict_tiny(tiny, tmp_path / "flip_rerank.json", "--image-tta", "flip", "--rerank") == 0  # re-ranking's flipped twins: the same vectors
    capsys.readouterr()
    assert predict_tiny(tiny, tmp_path / "plain.json") == 0
    assert "image TTA" not in capsys.readouterr().out
    flip, plain = (json.loads((tmp_path / name).read_text())["results"] for name in ("flip.json", "plain.json"))
    assert len(flip) == len(plain) == 11 and flip != plain
    assert main(["predict", "--data", str(tiny["root"] / "data"), "--checkpoint", str(tiny["checkpoint"]), "--out", str(tmp_path / "x.json"),
                 "--image-tta", "mirror"]) == 2
    assert "mirror" in capsys.readouterr().err


def test_an_index_encodes_with_flips_for_life_and_image_queries_follow(tiny, tmp_path, capsys):
    from traffic_retrieval.index import Retriever

    gallery = tmp_path / "gallery"
    shutil.copytree(tiny["gallery"], gallery)
    out = tmp_path / "index"
    assert index_tiny(tiny, out, "--image-tta", "flip", gallery=gallery) == 0
    assert "image TTA flip" in capsys.readouterr().out
    info = json.loads((out / "index.json").read_text())
    assert info["image_tta"] == "flip" and info["config"]["image_tta"] == "flip"

    with Retriever.open(out, device="cpu") as retriever:
        assert retriever.info()["image_tta"] == "flip" and retriever.query_config.image_tta == "flip"
        first = retriever.search("This is a white Audi.", k=1, category="all")[0].id
        own = retriever.search_image(first, k=1)  # encoded as the gallery was: the image finds itself at cosine 1
        assert own[0].id == first and own[0].score == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(TrafficRetrievalError, match="encoded with image_tta flip, the query recipe asks for none"):
        Retriever.open(out, device="cpu", query_config=QueryConfig(image_tta="none"))

    # an update keeps the index's setting (no flag needed), a different one is refused
    shutil.copy(next(tiny["gallery"].iterdir()), gallery / "zz_extra.jpg")
    capsys.readouterr()
    assert index_tiny(tiny, out, "--json", gallery=gallery) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoded"] == 1 and report["image_tta"] == "flip"
    assert index_tiny(tiny, out, "--image-tta", "none", gallery=gallery) == 2
    assert "encoded with image_tta flip, the build asks for none" in capsys.readouterr().err

    # the index's vectors are what predict --image-tta flip encodes
    assert main(["predict", "--data", str(tiny["root"] / "data"), "--checkpoint", str(tiny["checkpoint"]), "--index", str(out),
                 "--out", str(tmp_path / "s.json"), "--no-progress", "--device", "cpu"]) == 0
    assert "image TTA flip" in capsys.readouterr().out
    assert main(["predict", "--data", str(tiny["root"] / "data"), "--checkpoint", str(tiny["checkpoint"]), "--index", str(out),
                 "--out", str(tmp_path / "s.json"), "--no-progress", "--device", "cpu", "--image-tta", "none"]) == 2
    assert "encoded with image_tta flip, the query recipe asks for none" in capsys.readouterr().err


def test_an_index_json_with_an_unknown_image_tta_is_refused(tiny, tmp_path):
    from traffic_retrieval.index import Retriever

    out = tmp_path / "index"
    assert index_tiny(tiny, out) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["image_tta"] == "none"
    info["image_tta"] = "__import__('os')"
    (out / "index.json").write_text(json.dumps(info))
    with pytest.raises(TrafficRetrievalError, match="image_tta") as refused:
        Retriever.open(out, device="cpu")
    assert "\n" not in str(refused.value)
