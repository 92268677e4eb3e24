"""The trainer's parts without the CLI: one step, gradient accumulation, resume through
``TrainingState.state_dict``, the checkpoint files, the model setup's resize mode.
A tiny TR-Tiny-RN on random 80 px images; CPU, fp32."""

import copy
import dataclasses
import io
import math

import pytest
import torch

from traffic_retrieval.model.factory import create_model
from traffic_retrieval.train.augment import AugmentConfig
from traffic_retrieval.train.checkpoints import Checkpointer
from traffic_retrieval.train.data import TrainingSet
from traffic_retrieval.train.loop import Normalization, StepParts, train_epoch, train_step
from traffic_retrieval.train.losses import multi_positive_loss
from traffic_retrieval.train.schedule import Schedule
from traffic_retrieval.train.setup import contrastive_module, make_optimizer, make_scaler, parameter_groups
from traffic_retrieval.train.state import TrainingState

ROWS = 16
COLOURS = ["red", "white", "black", "blue"]


@pytest.fixture(scope="module")
def tiny():
    """(a LoadedModel to copy, a random training set of 16 pairs, 4 ATTRs)."""
    torch.manual_seed(0)
    loaded = create_model("TR-Tiny-RN")
    generator = torch.Generator().manual_seed(1)
    texts = [f"A {COLOURS[i % 4]} car number {i}." for i in range(ROWS)]
    rows = [{"text": text, "category": "vehicle", "attr": COLOURS[i % 4], "name": f"{i}.jpg"} for i, text in enumerate(texts)]
    images = torch.randint(0, 256, (ROWS, 3, 80, 80), dtype=torch.uint8, generator=generator)
    training_set = TrainingSet(rows, images, loaded.tokenizer(texts), torch.tensor([i % 4 for i in range(ROWS)]), torch.ones(ROWS, dtype=torch.long), [])
    return loaded, training_set


def fresh_run(tiny, lr=1e-3, loss_fn=multi_positive_loss, augment=None, seed=None):
    """A TrainingState and StepParts over a copy of the tiny model (or a new random one for ``seed``)."""
    loaded, training_set = tiny
    if seed is None:
        model = copy.deepcopy(loaded.model)
    else:
        torch.manual_seed(seed)
        model = create_model("TR-Tiny-RN").model
    model.train()
    state = TrainingState(model, make_optimizer(parameter_groups(model, 0.1), lr), make_scaler("cpu", None))
    parts = StepParts(contrastive_module(model), loss_fn, training_set, Normalization.of(loaded.preprocess), augment=augment)
    return state, parts


def weights(model) -> dict:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_steps_lower_the_loss_and_change_the_parameters(tiny):
    state, parts = fresh_run(tiny, lr=1e-4)
    batch = torch.arange(8)
    before = weights(state.model)
    losses = [train_step(state, parts, [batch], torch.Generator()) for _ in range(3)]  # each: the loss before its update
    assert state.step == 3
    assert losses[0] > losses[1] > losses[2], losses
    changed = [key for key, value in weights(state.model).items() if value.is_floating_point() and not torch.equal(value, before[key])]
    assert "visual.attnpool.c_proj.weight" in changed and "text_projection" in changed and "logit_scale" in changed


def test_two_accumulated_half_batches_equal_one_full_batch(tiny):
    """The contrastive loss takes its negatives within a micro-batch, so only a loss that is
    a mean over samples splits exactly; with it (and BatchNorm on its running statistics,
    eval mode) two accumulated halves must give the full batch's gradient and step."""

    def matched_pairs_loss(image_features, text_features, logit_scale, attr_ids):
        return (1 - (image_features * text_features).sum(dim=1)).mean()

    full_state, full_parts = fresh_run(tiny, loss_fn=matched_pairs_loss)
    split_state, split_parts = fresh_run(tiny, loss_fn=matched_pairs_loss)
    full_state.model.eval()
    split_state.model.eval()
    batch = torch.arange(8)
    full_loss = train_step(full_state, full_parts, [batch], torch.Generator())
    split_loss = train_step(split_state, split_parts, [batch[:4], batch[4:]], torch.Generator())
    assert split_loss == pytest.approx(full_loss, rel=1e-5)
    full_parameters, split_parameters = dict(full_state.model.named_parameters()), dict(split_state.model.named_parameters())
    compared = 0
    for name, parameter in full_parameters.items():
        if parameter.grad is None:
            continue
        torch.testing.assert_close(split_parameters[name].grad, parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(split_parameters[name], parameter, rtol=1e-5, atol=1e-6, msg=name)
        compared += 1
    assert compared > 10


def run_epochs(state, parts, schedule, epochs) -> None:
    for epoch in epochs:
        result = train_epoch(state, parts, schedule, epoch, seed=3)
        state.finish_epoch({"epoch": epoch + 1, "step": state.step, "loss": result.loss})


def test_resume_from_state_dict_repeats_an_uninterrupted_run_exactly(tiny):
    schedule = Schedule(batch_size=8, grad_accum=1, steps_per_epoch=1, epochs=2, base_lr=1e-3, warmup=1)  # half the rows an epoch: fewer steps, same test
    augment = AugmentConfig()  # its random stream must restart where the interrupted run left it
    uninterrupted, parts = fresh_run(tiny, augment=augment)
    run_epochs(uninterrupted, parts, schedule, [0, 1])

    first, parts = fresh_run(tiny, augment=augment)
    run_epochs(first, parts, schedule, [0])
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    resumed, parts = fresh_run(tiny, augment=augment, seed=99)  # other initial weights: all must come from the file
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert (resumed.epoch, resumed.step, len(resumed.history)) == (1, 1, 1)
    run_epochs(resumed, parts, schedule, range(resumed.epoch, 2))

    expected, actual = weights(uninterrupted.model), weights(resumed.model)
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == []
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in uninterrupted.history]
    assert resumed.step == uninterrupted.step == 2


def test_checkpointer_keeps_the_newest_epochs_the_best_and_last(tiny, tmp_path):
    loaded, _ = tiny
    state, _ = fresh_run(tiny)
    checkpointer = Checkpointer(tmp_path, loaded, {"train_config": {"epochs": 3}}, keep=2)
    for epoch, score in ((1, 0.2), (2, 0.5), (3, 0.4)):
        is_best = state.finish_epoch({"epoch": epoch, "loss": 1.0, "val": {"official_mAP@10": score}})
        checkpointer.save_epoch(state, is_best)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "epoch_2.pt", "epoch_3.pt", "last.pt"]
    assert torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 2
    assert state.best == {"official_mAP@10": 0.5, "epoch": 2}
    final = torch.load(checkpointer.save_final(state), weights_only=True)
    assert [r["epoch"] for r in final["history"]] == [1, 2, 3] and final["train_config"] == {"epochs": 3}

    resumed, _ = fresh_run(tiny, seed=5)
    assert checkpointer.resume(resumed) and resumed.epoch == 3 and resumed.best == state.best
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    from traffic_retrieval.errors import TrafficRetrievalError

    with pytest.raises(TrafficRetrievalError, match="last.pt: cannot resume from it"):
        checkpointer.resume(resumed)


def test_model_setup_keeps_a_checkpoints_resize_mode_unless_one_is_given(tiny, tmp_path):
    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload
    from traffic_retrieval.train.setup import load_model

    loaded, _ = tiny
    squashed = dataclasses.replace(loaded, preprocess=dataclasses.replace(loaded.preprocess, resize_mode="squash"))
    checkpoint = tmp_path / "squash.pt"
    atomic_torch_save(checkpoint_payload(squashed), checkpoint)
    assert load_model("TR-Tiny-RN", None, checkpoint).preprocess.resize_mode == "squash"
    assert load_model("TR-Tiny-RN", None, checkpoint, resize_mode="crop").preprocess.resize_mode in ("crop", "shortest")
    assert load_model("TR-Tiny-RN", None).preprocess.resize_mode in ("pad", "longest")  # a new model: pad


def test_a_bogus_resize_mode_is_a_config_error_before_any_model_loads(tmp_path):
    from traffic_retrieval.commands.train import TrainConfig
    from traffic_retrieval.config import build_config
    from traffic_retrieval.errors import TrafficRetrievalError

    with pytest.raises(TrafficRetrievalError, match="^resize_mode must be one of .*got 'bogus'$"):
        build_config(TrainConfig, None, {"checkpoint": tmp_path / "missing.pt", "resize_mode": "bogus"})
    assert build_config(TrainConfig, "cpu-tiny", {}).resize_mode == "squash"  # the preset's own choice
    assert build_config(TrainConfig, None, {}).resize_mode is None  # unset: the checkpoint's, or pad


def test_cli_refuses_a_bogus_resize_mode_in_one_line(tmp_path, capsys):
    from traffic_retrieval.cli import main

    assert main(["train", "--checkpoint", str(tmp_path / "missing.pt"), "--resize-mode", "bogus", "--work", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: resize_mode must be one of") and "'bogus'" in error
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_run_reports_each_epoch_to_its_callbacks(tmp_path):
    """The public hook: ``run(config, callbacks=...)`` on a tiny synthetic dataset."""
    from traffic_retrieval.commands.prepare import PrepareConfig
    from traffic_retrieval.commands.prepare import run as prepare
    from traffic_retrieval.commands.train import TrainConfig, run
    from traffic_retrieval.synth import SynthConfig, generate_dataset
    from traffic_retrieval.train.callbacks import TrainCallback

    generate_dataset(SynthConfig(out=tmp_path / "data", seed=2, train_pedestrians=8, train_vehicles=8, val_pedestrians=2, val_vehicles=2,
                                 test_pedestrians=2, test_vehicles=2, workers=1), progress=False)
    prepare(PrepareConfig(data=tmp_path / "data", work=tmp_path / "work"))

    class Recorder(TrainCallback):
        def __init__(self):
            self.events = []

        def on_epoch_start(self, epoch, epochs):
            self.events.append(("start", epoch, epochs))

        def on_epoch_end(self, event):
            self.events.append(("end", event))

    recorder = Recorder()
    result = run(TrainConfig(work=tmp_path / "work", out=tmp_path / "run", epochs=2, batch_size=8, warmup=1, precision="fp32", workers=0,
                             validate=False, progress=False), callbacks=[recorder, object()])  # an object without the methods is fine
    assert [e[0] for e in recorder.events] == ["start", "end", "start", "end"]
    assert recorder.events[0] == ("start", 1, 2) and recorder.events[2] == ("start", 2, 2)
    first, second = recorder.events[1][1], recorder.events[3][1]
    assert (first.epoch, first.epochs, first.step, first.samples) == (1, 2, 2, 16) and second.step == 4
    assert first.train_seconds > 0 and first.record == result["history"][0] and first.rank == 0
    assert {p.name for p in second.checkpoints} == {"epoch_2.pt", "last.pt"} and all(p.is_file() for p in second.checkpoints)


def test_validation_reports_the_query_recipe_scores_and_the_routing_of_its_images(tiny):
    """validate with a recipe (a3r texts, whole gallery, centred gallery) and the category captions a
    checkpoint stores: the report has the scores, open_clip's R@10 and the val images' routing."""
    from types import SimpleNamespace

    from traffic_retrieval.train.validate import val_queries, validate

    loaded, training_set = tiny
    recipe = SimpleNamespace(router="a3r", text_form="a3r", prompt=False, prompt_suffix="", gallery_scope="all", gallery_norm="center", image_tta="none",
                             gallery_bn="adapt", routing_penalty=0.05, query_bank="none", query_bank_beta=10.0)
    queries = val_queries(training_set, loaded.tokenizer, recipe, routing_texts={"pedestrian": ["a person walking."], "vehicle": ["a car."]})
    assert queries.gallery_scope == "all" and queries.gallery_norm == "center" and queries.gallery_bn == "adapt"
    report = validate(copy.deepcopy(loaded.model), training_set, loaded.preprocess, "cpu", None, queries)
    assert 0 <= report["strict_mAP@10"] <= report["official_mAP@10"] <= 1 and 0 <= report["t2i_R@10"] <= 1
    routing = report["routing"]
    assert routing["images"] == ROWS and routing["per_category"]["vehicle"]["images"] == ROWS  # every tiny row is a vehicle
    assert "routing" not in validate(copy.deepcopy(loaded.model), training_set, loaded.preprocess, "cpu", None)


def test_mix_style_mixes_channel_statistics_deterministically():
    from traffic_retrieval.train.augment import _beta_samples, mix_style

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 16, 16) * 0.5
    images[4:] += 0.4  # two "styles": dark and bright
    assert mix_style(images, generator, 0.0) is images and torch.equal(mix_style(images[:1], generator, 1.0), images[:1])
    mixed = mix_style(images, torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(mixed, mix_style(images, torch.Generator().manual_seed(1), 1.0))  # deterministic given the generator
    assert mixed.shape == images.shape and 0 <= mixed.min() and mixed.max() <= 1
    means_before, means_after = images.mean(dim=(2, 3)), mixed.mean(dim=(2, 3))
    assert not torch.allclose(means_before, means_after)  # some images took another's exposure
    # the content (each image's normalised pattern) stays where no clamping happened
    centred = lambda x: (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    assert torch.corrcoef(torch.stack([centred(images)[0].flatten(), centred(mixed)[0].flatten()]))[0, 1] > 0.99
    draws = _beta_samples(0.1, 20000, torch.Generator().manual_seed(2))
    assert 0 < draws.min() and draws.max() < 1 and abs(float(draws.mean()) - 0.5) < 0.02
    assert float(((draws < 0.1) | (draws > 0.9)).float().mean()) > 0.7  # Beta(0.1, 0.1): mostly near 0 or 1


def test_a_step_with_style_mixing_trains(tiny):
    state, parts = fresh_run(tiny)
    parts = dataclasses.replace(parts, style_mix=0.5)
    before = weights(state.model)
    loss = train_step(state, parts, [torch.arange(ROWS)], torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in weights(state.model).items())
