"""``export``: a checkpoint as an open_clip ``local-dir:`` folder that plain open_clip loads.

Tiny randomly initialised models (each from its own seed, so a model open_clip built
without loading the exported weights could not match), exported with pad (open_clip's
``longest``, grey fill), squash (bilinear) and a ViT with pad; then one subprocess
with nothing of ours (``python -I``, imports of ``traffic_retrieval`` refused, our
model configs not registered) loads each folder with
``open_clip.create_model_and_transforms("local-dir:DIR")`` and
``open_clip.get_tokenizer("local-dir:DIR")`` and encodes tall and wide images and a
few texts. Its pixels equal ours (as in tests/test_preprocess.py, within float32
rounding of the normalisation), its tokens equal ours, and its embeddings equal ours
within 1e-4 after normalisation.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from traffic_retrieval.commands import COMMANDS
from traffic_retrieval.data.images import PreprocessConfig, image_to_uint8_tensor, normalize_uint8_batch
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save, file_sha256
from traffic_retrieval.model import export as export_module
from traffic_retrieval.model.export import export_open_clip_dir
from traffic_retrieval.model.factory import checkpoint_payload, create_model, load_checkpoint
from traffic_retrieval.model.tokens import tokenize

PIXEL_TOLERANCE = 1e-6  # tests/test_preprocess.py: float32 rounding of the normalisation, measured 2.4e-7
EMBEDDING_TOLERANCE = 1e-4
# name -> (model, preprocessing, seed); pad and squash on one model size, so only the resize differs
CASES = {
    "rn-pad": ("TR-Tiny-RN", PreprocessConfig(80, "pad", fill_color=128), 11),
    "rn-squash": ("TR-Tiny-RN", PreprocessConfig(80, "squash", interpolation="bilinear"), 12),
    "vit-pad": ("TR-Tiny-ViT", PreprocessConfig(64, "pad"), 13),
}
SHAPES = {"tall": (40, 120), "wide": (150, 50), "square": (70, 70)}  # (width, height)
TEXTS = ["a white sedan", "A woman in a red coat, carrying a black bag.", "This is a black Audi SUV.", ""]
RECIPE = {"text_form": "a3r", "router": "vocabulary", "gallery_scope": "routed"}
CATEGORY_TEXTS = {"pedestrian": ["a person walking."], "vehicle": ["a white car."]}
EXPORT_FILES = {"open_clip_config.json", "open_clip_model.safetensors", "traffic_retrieval.json", "README.md"}

# Runs with ``python -I`` (no PYTHON* variables, no user site, no script folder on sys.path)
# in a clean environment; any import of traffic_retrieval fails.
PLAIN_OPEN_CLIP = r'''
import importlib.abc
import json
import sys


class RefuseTrafficRetrieval(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "traffic_retrieval" or name.startswith("traffic_retrieval."):
            raise ImportError(f"{name}: an export must load without traffic-retrieval")
        return None


sys.meta_path.insert(0, RefuseTrafficRetrieval())

import open_clip
import torch
from PIL import Image

spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
results = {}
for name, folder in spec["folders"].items():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    pixels = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in spec["images"]])
    tokens = tokenizer(spec["texts"])
    with torch.no_grad():
        results[name] = {
            "pixels": pixels,
            "tokens": tokens,
            "image": model.encode_image(pixels, normalize=True),
            "text": model.encode_text(tokens, normalize=True),
            "preprocess_cfg": {key: list(value) if isinstance(value, tuple) else value for key, value in model.visual.preprocess_cfg.items()},
            "transform": repr(preprocess),
        }
results["checks"] = {
    "traffic_retrieval_modules": sorted(m for m in sys.modules if m.split(".")[0] == "traffic_retrieval"),
    "tr_models_known_to_open_clip": [m for m in open_clip.list_models() if m.startswith("TR-")],
}
torch.save(results, spec["out"])
'''


def make_checkpoint(path: Path, model_name: str, preprocess: PreprocessConfig, seed: int, extra: dict | None = None) -> Path:
    torch.manual_seed(seed)
    loaded = create_model(model_name, preprocess=preprocess)
    metadata = {"query_recipe": RECIPE, "category_texts": CATEGORY_TEXTS, "epoch": 2, "metrics": {"official_mAP@10": 0.25, "broken": float("nan")},
                "train_config": {"epochs": 2, "resize_mode": preprocess.resize_mode, "lr": 1e-5}, **(extra or {})}
    atomic_torch_save(checkpoint_payload(loaded, metadata), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case's checkpoint and export, and what plain open_clip made of the exports (one subprocess)."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    images = []
    for name, (width, height) in SHAPES.items():
        images.append(root / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images[-1])
    checkpoints, folders, reports = {}, {}, {}
    for name, (model_name, preprocess, seed) in CASES.items():
        extra = {"attribute_heads": {"flags.weight": torch.randn(21, 128), "flags.bias": torch.zeros(21)}} if name == "rn-pad" else None
        checkpoints[name] = make_checkpoint(root / f"{name}.pt", model_name, preprocess, seed, extra)
        folders[name] = root / "exports" / name
        reports[name] = export_open_clip_dir(checkpoints[name], folders[name])

    spec = root / "spec.json"
    spec.write_text(json.dumps({"folders": {k: str(v) for k, v in folders.items()}, "images": [str(p) for p in images], "texts": TEXTS,
                                "out": str(root / "plain.pt")}))
    script = root / "plain_open_clip.py"
    script.write_text(PLAIN_OPEN_CLIP)
    home = root / "home"
    home.mkdir()
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "OMP_NUM_THREADS": "2", "LC_ALL": "C.UTF-8"}
    finished = subprocess.run([sys.executable, "-I", str(script), str(spec)], cwd=home, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    plain = torch.load(root / "plain.pt", weights_only=True)
    return {"root": root, "images": images, "checkpoints": checkpoints, "folders": folders, "reports": reports, "plain": plain}


def test_plain_open_clip_needs_nothing_of_ours(exported):
    checks = exported["plain"]["checks"]
    assert checks["traffic_retrieval_modules"] == []
    assert checks["tr_models_known_to_open_clip"] == []  # the architecture came from open_clip_config.json


@pytest.mark.parametrize("case", list(CASES))
def test_plain_open_clip_gives_our_pixels_tokens_and_embeddings(case, exported):
    from traffic_retrieval.retrieval.encode import encode_image_files, encode_texts

    theirs = exported["plain"][case]
    loaded = load_checkpoint(exported["checkpoints"][case])
    paths = [str(p) for p in exported["images"]]

    # the transform: open_clip's preprocessing of the folder is ours (resize mode, fill, interpolation, size)
    expected = loaded.preprocess.to_open_clip_preprocess_cfg()
    for key in ("resize_mode", "fill_color", "interpolation", "mean", "std"):
        assert theirs["preprocess_cfg"][key] == expected[key], key
    uint8 = torch.stack([image_to_uint8_tensor(path, loaded.preprocess) for path in paths])
    mine = normalize_uint8_batch(uint8, loaded.preprocess)
    assert theirs["pixels"].shape == mine.shape == (len(paths), 3, loaded.preprocess.size, loaded.preprocess.size)
    assert (theirs["pixels"] - mine).abs().max().item() <= PIXEL_TOLERANCE
    mean, std = torch.tensor(loaded.preprocess.mean).view(1, 3, 1, 1), torch.tensor(loaded.preprocess.std).view(1, 3, 1, 1)
    assert torch.equal(((theirs["pixels"] * std + mean) * 255).round().to(torch.uint8), uint8)

    # the tokenizer and the weights
    assert torch.equal(theirs["tokens"], tokenize(loaded.tokenizer, TEXTS))
    images = encode_image_files(loaded, paths, "cpu", None, batch_size=8, workers=0, progress=False)
    assert images.readable == list(range(len(paths)))
    assert torch.allclose(theirs["image"], images.embeddings, atol=EMBEDDING_TOLERANCE, rtol=0)
    assert torch.allclose(theirs["text"], encode_texts(loaded, TEXTS, "cpu", None), atol=EMBEDDING_TOLERANCE, rtol=0)


def test_pad_and_squash_reach_open_clip(exported):
    """The tall image: pad leaves grey bars left and right (fill 128), squash stretches it across."""
    tall = list(SHAPES).index("tall")
    padded, squashed = exported["plain"]["rn-pad"]["pixels"][tall], exported["plain"]["rn-squash"]["pixels"][tall]
    preprocess = CASES["rn-pad"][1]
    grey = (128 / 255 - torch.tensor(preprocess.mean)) / torch.tensor(preprocess.std)
    for column in (0, -1):
        assert torch.allclose(padded[:, :, column], grey.view(3, 1).expand(3, padded.shape[1]), atol=1e-5)
        assert squashed[:, :, column].std() > 0.1  # image content, not a bar
    assert "squash" not in exported["plain"]["rn-pad"]["preprocess_cfg"]["resize_mode"]
    assert exported["plain"]["rn-pad"]["preprocess_cfg"]["resize_mode"] == "longest"
    assert exported["plain"]["rn-squash"]["preprocess_cfg"]["resize_mode"] == "squash"


def test_the_folder_layout(exported):
    from safetensors import safe_open

    folder, checkpoint = exported["folders"]["rn-pad"], exported["checkpoints"]["rn-pad"]
    payload = torch.load(checkpoint, weights_only=True)
    sha256 = file_sha256(checkpoint)
    assert {p.name for p in folder.iterdir()} == EXPORT_FILES | {"attribute_heads.safetensors"}
    assert {p.name for p in exported["folders"]["rn-squash"].iterdir()} == EXPORT_FILES  # no heads, no heads file
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left

    config = json.loads((folder / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    assert config["model_cfg"] == payload["architecture"]  # TR-Tiny-RN's full architecture (context_length 77 written out)
    assert config["model_cfg"]["text_cfg"]["context_length"] == payload["tokenizer"]["context_length"] == 77
    assert config["preprocess_cfg"] == payload["preprocess_cfg"]
    assert config["preprocess_cfg"] == {"size": 80, "mode": "RGB", "mean": list(PreprocessConfig().mean), "std": list(PreprocessConfig().std),
                                        "interpolation": "bicubic", "resize_mode": "longest", "fill_color": 128}

    with safe_open(str(folder / "open_clip_model.safetensors"), framework="pt") as weights:
        assert set(weights.keys()) == set(payload["state_dict"])
        assert weights.metadata()["source_sha256"] == sha256
        assert all(torch.equal(weights.get_tensor(key), payload["state_dict"][key]) for key in ("logit_scale", "text_projection"))
    with safe_open(str(folder / "attribute_heads.safetensors"), framework="pt") as heads:
        assert torch.equal(heads.get_tensor("flags.weight"), payload["attribute_heads"]["flags.weight"])

    metadata = json.loads((folder / "traffic_retrieval.json").read_text())
    assert metadata["format"] == "traffic-retrieval-export/1" and metadata["model_name"] == "TR-Tiny-RN"
    assert metadata["source_checkpoint"] == {"file": "rn-pad.pt", "sha256": sha256, "format": "traffic-retrieval-checkpoint/1"}
    assert metadata["query_recipe"] == RECIPE and metadata["category_texts"] == CATEGORY_TEXTS
    assert metadata["train_config"] == payload["train_config"] and metadata["epoch"] == 2
    assert metadata["metrics"] == {"official_mAP@10": 0.25, "broken": None}  # NaN is not JSON
    assert metadata["attribute_heads_file"] == "attribute_heads.safetensors"
    assert not {"state_dict", "architecture", "preprocess_cfg", "attribute_heads"} & set(metadata)

    readme = (folder / "README.md").read_text()
    for expected in ("TR-Tiny-RN", sha256, 'open_clip.create_model_and_transforms("local-dir:', 'open_clip.get_tokenizer("local-dir:',
                     "`text_form`: `a3r`", "`router`: `vocabulary`", "`gallery_scope`: `routed`", "grey level 128"):
        assert expected in readme, expected
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in folder.iterdir())
    assert oct(folder.stat().st_mode & 0o777) == "0o755"

    report = exported["reports"]["rn-pad"]
    assert report["out"] == str(folder) and report["source_sha256"] == sha256 and report["replaced"] is False
    assert set(report["files"]) == EXPORT_FILES | {"attribute_heads.safetensors"} and report["weights"] == len(payload["state_dict"])
    assert report["query_recipe"] == RECIPE and report["context_length"] == 77


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_existing_folder_is_refused_without_overwrite(exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(TrafficRetrievalError, match=r"out: folder exists and is not empty \(give --overwrite"):
        export_open_clip_dir(exported["checkpoints"]["rn-pad"], out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and leftovers(tmp_path) == []
    # --overwrite replaces only an earlier export, never an unrelated folder
    with pytest.raises(TrafficRetrievalError, match="not an export folder \\(no open_clip_config.json\\)"):
        export_open_clip_dir(exported["checkpoints"]["rn-pad"], out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # an empty folder is no obstacle
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_open_clip_dir(exported["checkpoints"]["rn-pad"], empty)["replaced"] is False
    assert {p.name for p in empty.iterdir()} >= EXPORT_FILES
    # a file is not a folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrafficRetrievalError, match="file: exists and is not a folder"):
        export_open_clip_dir(exported["checkpoints"]["rn-pad"], tmp_path / "file", overwrite=True)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_overwrite_replaces_an_earlier_export(exchange, exported, tmp_path, monkeypatch):
    if exchange == "two renames":
        monkeypatch.setattr(export_module, "_exchange_paths", lambda first, second: False)
    out = tmp_path / "out"
    export_open_clip_dir(exported["checkpoints"]["rn-pad"], out)
    (out / "stale.txt").write_text("from before")
    report = export_open_clip_dir(exported["checkpoints"]["rn-squash"], out, overwrite=True)
    assert report["replaced"] is True
    assert {p.name for p in out.iterdir()} == EXPORT_FILES  # the earlier folder is gone whole
    assert json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]["resize_mode"] == "squash"
    assert json.loads((out / "traffic_retrieval.json").read_text())["source_checkpoint"]["sha256"] == file_sha256(exported["checkpoints"]["rn-squash"])
    assert leftovers(tmp_path) == []


def test_exchange_swaps_two_folders_or_changes_nothing(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "a").write_text("1")
    (second / "b").write_text("2")
    swapped = export_module._exchange_paths(first, second)
    assert sorted(p.name for p in first.iterdir()) == (["b"] if swapped else ["a"])
    assert sorted(p.name for p in second.iterdir()) == (["a"] if swapped else ["b"])


def test_overwrite_never_deletes_the_checkpoint_it_reads(exported, tmp_path):
    out = tmp_path / "out"
    export_open_clip_dir(exported["checkpoints"]["rn-pad"], out)
    inside = out / "model.pt"
    inside.write_bytes(exported["checkpoints"]["rn-pad"].read_bytes())
    with pytest.raises(TrafficRetrievalError, match="the checkpoint is inside .*out, which --overwrite would replace"):
        export_open_clip_dir(inside, out, overwrite=True)
    assert inside.is_file()


def test_bad_checkpoints_are_one_line_errors_and_write_nothing(exported, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrafficRetrievalError, match="missing.pt: checkpoint not found"):
        export_open_clip_dir(tmp_path / "missing.pt", out)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TrafficRetrievalError, match="damaged.pt: cannot read checkpoint"):
        export_open_clip_dir(damaged, out)
    # an architecture that would fetch a tokenizer from elsewhere: refused unless trusted
    payload = torch.load(exported["checkpoints"]["rn-pad"], weights_only=True)
    payload["architecture"]["text_cfg"]["hf_tokenizer_name"] = "someone/else"
    atomic_torch_save(payload, tmp_path / "remote.pt")
    with pytest.raises(TrafficRetrievalError, match="text_cfg.hf_tokenizer_name makes open_clip fetch .* unless its architecture is trusted"):
        export_open_clip_dir(tmp_path / "remote.pt", out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "remote.pt"]


def test_the_command_is_a_thin_wrapper(exported, tmp_path, capsys):
    from traffic_retrieval.commands.export import ExportConfig, print_result, run
    from traffic_retrieval.config import checked

    config = checked(ExportConfig(checkpoint=exported["checkpoints"]["vit-pad"], out=tmp_path / "vit"))
    assert config.trust_checkpoint is False and config.overwrite is False
    report = run(config)
    assert report["model_name"] == "TR-Tiny-ViT" and set(report["files"]) == EXPORT_FILES
    print_result(report, config)
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'vit'}: TR-Tiny-ViT" in printed and f'local-dir:{tmp_path / "vit"}' in printed
    assert "query recipe: text_form a3r, router vocabulary, gallery_scope routed" in printed
    for missing, message in (({"out": tmp_path / "x"}, "export needs --checkpoint CKPT"), ({"checkpoint": tmp_path / "x.pt"}, "export needs --out DIR")):
        with pytest.raises(TrafficRetrievalError, match=message):
            run(ExportConfig(**missing))


def test_importing_the_command_stays_light():
    code = "import sys, traffic_retrieval.commands.export; print(sorted({'torch', 'open_clip', 'safetensors'} & set(sys.modules)))"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0 and finished.stdout.strip() == "[]", finished.stderr


@pytest.mark.skipif("export" not in COMMANDS, reason="the lead adds 'export' to traffic_retrieval.commands.COMMANDS")
def test_the_cli(exported, tmp_path, capsys):
    from traffic_retrieval.cli import build_parser, main

    checkpoint, out = str(exported["checkpoints"]["rn-squash"]), str(tmp_path / "out")
    assert main(["export", "--checkpoint", checkpoint, "--out", out]) == 0
    assert f'local-dir:{out}' in capsys.readouterr().out
    assert main(["export", "--checkpoint", checkpoint, "--out", out]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "not empty (give --overwrite" in error and error.count("\n") == 1
    assert main(["export", "--checkpoint", checkpoint, "--out", out, "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {out}")
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "other")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint" in text and "--out DIR" in text and "--overwrite" in text and "--trust-checkpoint" in text
