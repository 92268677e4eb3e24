"""Checkpoints and run folders from someone else (issue 12, findings 1 and 2).

A checkpoint is data: it may describe a plain open_clip architecture and hold weights
that fit it, and nothing more. Its model name never becomes a path, its architecture
never makes open_clip fetch code, weights, configs or tokenizers (Hugging Face, timm,
``local-dir:``) unless the caller opts in, its metadata is checked before a model is
built, and no file is unpickled beyond tensors and plain values (``last.pt`` too).
"""

import builtins
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import checkpoint_payload, create_model, load_checkpoint


@pytest.fixture(scope="module")
def tiny_payload():
    torch.manual_seed(0)
    return checkpoint_payload(create_model("TR-Tiny-RN"))


REMOVED = object()  # a change that deletes the key


def write_checkpoint(tiny_payload, path: Path, **changes) -> Path:
    payload = {**tiny_payload, **changes}
    payload = {key: value for key, value in payload.items() if value is not REMOVED}
    atomic_torch_save(payload, path)
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_one_line(message: str, *needles: str) -> None:
    assert "\n" not in message and len(message) < 500, message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.fixture
def no_outside_access(monkeypatch, tmp_path):
    """Records (and fails) every way open_clip could reach the network, timm, Hugging Face or
    a folder named by a checkpoint; ``calls`` must stay empty."""
    import huggingface_hub
    import open_clip.factory
    import open_clip.model
    import open_clip.pretrained

    calls = []

    def refuse(name):
        def refused(*args, **kwargs):
            calls.append((name, args[:2]))
            raise RuntimeError(f"test: {name} must not be called")

        return refused

    def connect(self, address, *args):
        calls.append(("socket.connect", address))
        raise OSError("test: no network")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hf_hub_download"))
    for module in (open_clip.factory, open_clip.pretrained):
        for name in ("download_pretrained_from_hf", "download_pretrained", "download_pretrained_from_url"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse(name))
    monkeypatch.setattr(open_clip.factory, "_get_hf_config", refuse("_get_hf_config"))
    monkeypatch.setattr(open_clip.factory, "HFTokenizer", refuse("HFTokenizer"))
    monkeypatch.setattr(open_clip.factory, "SigLipTokenizer", refuse("SigLipTokenizer"))
    monkeypatch.setattr(open_clip.model, "HFTextEncoder", refuse("HFTextEncoder"))
    import open_clip.timm_model

    if open_clip.timm_model.timm is not None:
        monkeypatch.setattr(open_clip.timm_model.timm, "create_model", refuse("timm.create_model"))

    outside = tmp_path / "someone-elses-folder"
    outside.mkdir()
    (outside / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 1, "vision_cfg": {}, "text_cfg": {}}}')

    def watched_open(file, *args, **kwargs):  # open_clip.factory reads local-dir: configs with open()
        if str(outside) in str(file):
            calls.append(("open", str(file)))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(open_clip.factory, "open", watched_open, raising=False)
    return calls, outside


@pytest.fixture
def no_real_build(monkeypatch):
    """Records every open_clip model built outside the meta device (that is, with real memory)."""
    import open_clip

    built = []
    real = open_clip.create_model

    def create_model_spy(model_name, *args, **kwargs):
        if not torch.empty(()).is_meta:
            built.append(model_name)
        return real(model_name, *args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_model_spy)
    return built


# -- finding 1: the model name never becomes a path -----------------------------------------------
def escaping_names(tmp_path):
    return {"absolute": str(tmp_path / "elsewhere" / "written"), "parent": "../escaped", "subfolder": "sub/written", "dotdot-only": ".."}


@pytest.mark.parametrize("kind", ["absolute", "parent", "subfolder", "dotdot-only"])
def test_checkpoint_model_name_writes_no_file_anywhere(kind, tiny_payload, tmp_path, monkeypatch):
    import tempfile

    system_temp = tmp_path / "system-temp"  # the factory's TemporaryDirectory goes here, so "../x" lands in tmp_path
    system_temp.mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    name = escaping_names(tmp_path)[kind]
    path = write_checkpoint(tiny_payload, tmp_path / "crafted.pt", model_name=name)
    before = files_under(tmp_path)

    with pytest.raises(TrafficRetrievalError) as refused:
        load_checkpoint(path)
    assert_one_line(str(refused.value), str(path), "model_name")
    assert files_under(tmp_path) == before
    assert not (tmp_path / "elsewhere" / "written.json").exists() and not (tmp_path / "escaped.json").exists()


@pytest.mark.parametrize("name", [123, "", "x" * 500, "ViT B 32", "name\x1b[31m"])
def test_checkpoint_model_name_must_be_a_plain_identifier(name, tiny_payload, tmp_path):
    path = write_checkpoint(tiny_payload, tmp_path / "crafted.pt", model_name=name)
    with pytest.raises(TrafficRetrievalError) as refused:
        load_checkpoint(path)
    assert_one_line(str(refused.value), str(path), "model_name")


def test_cli_refuses_a_checkpoint_whose_model_name_is_a_path(tiny_payload, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    checkpoint = write_checkpoint(tiny_payload, tmp_path / "crafted.pt", model_name=str(tmp_path / "elsewhere" / "written"))
    queries, gallery, out = tmp_path / "queries.txt", tmp_path / "gallery", tmp_path / "submission.json"
    queries.write_text("a white sedan\n", encoding="utf-8")
    gallery.mkdir()
    capsys.readouterr()

    code = main(["predict", "--checkpoint", str(checkpoint), "--queries", str(queries), "--gallery", str(gallery), "--out", str(out),
                 "--device", "cpu", "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ") and error.count("\n") == 1 and "model_name" in error, error
    assert not (tmp_path / "elsewhere" / "written.json").exists() and not out.exists()


# -- finding 1: nothing fetched from elsewhere -----------------------------------------------------
def architecture_with(tiny_payload, tower: str, **keys) -> dict:
    architecture = {**tiny_payload["architecture"]}
    architecture[tower] = {**architecture[tower], **keys}
    return architecture


def remote_cases(tiny_payload, outside: Path) -> dict:
    return {
        "hf-hub name": {"model_name": "hf-hub:someone/their-model", "architecture": {}},
        "local-dir name": {"model_name": f"local-dir:{outside}", "architecture": {}},
        "timm vision tower": {"model_name": "TR-Crafted", "architecture": architecture_with(tiny_payload, "vision_cfg", timm_model_name="resnet18",
                                                                                              timm_model_pretrained=True)},
        "hf text tower": {"model_name": "TR-Crafted", "architecture": architecture_with(tiny_payload, "text_cfg", hf_model_name="someone/text-model")},
        "hf tokenizer": {"model_name": "TR-Crafted", "architecture": architecture_with(tiny_payload, "text_cfg", hf_tokenizer_name="someone/tokenizer")},
        "tokenizer kwargs": {"model_name": "TR-Crafted", "architecture": architecture_with(tiny_payload, "text_cfg", tokenizer_kwargs={"x": 1})},
        "siglip tokenizer by name": {"model_name": "TR-Crafted-SigLIP", "architecture": tiny_payload["architecture"]},
    }


@pytest.mark.parametrize("case", ["hf-hub name", "local-dir name", "timm vision tower", "hf text tower", "hf tokenizer", "tokenizer kwargs",
                                  "siglip tokenizer by name"])
def test_checkpoint_architecture_from_elsewhere_is_refused_without_touching_it(case, tiny_payload, tmp_path, no_outside_access, no_real_build):
    calls, outside = no_outside_access
    path = write_checkpoint(tiny_payload, tmp_path / "crafted.pt", **remote_cases(tiny_payload, outside)[case])

    with pytest.raises(TrafficRetrievalError) as refused:
        load_checkpoint(path)
    assert_one_line(str(refused.value), str(path))
    assert re.search(r"model_name|architecture", str(refused.value)), str(refused.value)
    assert calls == [], calls
    assert no_real_build == []


def test_trusting_a_checkpoint_architecture_is_an_explicit_opt_in(tiny_payload, tmp_path, no_outside_access):
    calls, _ = no_outside_access
    path = write_checkpoint(tiny_payload, tmp_path / "hub.pt", model_name="hf-hub:someone/their-model", architecture={})
    with pytest.raises(TrafficRetrievalError):
        load_checkpoint(path)
    assert calls == []
    with pytest.raises(Exception):  # opted in: open_clip asks the Hub (refused here by the test)
        load_checkpoint(path, trust_architecture=True)
    assert calls and calls[0][0] in ("_get_hf_config", "download_pretrained_from_hf", "hf_hub_download", "socket.connect")


# -- finding 1: metadata checked before a model is built ------------------------------------------
def metadata_cases(tiny_payload) -> dict:
    architecture, state = tiny_payload["architecture"], tiny_payload["state_dict"]
    preprocess = tiny_payload["preprocess_cfg"]
    first_key = next(iter(state))
    return {
        "preprocess_cfg a string": ({"preprocess_cfg": "longest"}, "preprocess_cfg"),
        "preprocess_cfg mean a string": ({"preprocess_cfg": {**preprocess, "mean": "abc"}}, "mean"),
        "preprocess_cfg std of two": ({"preprocess_cfg": {**preprocess, "std": [0.5, 0.5]}}, "std"),
        "preprocess_cfg size a float": ({"preprocess_cfg": {**preprocess, "size": 80.5}}, "size"),
        "preprocess_cfg size other than the model's": ({"preprocess_cfg": {**preprocess, "size": 96}}, "size"),
        "no preprocessing": ({"preprocess_cfg": REMOVED}, "preprocess"),
        "architecture a string": ({"architecture": "TR-Tiny-RN"}, "architecture"),
        "architecture image size other than the weights'": ({"architecture": architecture_with(tiny_payload, "vision_cfg", image_size=96),
                                                             "preprocess_cfg": {**preprocess, "size": 96}}, "state_dict"),
        "architecture width a string": ({"architecture": architecture_with(tiny_payload, "vision_cfg", width="32")}, "width"),
        "architecture unknown key": ({"architecture": {**architecture, "evil": 1}}, "evil"),
        "architecture unknown tower key": ({"architecture": architecture_with(tiny_payload, "text_cfg", evil=1)}, "evil"),
        "architecture more layers than weights": ({"architecture": architecture_with(tiny_payload, "text_cfg", layers=300)}, "layers"),
        "state_dict a list": ({"state_dict": [1, 2]}, "state_dict"),
        "state_dict a key missing": ({"state_dict": {k: v for k, v in state.items() if k != first_key}}, first_key),
        "state_dict an extra key": ({"state_dict": {**state, "evil.weight": torch.zeros(1)}}, "evil.weight"),
        "state_dict a wrong shape": ({"state_dict": {**state, first_key: torch.zeros(3)}}, first_key),
        "state_dict a value not a tensor": ({"state_dict": {**state, first_key: "weights"}}, first_key),
        "model_name missing": ({"model_name": REMOVED}, "model_name"),
        "category_texts a string": ({"category_texts": "vehicle"}, "category_texts"),
        "category_texts of strings": ({"category_texts": {"vehicle": "a white car"}}, "category_texts"),
        "tokenizer a string": ({"tokenizer": "bpe"}, "tokenizer"),
    }


METADATA_CASES = [
    "preprocess_cfg a string", "preprocess_cfg mean a string", "preprocess_cfg std of two", "preprocess_cfg size a float",
    "preprocess_cfg size other than the model's", "no preprocessing", "architecture a string", "architecture image size other than the weights'",
    "architecture width a string", "architecture unknown key", "architecture unknown tower key", "architecture more layers than weights",
    "state_dict a list", "state_dict a key missing", "state_dict an extra key", "state_dict a wrong shape", "state_dict a value not a tensor",
    "model_name missing", "category_texts a string", "category_texts of strings", "tokenizer a string"]


@pytest.mark.parametrize("case", METADATA_CASES)
def test_wrong_checkpoint_metadata_is_a_one_line_error_before_a_model_is_built(case, tiny_payload, tmp_path, no_real_build):
    changes, field_name = metadata_cases(tiny_payload)[case]
    path = write_checkpoint(tiny_payload, tmp_path / "crafted.pt", **changes)

    with pytest.raises(TrafficRetrievalError) as refused:
        load_checkpoint(path)
    assert_one_line(str(refused.value), str(path), field_name)
    assert no_real_build == []


def test_a_good_checkpoint_still_loads(tiny_payload, tmp_path, no_outside_access):
    calls, _ = no_outside_access
    loaded = load_checkpoint(write_checkpoint(tiny_payload, tmp_path / "good.pt"))
    assert loaded.model_name == "TR-Tiny-RN" and loaded.preprocess.size == 80
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, tiny_payload["state_dict"][key]), key
    assert calls == []


def test_soup_ingredients_are_checked_like_checkpoints(tiny_payload, tmp_path):
    from traffic_retrieval.model.soup import read_ingredients

    good = write_checkpoint(tiny_payload, tmp_path / "good.pt")
    state = dict(tiny_payload["state_dict"])
    state[next(iter(state))] = "weights"
    bad = write_checkpoint(tiny_payload, tmp_path / "bad.pt", state_dict=state)
    with pytest.raises(TrafficRetrievalError) as refused:
        read_ingredients([good, bad])
    assert_one_line(str(refused.value), str(bad), "state_dict")
    bad = write_checkpoint(tiny_payload, tmp_path / "bad.pt", model_name="../escaped")
    with pytest.raises(TrafficRetrievalError) as refused:
        read_ingredients([bad, good])
    assert_one_line(str(refused.value), str(bad), "model_name")


# -- finding 2: train --resume loads last.pt with weights_only ----------------------------------------
class RunsCode:
    """Unpickling this creates ``marker``: what a hostile last.pt could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


@pytest.fixture(scope="module")
def prepared_work(tmp_path_factory):
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("resume-security")
    data = root / "data"
    generate_dataset(SynthConfig(out=data, seed=2, train_pedestrians=8, train_vehicles=8, val_pedestrians=2, val_vehicles=2,
                                 test_pedestrians=2, test_vehicles=2, workers=1), progress=False)
    assert main(["prepare", "--data", str(data), "--work", str(root / "work")]) == 0
    return root / "work"


def test_resume_refuses_a_last_checkpoint_that_would_run_code(prepared_work, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "step": 1, "history": [RunsCode(marker)]}, run / "checkpoints" / "last.pt")
    capsys.readouterr()

    code = main(["train", "--work", str(prepared_work), "--out", str(run), "--epochs", "1", "--batch-size", "8", "--workers", "0",
                 "--no-validate", "--no-progress", "--resume"])
    error = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after the image cache's progress bar, which --no-progress leaves on
    assert code == 2
    assert error.startswith("error: ") and error.count("\n") == 1 and "last.pt" in error, error
    assert not marker.exists()
    assert not (run / "checkpoints" / "final.pt").exists()


def test_resume_checks_the_last_checkpoint_before_changing_the_state(tmp_path):
    """A last.pt of plain values but the wrong shape is refused whole, not applied half-way."""
    from traffic_retrieval.train.checkpoints import Checkpointer
    from traffic_retrieval.train.setup import make_optimizer, make_scaler, parameter_groups
    from traffic_retrieval.train.state import TrainingState

    loaded = create_model("TR-Tiny-RN")
    state = TrainingState(loaded.model, make_optimizer(parameter_groups(loaded.model, 0.1), 1e-3), make_scaler("cpu", torch.float32))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    checkpointer = Checkpointer(tmp_path, loaded, {})
    payload = state.state_dict()
    payload["state_dict"] = {k: v + 1 for k, v in payload["state_dict"].items()}
    for broken in ({**payload, "epoch": "one"}, {**payload, "history": "all of it"}, {**payload, "best": [1]}, {k: v for k, v in payload.items() if k != "step"}):
        checkpointer.directory.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(broken, checkpointer.last_path)
        with pytest.raises(TrafficRetrievalError) as refused:
            checkpointer.resume(state)
        assert_one_line(str(refused.value), str(checkpointer.last_path))
        assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
        assert (state.epoch, state.step, state.history) == (0, 0, [])
