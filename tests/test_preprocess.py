"""Our preprocessing is open_clip's: the config speaks ``PreprocessCfg``'s keys, models
and checkpoints carry it as open_clip's ``preprocess_cfg``, and open_clip's own inference
transform built from it gives our tensors.

Tolerance: the uint8 pixels are identical (same PIL resize, same sizes and offsets), so
the only difference is float32 rounding of ``(x / 255 - mean) / std`` (open_clip) against
``(x - 255 mean) / (255 std)`` (ours): at most 2.4e-7 after normalisation, measured on
sizes 64, 80 and 224 and images from 1x300 to 999x37. Before the crop geometry was
aligned with torchvision's (long side truncated, offsets rounded half to even), crop
differed by up to 2.47 on the 200x90 image.
"""

import re
from dataclasses import asdict, replace
from typing import get_args

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from traffic_retrieval.data.images import (
    RESIZE_MODE_ALIASES,
    RESIZE_MODES,
    PreprocessConfig,
    image_to_uint8_tensor,
    load_image,
    normalize_uint8_batch,
    to_square,
)
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import MODEL_CONFIG_DIR, checkpoint_payload, create_model, load_checkpoint, set_preprocess
from traffic_retrieval.options import ResizeMode

TOLERANCE = 1e-6  # measured 2.4e-7, see the module docstring
OPEN_CLIP_NAMES = {"pad": "longest", "squash": "squash", "crop": "shortest"}
SHAPES = {"tall_pedestrian": (60, 160), "wide_vehicle": (200, 90), "square": (120, 120)}  # (width, height)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Random RGB images shaped like the challenge's crops, as lossless PNG files."""
    folder = tmp_path_factory.mktemp("preprocess")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (width, height) in SHAPES.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[name])
    return paths


def ours(path, preprocess: PreprocessConfig) -> torch.Tensor:
    """Our path: uint8 square (the cacheable form), then normalisation."""
    return normalize_uint8_batch(image_to_uint8_tensor(path, preprocess)[None], preprocess)[0]


def assert_same_input(transform, image_files, preprocess: PreprocessConfig):
    for path in image_files.values():
        theirs = transform(load_image(path))
        mine = ours(path, preprocess)
        assert theirs.shape == mine.shape == (3, preprocess.size, preprocess.size)
        assert (theirs - mine).abs().max().item() <= TOLERANCE, path.name
        # and the pixels themselves are the same
        mean, std = torch.tensor(preprocess.mean).view(3, 1, 1), torch.tensor(preprocess.std).view(3, 1, 1)
        assert torch.equal(((theirs * std + mean) * 255).round().to(torch.uint8), image_to_uint8_tensor(path, preprocess))


@pytest.mark.parametrize("model_name", ["TR-Tiny-RN", "TR-Tiny-ViT"])
@pytest.mark.parametrize("resize_mode", ["pad", "squash", "crop"])
def test_open_clip_transform_from_checkpoint_matches_ours(model_name, resize_mode, image_files, tmp_path):
    loaded = create_model(model_name)
    set_preprocess(loaded, replace(loaded.preprocess, resize_mode=resize_mode))  # as train --resize-mode does
    path = tmp_path / "final.pt"
    atomic_torch_save(checkpoint_payload(loaded), path)

    stored = torch.load(path, weights_only=True)["preprocess_cfg"]
    assert stored["resize_mode"] == OPEN_CLIP_NAMES[resize_mode] and "preprocess" not in torch.load(path, weights_only=True)
    assert merge_preprocess_dict(PreprocessCfg(), stored) == stored  # open_clip's keys, nothing else

    again = load_checkpoint(path)
    assert again.preprocess == loaded.preprocess and again.preprocess.resize_mode == OPEN_CLIP_NAMES[resize_mode]
    assert again.model.visual.preprocess_cfg == again.preprocess.to_open_clip_preprocess_cfg() == stored
    assert_same_input(image_transform_v2(PreprocessCfg(**again.model.visual.preprocess_cfg), is_train=False), image_files, again.preprocess)

    # plain open_clip: the weights load from the file, the preprocessing is passed in
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    plain, _, transform = open_clip.create_model_and_transforms(
        model_name, pretrained=str(path), image_resize_mode=stored["resize_mode"], image_mean=stored["mean"], image_std=stored["std"], image_interpolation=stored["interpolation"]
    )
    assert_same_input(transform, image_files, again.preprocess)
    size = again.preprocess.size
    with torch.no_grad():
        image = torch.stack([ours(p, again.preprocess) for p in image_files.values()])
        assert torch.allclose(plain.eval().encode_image(image), again.model.encode_image(image), atol=1e-5)
    assert image.shape == (3, 3, size, size)


def test_created_model_carries_our_preprocessing():
    for model_name, size in (("TR-Tiny-RN", 80), ("TR-Tiny-ViT", 64)):
        loaded = create_model(model_name)
        assert loaded.preprocess == PreprocessConfig(size, "pad")
        assert loaded.model.visual.preprocess_cfg == loaded.preprocess.to_open_clip_preprocess_cfg()
    squash = create_model("TR-Tiny-RN", preprocess=PreprocessConfig(80, "squash", fill_color=7, interpolation="bilinear"))
    assert squash.model.visual.preprocess_cfg["resize_mode"] == "squash" and squash.preprocess.fill_color == 7
    with pytest.raises(TrafficRetrievalError, match="image size 224 does not match model 'TR-Tiny-RN' \\(80\\)"):
        create_model("TR-Tiny-RN", preprocess=PreprocessConfig())


@pytest.mark.parametrize("fill_color, interpolation", [(128, "bicubic"), (0, "bilinear")])
@pytest.mark.parametrize("resize_mode", ["pad", "squash", "crop"])
def test_fill_color_and_interpolation_match_open_clip(fill_color, interpolation, resize_mode, image_files):
    preprocess = PreprocessConfig(48, resize_mode, fill_color=fill_color, interpolation=interpolation)
    assert_same_input(image_transform_v2(PreprocessCfg(**preprocess.to_open_clip_preprocess_cfg()), is_train=False), image_files, preprocess)


def test_resize_mode_aliases_round_trip():
    assert RESIZE_MODES == get_args(ResizeMode)  # the one declaration
    assert set(RESIZE_MODES) == set(RESIZE_MODE_ALIASES) | set(RESIZE_MODE_ALIASES.values()) | {"squash"}
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    for given in RESIZE_MODES:
        name = RESIZE_MODE_ALIASES.get(given, given)
        preprocess = PreprocessConfig(32, given)
        assert preprocess.resize_mode == name
        cfg = preprocess.to_open_clip_preprocess_cfg()
        assert asdict(PreprocessCfg(**cfg)) == cfg  # every key is open_clip's
        assert PreprocessConfig.from_open_clip_preprocess_cfg(cfg) == preprocess
        image_transform_v2(PreprocessCfg(**cfg), is_train=False)  # open_clip accepts the name
        assert to_square(image, 32, given) == to_square(image, 32, name)
        preprocess.resize_mode = "squash"
        preprocess.resize_mode = given  # assignment takes aliases too
        assert preprocess.resize_mode == name

    for bad in ("stretch", "Pad", None):
        with pytest.raises(TrafficRetrievalError, match=f"resize_mode must be one of pad, squash, crop, longest, shortest, got {bad!r}"):
            PreprocessConfig(resize_mode=bad)
    with pytest.raises(TrafficRetrievalError, match="resize_mode must be one of"):
        PreprocessConfig().resize_mode = "stretch"
    with pytest.raises(TrafficRetrievalError, match="fill_color must be"):
        PreprocessConfig(fill_color=256)
    with pytest.raises(TrafficRetrievalError, match="interpolation must be one of bicubic, bilinear"):
        PreprocessConfig(interpolation="nearest")


def test_open_clip_dicts_read_as_open_clip_reads_them():
    vit = create_model("TR-Tiny-ViT").model
    assert open_clip.create_model("TR-Tiny-ViT").visual.preprocess_cfg["size"] == (64, 64)  # what open_clip sets
    assert PreprocessConfig.from_open_clip_preprocess_cfg({"size": (64, 64)}).size == 64
    assert PreprocessConfig.from_open_clip_preprocess_cfg(vit.visual.preprocess_cfg).size == 64
    # missing keys take PreprocessCfg's defaults (resize_mode shortest), unknown ones are ignored
    partial = PreprocessConfig.from_open_clip_preprocess_cfg({"size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.9})
    assert partial == PreprocessConfig(64, "shortest", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(TrafficRetrievalError, match="only square model inputs"):
        PreprocessConfig.from_open_clip_preprocess_cfg({"size": (64, 96)})


@pytest.mark.parametrize("old_mode, name", [("pad", "longest"), ("crop", "shortest"), ("squash", "squash")])
def test_checkpoint_written_before_loads(old_mode, name, tmp_path):
    loaded = create_model("TR-Tiny-RN")
    payload = checkpoint_payload(loaded)
    del payload["preprocess_cfg"]
    payload["preprocess"] = {"image_size": 80, "resize_mode": old_mode, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    path = tmp_path / "old.pt"
    atomic_torch_save(payload, path)

    again = load_checkpoint(path)
    assert again.preprocess == PreprocessConfig(80, name, (0.5,) * 3, (0.25,) * 3, fill_color=0, interpolation="bicubic")
    assert again.model.visual.preprocess_cfg == again.preprocess.to_open_clip_preprocess_cfg()
    assert again.model.visual.image_mean == [0.5, 0.5, 0.5]
    resaved = checkpoint_payload(again)
    assert resaved["preprocess_cfg"]["resize_mode"] == name and "preprocess" not in resaved

    payload.pop("preprocess")
    atomic_torch_save(payload, path)
    with pytest.raises(TrafficRetrievalError, match=re.escape(f"{path}: checkpoint holds no preprocessing")):
        load_checkpoint(path)
