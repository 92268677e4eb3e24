"""``image_tta: exposure`` (issue #14, night galleries): each under-exposed image brightened to
middle grey in linear light before it is encoded (``data/exposure.py``), through the encoder,
AdaBN, predict, training's validation, the index build and ``Retriever``."""

import copy
import json
import shutil

import pytest
import torch
from PIL import Image

from tests.tiny_gallery import index_tiny, make_tiny_gallery, predict_tiny, random_images, six_car_val_set
from traffic_retrieval.commands.ablate import with_image_tta_part
from traffic_retrieval.data.exposure import LUMA, MAX_GAIN, MIDDLE_GREY, auto_exposure, exposure_gains, linear_to_srgb, srgb_to_linear
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.adapt import estimate_batchnorm, image_tta_parts
from traffic_retrieval.retrieval.encode import encode_uint8_images


def mean_linear_luminance(images):
    return (srgb_to_linear(images) * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1).mean(dim=(1, 2))


def test_srgb_round_trip():
    values = torch.linspace(0, 1, 1001)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-5)
    assert srgb_to_linear(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.0, 0.21404, 1.0], abs=1e-4)


def test_a_dark_frame_is_brought_to_middle_grey_with_its_hues_kept():
    generator = torch.Generator().manual_seed(0)
    scene = torch.rand(1, 3, 16, 16, generator=generator) * 0.6 + 0.2
    dark = linear_to_srgb(srgb_to_linear(scene) / 6)  # the same scene 2.6 stops under
    lifted = auto_exposure(dark)
    assert float(exposure_gains(dark)) == pytest.approx(float(MIDDLE_GREY / mean_linear_luminance(dark)), rel=1e-4)
    assert float(mean_linear_luminance(lifted)) == pytest.approx(MIDDLE_GREY, rel=1e-3)  # nothing clips in this scene
    ratio = srgb_to_linear(lifted) / srgb_to_linear(dark)  # one gain for all three channels: hues and saturation kept
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-3)
    assert lifted.min() >= 0 and lifted.max() <= 1


def test_day_frames_are_left_exactly_and_the_gain_is_capped():
    day = torch.full((2, 3, 8, 8), 0.6)  # linear 0.32: over middle grey
    night = torch.full((1, 3, 8, 8), 0.01)  # almost black: the gain stops at MAX_GAIN
    batch = torch.cat([day[:1], night, day[1:]])
    out = auto_exposure(batch)
    assert torch.equal(out[0], batch[0]) and torch.equal(out[2], batch[2])
    assert exposure_gains(batch).tolist() == pytest.approx([1.0, MAX_GAIN, 1.0])
    assert float(mean_linear_luminance(out[1:2])) == pytest.approx(float(mean_linear_luminance(night)) * MAX_GAIN, rel=1e-3)
    assert auto_exposure(day) is day  # nothing to lift: the input itself


def test_image_tta_parts_and_the_ablation_rows_combination():
    assert image_tta_parts("none") == frozenset() and image_tta_parts("flip+exposure") == {"flip", "exposure"}
    with pytest.raises(TrafficRetrievalError, match="image_tta must be one of none, flip, exposure, flip\\+exposure, got 'exposure\\+flip'"):
        image_tta_parts("exposure+flip")
    assert with_image_tta_part("none", "exposure") == "exposure"
    assert with_image_tta_part("flip", "exposure") == with_image_tta_part("exposure", "flip") == "flip+exposure"


def test_the_encoder_exposes_dark_images_only(tiny_resnet):
    model = tiny_resnet.model.eval()
    dark, bright = random_images(3, 1, brightest=50), 205 + random_images(3, 2, brightest=50)
    encode = lambda images, tta: encode_uint8_images(model, images, tiny_resnet.preprocess, "cpu", None, image_tta=tta)
    assert (encode(dark, "exposure") - encode(dark, "none")).abs().max() > 1e-3
    assert torch.allclose(encode(bright, "exposure"), encode(bright, "none"), atol=1e-6)
    lifted = (auto_exposure(dark.float() / 255) * 255).round().to(torch.uint8)  # the same as encoding the lifted image
    assert torch.allclose(encode(dark, "exposure"), encode(lifted, "none"), atol=2e-2)
    both = encode(dark, "flip+exposure")
    assert torch.allclose(both, torch.nn.functional.normalize(encode(dark, "exposure") + encode(dark.flip(-1), "exposure"), dim=-1), atol=1e-5)


def test_adabn_takes_the_statistics_of_the_exposed_images(tiny_resnet):
    dark = random_images(8, 3, brightest=40)
    plain = estimate_batchnorm(copy.deepcopy(tiny_resnet.model), [dark], tiny_resnet.preprocess, "cpu", None)
    exposed = estimate_batchnorm(copy.deepcopy(tiny_resnet.model), [dark], tiny_resnet.preprocess, "cpu", None, exposure=True)
    lifted = (auto_exposure(dark.float() / 255) * 255).round().to(torch.uint8)
    of_lifted = estimate_batchnorm(copy.deepcopy(tiny_resnet.model), [lifted], tiny_resnet.preprocess, "cpu", None)
    first_mean = next(key for key in plain if key.endswith("running_mean"))
    assert torch.allclose(exposed[first_mean], of_lifted[first_mean], atol=2e-2)  # the statistics of the images as they are encoded
    assert (exposed[first_mean] - plain[first_mean]).abs().max() > 0.2


def test_validation_encodes_the_val_images_exposed(tiny_resnet):
    from traffic_retrieval.train.validate import ValQueries, validate

    model = copy.deepcopy(tiny_resnet.model)
    val_set = six_car_val_set(tiny_resnet, random_images(6, 4, brightest=40))
    scores = {tta: validate(model, val_set, tiny_resnet.preprocess, "cpu", None, ValQueries(val_set.tokens, ["vehicle"] * 6, "all", image_tta=tta))
              for tta in ("none", "exposure")}
    assert scores["none"]["t2i_R@10"] == scores["exposure"]["t2i_R@10"] or scores["none"] != scores["exposure"]
    assert scores["none"].keys() == scores["exposure"].keys()


# -- through predict, the index and the retriever ----------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A tiny synthetic dataset whose test gallery is re-exposed 3 stops under, and its checkpoint."""
    root = tmp_path_factory.mktemp("night")
    source = make_tiny_gallery(root, seed=11, test_pedestrians=4, test_vehicles=4)
    for path in sorted(source["gallery"].iterdir()):
        image = torch.from_numpy(__import__("numpy").array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        dark = linear_to_srgb(srgb_to_linear(image) / 8)[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        Image.fromarray(dark).save(path, format="JPEG", quality=95)
    return source


def test_predict_exposes_a_night_gallery(night, tmp_path, capsys):
    assert predict_tiny(night, tmp_path / "exposed.json", "--image-tta", "exposure", "--gallery-bn", "adapt") == 0
    assert "image TTA exposure" in capsys.readouterr().out
    assert predict_tiny(night, tmp_path / "plain.json", "--gallery-bn", "adapt") == 0
    exposed, plain = (json.loads((tmp_path / name).read_text())["results"] for name in ("exposed.json", "plain.json"))
    assert len(exposed) == len(plain) == 8 and exposed != plain


def test_an_index_encodes_exposed_for_life_and_image_queries_follow(night, tmp_path, capsys):
    from traffic_retrieval.index import Retriever
    from traffic_retrieval.index.gallery import read_indexed_gallery
    from traffic_retrieval.model.factory import load_checkpoint
    from traffic_retrieval.retrieval.encode import encode_image_files

    gallery = tmp_path / "gallery"
    shutil.copytree(night["gallery"], gallery)
    out = tmp_path / "index"
    assert index_tiny(night, out, "--image-tta", "flip+exposure", gallery=gallery) == 0
    assert "image TTA flip+exposure" in capsys.readouterr().out
    info = json.loads((out / "index.json").read_text())
    assert info["image_tta"] == "flip+exposure" and info["config"]["image_tta"] == "flip+exposure"

    indexed = read_indexed_gallery(out)
    loaded = load_checkpoint(night["checkpoint"])
    paths = [str(gallery / name) for name in indexed.names]
    exposed = encode_image_files(loaded, paths, "cpu", None, workers=0, progress=False, image_tta="flip+exposure").embeddings
    flipped = encode_image_files(loaded, paths, "cpu", None, workers=0, progress=False, image_tta="flip").embeddings
    distance = lambda a, b: float((a - b).abs().max())  # a random tower barely tells images apart, and the build may run in bf16
    assert distance(indexed.embeddings.float(), exposed) < 0.5 * distance(indexed.embeddings.float(), flipped)

    with Retriever.open(out, device="cpu") as retriever:
        assert retriever.info()["image_tta"] == "flip+exposure"
        own = retriever.search_image(str(gallery / indexed.names[0]), k=1)  # the query image is exposed as the gallery was
        assert own[0].name == indexed.names[0] and own[0].score == pytest.approx(1.0, abs=2e-3)
    assert index_tiny(night, out, "--image-tta", "flip", gallery=gallery) == 2
    assert "encoded with image_tta flip+exposure, the build asks for flip" in capsys.readouterr().err


def test_the_night_split_writer_re_exposes_one_split_and_links_the_rest(tmp_path):
    import importlib.util
    import sys

    import numpy as np

    spec = importlib.util.spec_from_file_location("night_split", "benchmarks/night_split.py")
    night_split = importlib.util.module_from_spec(spec)
    sys.modules["night_split"] = night_split
    spec.loader.exec_module(night_split)
    data = make_tiny_gallery(tmp_path / "day", seed=3, test_pedestrians=1, test_vehicles=1, train=2, val=2)["root"] / "data"
    assert night_split.write_night_copy(data, "val", tmp_path / "night", seed=0) == 4
    assert night_split.write_night_copy(data, "val", tmp_path / "again", seed=0) == 4
    assert (tmp_path / "night" / "train").is_symlink() and (tmp_path / "night" / "val" / "val_label.txt").is_symlink()
    for path in sorted((data / "val" / "val_images").iterdir()):
        day, night_image = (np.asarray(Image.open(root / "val" / "val_images" / path.name).convert("RGB"), dtype=np.float64)
                            for root in (data, tmp_path / "night"))
        assert night_image.shape == day.shape and night_image.mean() < 0.8 * day.mean()
        assert (tmp_path / "again" / "val" / "val_images" / path.name).read_bytes() == (tmp_path / "night" / "val" / "val_images" / path.name).read_bytes()
    with pytest.raises(SystemExit, match="no such folder"):
        night_split.write_night_copy(data, "nope", tmp_path / "x", seed=0)


def test_the_code_table_is_the_formula():
    from traffic_retrieval.data.exposure import srgb_code_to_linear

    codes = torch.arange(256).view(4, 64)
    assert torch.equal(srgb_code_to_linear(codes), srgb_to_linear(codes.float() / 255))


def test_night_frames_are_lifted_noisy_and_only_where_chosen():
    from traffic_retrieval.train.augment import AUGMENT_LEVELS, augment_batch, night_frame

    images = random_images(6, 5).float() / 255 * 0.5 + 0.3
    chosen = torch.tensor([True, False, True, False, True, False])
    out = night_frame(images, chosen, torch.Generator().manual_seed(1))
    assert torch.equal(out[~chosen], images[~chosen])
    assert torch.equal(out, night_frame(images, chosen, torch.Generator().manual_seed(1)))  # deterministic given the generator
    luminance = mean_linear_luminance(out[chosen])
    assert ((luminance > 0.8 * MIDDLE_GREY) | (exposure_gains(out[chosen]) == 1)).all()  # at a day frame's brightness again...
    assert ((out[chosen] - images[chosen]).abs().mean(dim=(1, 2, 3)) > 0.02).all()  # ...but not the same picture: noise and banding
    level = AUGMENT_LEVELS["camera-night"]
    assert level.night == 0.25 and level.low_light == 0 and level.jpeg == AUGMENT_LEVELS["camera"].jpeg
    batch = augment_batch(random_images(8, 6), level, torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 80, 80) and 0 <= batch.min() and batch.max() <= 1


def test_a_padded_images_bars_are_neither_metered_nor_lifted():
    from traffic_retrieval.data.images import PreprocessConfig, normalize_uint8_batch

    picture = torch.full((1, 3, 20, 20), 140, dtype=torch.uint8)  # linear 0.26: a day picture, over middle grey
    padded = picture.clone()
    padded[..., :, :6] = 0  # the black bars of a tall crop centred on a square
    padded[..., :, 14:] = 0
    pad, squash = PreprocessConfig(size=20, resize_mode="longest"), PreprocessConfig(size=20, resize_mode="squash")
    assert torch.equal(normalize_uint8_batch(padded, pad, exposure=True), normalize_uint8_batch(padded, pad))  # metered on the picture: no gain
    assert not torch.equal(normalize_uint8_batch(padded, squash, exposure=True), normalize_uint8_batch(padded, squash))  # bars and all: darker
    night = (padded.float() * 0.5).round().to(torch.uint8)  # linear 0.06: a gain of 3
    lifted = normalize_uint8_batch(night, pad, exposure=True)
    assert torch.equal(lifted[..., :6], normalize_uint8_batch(night, pad)[..., :6])  # the bars stay the fill colour
    content = (night != 0).any(dim=1, keepdim=True)
    exposed = auto_exposure(night.float() / 255, content=content)
    assert float((mean_linear_luminance(exposed[..., 6:14]))) == pytest.approx(MIDDLE_GREY, rel=1e-2)
    assert float(exposure_gains(night.float() / 255, content=torch.zeros_like(content))) == 1.0  # nothing to meter: left alone
