"""``gallery_bn: adapt`` (AdaBN, issue #14): re-estimating the image tower's BatchNorm
statistics on the gallery (``retrieval/adapt.py``), through predict, training's
validation, the index build (``index/batchnorm.py``) and ``Retriever``."""

import copy
import json
import shutil

import pytest
import torch

from tests.tiny_gallery import index_tiny, make_tiny_gallery, predict_tiny, random_images, six_car_val_set
from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.model.factory import create_model
from traffic_retrieval.retrieval.adapt import (ADAPT_BN_MAX_IMAGES, adaptation_sample, batchnorm_layers, batchnorm_state, estimate_batchnorm,
                                               load_batchnorm)
from traffic_retrieval.retrieval.queries import RECIPE_KEY, QueryConfig, query_recipe, resolve_query_config


def dark_images(n=12, seed=0):
    return random_images(n, seed, brightest=60)


def test_adabn_takes_the_images_statistics_and_leaves_the_weights(tiny_resnet):
    model = copy.deepcopy(tiny_resnet.model)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    images = dark_images()
    stats = estimate_batchnorm(model, [images[:6], images[6:]], tiny_resnet.preprocess, "cpu", None)
    visual = model.visual
    # the stem's first BatchNorm now holds the mean of its input over both batches (the cumulative average of the two batch means)
    from traffic_retrieval.data.images import normalize_uint8_batch

    with torch.no_grad():
        stem = visual.conv1(normalize_uint8_batch(images, tiny_resnet.preprocess))
    assert torch.allclose(visual.bn1.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-4)
    assert stats["bn1.running_mean"].data_ptr() != visual.bn1.running_mean.data_ptr()  # a copy
    assert torch.equal(stats["bn1.running_mean"], visual.bn1.running_mean)
    assert not model.training and all(not m.training for _, m in batchnorm_layers(model))
    assert all(m.momentum == 0.1 for _, m in batchnorm_layers(model))  # restored
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k in weights)
    # deterministic: the same images give the same statistics
    again = copy.deepcopy(tiny_resnet.model)
    assert all(torch.equal(v, stats[k]) for k, v in estimate_batchnorm(again, [images[:6], images[6:]], tiny_resnet.preprocess, "cpu", None).items())


def test_towers_without_batchnorm_and_too_few_images_change_nothing(tiny_resnet):
    torch.manual_seed(0)
    vit = create_model("TR-Tiny-ViT")
    assert batchnorm_layers(vit.model) == [] and estimate_batchnorm(vit.model, [dark_images(4)], vit.preprocess, "cpu", None) is None
    model = copy.deepcopy(tiny_resnet.model)
    before = batchnorm_state(model)
    assert estimate_batchnorm(model, [dark_images(1), None], tiny_resnet.preprocess, "cpu", None) is None  # one image: no variance
    assert all(torch.equal(v, before[k]) for k, v in batchnorm_state(model).items())


def test_the_sample_is_the_whole_gallery_or_evenly_spaced():
    assert adaptation_sample(5) == [0, 1, 2, 3, 4] and adaptation_sample(0) == []
    sample = adaptation_sample(100_000)
    assert len(sample) == ADAPT_BN_MAX_IMAGES == len(set(sample)) and sample == sorted(sample) and sample[0] == 0 and sample[-1] < 100_000
    assert adaptation_sample(10, limit=4) == [0, 2, 5, 7]


def test_loading_statistics_checks_names_shapes_and_values(tiny_resnet):
    model = copy.deepcopy(tiny_resnet.model)
    stats = batchnorm_state(model)
    stats["bn1.running_mean"] = stats["bn1.running_mean"] + 1
    load_batchnorm(model, stats)
    assert torch.equal(model.visual.bn1.running_mean, stats["bn1.running_mean"])
    for broken, message in (({k: v for k, v in stats.items() if k != "bn1.running_var"}, "missing bn1.running_var"),
                            ({**stats, "extra.running_mean": torch.zeros(1)}, "unexpected extra.running_mean"),
                            ({**stats, "bn1.running_mean": torch.zeros(3)}, r"bn1.running_mean has shape \(3,\)"),
                            ({**stats, "bn1.running_var": torch.full_like(stats["bn1.running_var"], float("nan"))}, "non-finite")):
        with pytest.raises(TrafficRetrievalError, match=message):
            load_batchnorm(model, broken, "stats.safetensors")


def test_the_recipe_records_gallery_bn_only_when_adapting():
    assert "gallery_bn" not in query_recipe(resolve_query_config(QueryConfig()))
    adapted = resolve_query_config(QueryConfig(), {RECIPE_KEY: {"gallery_bn": "adapt"}})
    assert adapted.gallery_bn == "adapt" and query_recipe(adapted)["gallery_bn"] == "adapt"
    assert resolve_query_config(QueryConfig(gallery_bn="none"), {RECIPE_KEY: {"gallery_bn": "adapt"}}).gallery_bn == "none"
    assert resolve_query_config(QueryConfig(), {RECIPE_KEY: {"gallery_bn": "<x>"}}).gallery_bn == "none"


def test_validation_adapts_a_copy_and_keeps_the_trained_statistics(tiny_resnet):
    from traffic_retrieval.train.validate import ValQueries, validate

    model = copy.deepcopy(tiny_resnet.model)
    before = batchnorm_state(model)
    val_set = six_car_val_set(tiny_resnet, dark_images(6))
    plain = validate(model, val_set, tiny_resnet.preprocess, "cpu", None, ValQueries(val_set.tokens, ["vehicle"] * 6, "all"))
    adapted = validate(model, val_set, tiny_resnet.preprocess, "cpu", None, ValQueries(val_set.tokens, ["vehicle"] * 6, "all", gallery_bn="adapt"))
    assert all(torch.equal(v, before[k]) for k, v in batchnorm_state(model).items())
    assert 0 <= adapted["official_mAP@10"] <= 1 and plain.keys() == adapted.keys()


# -- through predict, the index and the retriever ----------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("adabn")
    return make_tiny_gallery(root, seed=5, test_pedestrians=6, test_vehicles=5)


def test_predict_adapts_the_gallery(tiny, tmp_path, capsys):
    assert predict_tiny(tiny, tmp_path / "adapt.json", "--gallery-bn", "adapt") == 0
    assert "gallery BatchNorm adapt" in capsys.readouterr().out
    assert predict_tiny(tiny, tmp_path / "plain.json") == 0
    adapted, plain = (json.loads((tmp_path / name).read_text())["results"] for name in ("adapt.json", "plain.json"))
    assert len(adapted) == len(plain) == 11 and adapted != plain  # the random model's default statistics (0, 1) are far from the gallery's


def test_an_index_keeps_its_statistics_for_updates_and_image_queries(tiny, tmp_path, capsys):
    from traffic_retrieval.index import Retriever

    out = tmp_path / "index"
    assert index_tiny(tiny, out, "--gallery-bn", "adapt") == 0
    assert "BatchNorm statistics of 11 gallery images" in capsys.readouterr().out
    info = json.loads((out / "index.json").read_text())
    assert info["gallery_bn"] == "adapt" and info["bn_stats"]["file"] == "bn_stats.safetensors" and info["bn_stats"]["images"] == 11
    stats_bytes = (out / "bn_stats.safetensors").read_bytes()

    with Retriever.open(out, device="cpu") as retriever:
        assert retriever.info()["gallery_bn"] == "adapt" and retriever.query_config.gallery_bn == "adapt"
        first = retriever.search("This is a white Audi.", k=1, category="all")[0].id
        own = retriever.search_image(first, k=1)  # encoded with the gallery's statistics: the image finds itself at cosine 1
        assert own[0].id == first and own[0].score == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(TrafficRetrievalError, match="encoded with gallery_bn adapt, the query recipe asks for none"):
        Retriever.open(out, device="cpu", query_config=QueryConfig(gallery_bn="none"))

    # an update (a new image) loads the recorded statistics: the file is not re-estimated
    shutil.copy(next(tiny["gallery"].iterdir()), tmp_path / "extra.jpg")
    gallery = tmp_path / "gallery"
    shutil.copytree(tiny["gallery"], gallery)
    assert main(["index", "--images", str(gallery), "--checkpoint", str(tiny["checkpoint"]), "--out", str(tmp_path / "index2"), "--workers", "0",
                 "--no-progress", "--device", "cpu", "--gallery-bn", "adapt"]) == 0
    shutil.copy(tmp_path / "extra.jpg", gallery / "zz_extra.jpg")
    capsys.readouterr()
    assert main(["index", "--images", str(gallery), "--checkpoint", str(tiny["checkpoint"]), "--out", str(tmp_path / "index2"), "--workers", "0",
                 "--no-progress", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoded"] == 1 and report["gallery_bn"] == "adapt" and report["bn_stats"]["images"] == 11
    # the setting of an index that holds embeddings cannot change
    assert index_tiny(tiny, out, "--gallery-bn", "none") == 2
    assert "encoded with gallery_bn adapt, the build asks for none" in capsys.readouterr().err
    assert (out / "bn_stats.safetensors").read_bytes() == stats_bytes

    # predict --index follows the index
    assert main(["predict", "--data", str(tiny["root"] / "data"), "--checkpoint", str(tiny["checkpoint"]), "--index", str(out),
                 "--out", str(tmp_path / "s.json"), "--no-progress", "--device", "cpu"]) == 0
    assert "gallery BatchNorm adapt" in capsys.readouterr().out


def test_a_tampered_statistics_file_is_refused_in_one_line(tiny, tmp_path):
    from traffic_retrieval.index import Retriever

    out = tmp_path / "index"
    assert index_tiny(tiny, out, "--gallery-bn", "adapt") == 0
    stats = out / "bn_stats.safetensors"
    stats.write_bytes(stats.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(TrafficRetrievalError) as refused:
        Retriever.open(out, device="cpu")
    assert "\n" not in str(refused.value) and "sha256 differs" in str(refused.value)
    stats.unlink()
    with pytest.raises(TrafficRetrievalError, match="missing"):
        Retriever.open(out, device="cpu")
    info = json.loads((out / "index.json").read_text())
    info["bn_stats"]["file"] = "../../etc/passwd"
    (out / "index.json").write_text(json.dumps(info))
    with pytest.raises(TrafficRetrievalError, match="bn_stats.file: must be bn_stats.safetensors"):
        Retriever.open(out, device="cpu")
