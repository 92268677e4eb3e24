import open_clip
import pytest
import torch

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import MODEL_CONFIG_DIR, checkpoint_payload, create_model, load_checkpoint, read_checkpoint
from traffic_retrieval.commands.soup import SoupConfig, format_report
from traffic_retrieval.commands.soup import run as make_soup
from traffic_retrieval.model.soup import average_state_dicts, greedy_soup


def test_average_state_dicts_averages_floats_and_copies_the_rest():
    first = {"w": torch.tensor([1.0, 2.0, 3.0]), "steps": torch.tensor(7), "half": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    second = {"w": torch.tensor([3.0, 4.0, 6.0]), "steps": torch.tensor(99), "half": torch.tensor([2.0, 3.0], dtype=torch.bfloat16)}
    averaged = average_state_dicts([first, second])
    assert torch.equal(averaged["w"], torch.tensor([2.0, 3.0, 4.5]))
    assert averaged["steps"].item() == 7 and averaged["steps"].dtype == torch.int64
    assert averaged["half"].dtype == torch.bfloat16 and torch.equal(averaged["half"].float(), torch.tensor([1.5, 2.5]))
    # bf16 values whose mean needs more precision than bf16 sums: accumulated in float32, rounded once
    small = [{"x": torch.tensor([1.0 + i / 128], dtype=torch.bfloat16)} for i in range(3)]
    assert average_state_dicts(small)["x"].item() == torch.tensor(1 + 1 / 128, dtype=torch.bfloat16).item()
    first["w"] += 100  # the result is a copy, not a view of the inputs
    assert averaged["w"][0].item() == 2.0 and average_state_dicts([first])["w"] is not first["w"]


def test_greedy_soup_keeps_an_ingredient_only_when_the_score_improves():
    calls = []

    def score(state):  # best at w == 1; dyadic values keep the arithmetic exact
        calls.append(state["w"].item())
        return -abs(state["w"].item() - 1.0)

    ingredients = [{"w": torch.tensor([value])} for value in (0.0, 1.5, 2.0, 0.75, -3.0)]
    soup, kept, history = greedy_soup(ingredients, score)
    # alone: -1, -0.5, -1, -0.25, -4 -> tried in the order 3 (0.75), 1 (1.5), 0 (0.0), 2 (2.0, tie with 0: later), 4
    # 0.75 -> +1.5: 1.125 (-0.125, kept) -> +0.0: 0.75 (-0.25, rejected)
    # -> +2.0: 1.41667 (rejected) -> +(-3.0): -0.25 (-1.25, rejected)
    assert kept == [3, 1]
    assert history == pytest.approx([-0.25, -0.125, -0.25, -(4.25 / 3 - 1), -1.25])
    assert torch.equal(soup["w"], torch.tensor([1.125]))
    assert calls[:5] == [0.0, 1.5, 2.0, 0.75, -3.0]  # each ingredient scored once, then one call per candidate
    assert len(calls) == 9

    # an equal score is not an improvement; a later ingredient can still join
    ingredients = [{"w": torch.tensor([value])} for value in (0.5, 0.5, 1.5)]
    soup, kept, history = greedy_soup(ingredients, score)
    assert kept == [0, 2] and history == [-0.5, -0.5, 0.0] and torch.equal(soup["w"], torch.tensor([1.0]))

    # a soup of one ingredient is a copy, never the caller's dict
    soup, kept, history = greedy_soup([{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}], score)
    assert kept == [0] and history == [0.0, -1.0]
    soup["w"] += 1
    assert soup["w"].item() == 2.0

    # given scores are used as they are: no calls for the ingredients alone
    calls.clear()
    greedy_soup(ingredients[:2], score, ingredient_scores=[0.0, 1.0])
    assert calls == [0.5]


def _save_tiny_checkpoint(path, seed, extra=None, model_name="TR-Tiny-RN"):
    torch.manual_seed(seed)
    loaded = create_model(model_name)
    atomic_torch_save(checkpoint_payload(loaded, {"category_texts": {"pedestrian": ["a person"], "vehicle": ["a car"]}, "epoch": seed, **(extra or {})}), path)
    return path


def test_mismatched_checkpoints_are_one_line_errors_naming_the_file(tmp_path):
    first = _save_tiny_checkpoint(tmp_path / "a.pt", 0)
    payload = read_checkpoint(first)
    payload["architecture"] = {**payload["architecture"], "embed_dim": 64}
    atomic_torch_save(payload, tmp_path / "other_arch.pt")
    payload = read_checkpoint(first)
    payload["state_dict"]["logit_scale"] = torch.ones(2)
    atomic_torch_save(payload, tmp_path / "other_shape.pt")
    payload = read_checkpoint(first)
    del payload["state_dict"]["logit_scale"]
    atomic_torch_save(payload, tmp_path / "other_keys.pt")
    atomic_torch_save({"state_dict": payload["state_dict"]}, tmp_path / "plain.pt")

    for name, words in [("other_arch.pt", "architecture"), ("other_shape.pt", "shape"), ("other_keys.pt", "logit_scale"),
                        ("plain.pt", "not a traffic-retrieval checkpoint"), ("missing.pt", "not found")]:
        with pytest.raises(TrafficRetrievalError) as info:
            make_soup(SoupConfig(checkpoints=[first, tmp_path / name], out=tmp_path / "soup.pt", method="uniform", progress=False))
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / name) in message and words in message, message
    assert not (tmp_path / "soup.pt").exists()
    with pytest.raises(TrafficRetrievalError, match="--val"):
        make_soup(SoupConfig(checkpoints=[first, first], out=tmp_path / "soup.pt", method="greedy"))


@pytest.fixture(scope="module")
def soup_inputs(tmp_path_factory):
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("soup")
    data = root / "data"
    generate_dataset(SynthConfig(out=data, seed=2, train_pedestrians=10, train_vehicles=10, val_pedestrians=12, val_vehicles=8,
                                 test_pedestrians=4, test_vehicles=4, workers=1), progress=False)
    checkpoints = [_save_tiny_checkpoint(root / f"seed{seed}.pt", seed) for seed in (1, 2, 3)]
    return data, checkpoints


def _expected_average(checkpoints, kept):
    states = [read_checkpoint(checkpoints[i])["state_dict"] for i in sorted(kept)]
    return {key: torch.stack([s[key].float() for s in states]).mean(0) if value.is_floating_point() else value for key, value in states[0].items()}


def _assert_weights(loaded, expected):
    for key, value in loaded.model.state_dict().items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-6), key


def test_uniform_and_greedy_soups_end_to_end(soup_inputs, tmp_path):
    data, checkpoints = soup_inputs
    uniform_path = tmp_path / "uniform.pt"
    uniform = make_soup(SoupConfig(checkpoints=checkpoints, val=data, out=uniform_path, method="uniform", device="cpu", workers=0, progress=False))
    assert uniform["kept_indices"] == [0, 1, 2] and uniform["soup_score"] == uniform["uniform_score"]
    loaded = load_checkpoint(uniform_path)
    _assert_weights(loaded, _expected_average(checkpoints, [0, 1, 2]))
    assert loaded.checkpoint["soup"]["method"] == "uniform" and loaded.checkpoint["soup"]["kept"] == [str(p) for p in checkpoints]
    assert loaded.checkpoint["category_texts"]["vehicle"] == ["a car"] and "epoch" not in loaded.checkpoint

    greedy_path = tmp_path / "greedy.pt"
    greedy = make_soup(SoupConfig(checkpoints=checkpoints, val=data, out=greedy_path, device="cpu", workers=0, progress=False))
    singles = [ingredient["score"] for ingredient in greedy["ingredients"]]
    assert singles == [ingredient["score"] for ingredient in uniform["ingredients"]]
    assert greedy["kept_indices"][0] == singles.index(max(singles))
    assert greedy["soup_score"] >= max(singles) and len(greedy["history"]) == 3
    assert greedy["uniform_score"] == pytest.approx(uniform["uniform_score"])
    loaded = load_checkpoint(greedy_path)
    _assert_weights(loaded, _expected_average(checkpoints, greedy["kept_indices"]))
    soup_record = loaded.checkpoint["soup"]
    assert soup_record["ingredients"] == [str(p) for p in checkpoints] and soup_record["scores"]["ingredients"] == singles
    assert "kept" in format_report(greedy) and "uniform soup" in format_report(greedy)

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    plain = open_clip.create_model("TR-Tiny-RN", pretrained=str(greedy_path)).state_dict()
    assert all(torch.equal(plain[key], value) for key, value in loaded.model.state_dict().items())


def test_uniform_soup_without_val_only_averages(soup_inputs, tmp_path):
    _, checkpoints = soup_inputs
    report = make_soup(SoupConfig(checkpoints=checkpoints[:2], out=tmp_path / "u.pt", method="uniform", progress=False))
    assert report["soup_score"] is None and report["ingredients"][0]["score"] is None
    _assert_weights(load_checkpoint(tmp_path / "u.pt"), _expected_average(checkpoints, [0, 1]))
    assert "-" in format_report(report)
