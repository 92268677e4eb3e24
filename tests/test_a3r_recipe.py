"""The seed's recipe to the letter: the ``a3r-vit-bigg`` pipeline preset equals the seed's
params.txt, its learning rate equals open_clip's ``cosine_lr`` at every step, a model
trained in the a3r text form is queried in it with no flag, and the parts it needs
(pipeline configs, schedule length, RandomResizedCrop, one-to-one R@10) on their own."""

import json
import re

import pytest
import torch

from traffic_retrieval.cli import main
from traffic_retrieval.commands import command_config
from traffic_retrieval.config import build_config
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.train.schedule import plan_schedule

# best-result-review/params.txt of the seed's submitted run (docs/method.md, "The seed, to the letter")
SEED_PARAMS = {"model": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k", "lr": 4e-7, "wd": 0.01, "batch_size": 25, "warmup": 10000,
               "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "schedule_epochs": 30, "epochs": 5, "precision": "fp16", "loss": "clip",
               "seed": 0, "grad_checkpointing": False, "lock_image": False, "lock_text": False, "resize_mode": "pad",
               "random_resized_crop": True, "augment": False, "train_manifest": "train_augmented", "keep_epochs": [5]}


def test_the_preset_is_the_seeds_params_txt():
    train = command_config("train", "a3r-vit-bigg")
    assert {key: getattr(train, key) for key in SEED_PARAMS} == SEED_PARAMS
    for name in ("train", "predict", "search", "serve", "queries"):
        recipe = command_config(name, "a3r-vit-bigg").query
        assert (recipe.text_form, recipe.router, recipe.gallery_scope) == ("a3r", "a3r", "all"), name
    predict = command_config("predict", "a3r-vit-bigg")
    assert predict.precision == "fp32" and not predict.rerank.enabled  # the seed inferred in fp32, without re-ranking
    augment = command_config("augment", "a3r-vit-bigg")
    assert (augment.model, augment.pretrained, augment.caption_form, augment.resize_mode, augment.precision, augment.out_manifest) == (
        "ViT-bigG-14", "laion2b_s39b_b160k", "bare", "crop", "fp16", "train_augmented")
    assert command_config("soup", "a3r-vit-bigg").criterion == "r10"


def test_the_seeds_schedule_keeps_97_percent_of_the_peak_after_epoch_5():
    steps_per_epoch = 126_117 // 25  # the seed's training pairs and batch
    schedule = plan_schedule(126_117, 25, 1, 5, 4e-7, 10_000, schedule_epochs=30)
    assert schedule.steps_per_epoch == steps_per_epoch and schedule.total_steps == 30 * steps_per_epoch
    assert 0.96 < schedule.lr(5 * steps_per_epoch - 1) / 4e-7 < 0.98
    assert plan_schedule(126_117, 25, 1, 5, 4e-7, 10_000).lr(5 * steps_per_epoch - 1) < 1e-9  # ours decayed to zero within the 5


def test_schedule_errors_are_one_line():
    with pytest.raises(TrafficRetrievalError, match=r"schedule_epochs \(3\) must be at least epochs \(5\)"):
        plan_schedule(100, 10, 1, 5, 1.0, 0, schedule_epochs=3)
    with pytest.raises(TrafficRetrievalError, match="batch_size 25 does not split evenly across 2 processes; use 24 or 26"):
        plan_schedule(1000, 25, 1, 5, 1.0, 0, world_size=2)
    with pytest.raises(TrafficRetrievalError, match="use 4$|use 4 "):
        plan_schedule(1000, 3, 1, 5, 1.0, 0, world_size=4)


@pytest.fixture(scope="module")
def a3r_run(tmp_path_factory):
    """A tiny model trained with the preset's schedule (30-epoch cosine, 5 run) and query recipe."""
    from traffic_retrieval.commands.prepare import PrepareConfig
    from traffic_retrieval.commands.prepare import run as prepare
    from traffic_retrieval.commands.train import run
    from traffic_retrieval.synth import SynthConfig, generate_dataset
    from traffic_retrieval.train.callbacks import TrainCallback

    root = tmp_path_factory.mktemp("a3r")
    generate_dataset(SynthConfig(out=root / "data", seed=3, train_pedestrians=8, train_vehicles=8, val_pedestrians=3, val_vehicles=3,
                                 test_pedestrians=3, test_vehicles=3, workers=1), progress=False)
    prepare(PrepareConfig(data=root / "data", work=root / "work"))

    class Steps(TrainCallback):
        def __init__(self):
            self.logged = []

        def on_step(self, step, loss, lr):
            self.logged.append((step, lr))

    steps = Steps()
    config = command_config("train", "a3r-vit-bigg", {
        "model": "TR-Tiny-RN", "pretrained": "", "device": "cpu", "precision": "fp32", "batch_size": 8, "warmup": 3, "lr": 1e-3,
        "train_manifest": "train", "workers": 0, "progress": False, "work": root / "work", "out": root / "run", "keep_checkpoints": 1})
    result = run(config, callbacks=[steps])
    return root, config, result, steps.logged


def test_the_logged_learning_rate_is_open_clips_cosine_lr_at_every_step(a3r_run):
    from open_clip_train.scheduler import cosine_lr

    _, config, result, logged = a3r_run
    steps_per_epoch = 16 // 8
    assert [step for step, _ in logged] == list(range(1, 5 * steps_per_epoch + 1)) and result["history"][-1]["epoch"] == 5
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    open_clip_lr = cosine_lr(optimizer, config.lr, config.warmup, steps_per_epoch * config.schedule_epochs)  # open_clip_train's arguments
    for step, lr in logged:
        assert lr == pytest.approx(open_clip_lr(step - 1), rel=1e-12, abs=0.0), step  # the lr the step used; steps count from 0 there
    assert logged[-1][1] > 0.9 * config.lr  # 5 of 30 epochs: still near the peak


def test_the_run_keeps_the_epoch_the_preset_names_and_records_the_recipe(a3r_run):
    from traffic_retrieval.model.factory import read_checkpoint

    root, _, _, _ = a3r_run
    checkpoints = root / "run" / "checkpoints"
    assert (checkpoints / "epoch_5.pt").is_file()
    payload = read_checkpoint(checkpoints / "epoch_5.pt")
    assert payload["query_recipe"] == {"text_form": "a3r", "router": "a3r", "gallery_scope": "all"}
    vehicle_captions = payload["category_texts"]["vehicle"]
    assert vehicle_captions and all(not text.endswith(".") and not text.startswith(("This is", "A ", "An ")) for text in vehicle_captions)
    assert "t2i_R@10" in payload["metrics"]["val"]


def test_predict_applies_the_checkpoints_text_form_with_no_flag(a3r_run, capsys):
    root, _, _, _ = a3r_run
    checkpoint = root / "run" / "checkpoints" / "epoch_5.pt"
    assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(root / "data"), "--out", str(root / "sub.json"),
                 "--workers", "0", "--no-progress"]) == 0
    assert "text form a3r, router a3r, gallery scope all" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(root / "data"), "--out", str(root / "sub2.json"),
                 "--workers", "0", "--no-progress", "--text-form", "sentence", "--gallery-scope", "routed"]) == 0
    assert "text form sentence, router a3r, gallery scope routed" in capsys.readouterr().out  # flags override the checkpoint
    submission = json.loads((root / "sub.json").read_text())
    assert len(submission["results"]) == 6 and all(len(r["image_names"]) == 6 for r in submission["results"])


def test_pipeline_config_errors_name_the_key(tmp_path):
    from traffic_retrieval.commands import command_config_keys
    from traffic_retrieval.commands.train import TrainConfig

    keys = command_config_keys()
    cases = [
        ("query: {text_form: a3r}\nbogus: 1\ncommands: {}\n", "unknown key 'bogus' (no command has it)"),
        ("commands: {trian: {epochs: 1}}\n", "unknown command 'trian' under 'commands'"),
        ("commands: {train: {epochz: 1}}\n", "unknown key 'epochz'"),
        ("commands: [train]\n", "'commands' must map command names to their settings"),
        ("commands: {train: 3}\n", "commands.train must be a mapping"),
        ("query: {text_form: seed}\ncommands: {}\n", "text_form must be one of sentence, a3r"),
    ]
    for number, (text, message) in enumerate(cases):
        path = tmp_path / f"pipeline{number}.yaml"
        path.write_text(text)
        with pytest.raises(TrafficRetrievalError, match=re.escape(message)) as error:
            build_config(TrainConfig, path, {}, command="train", command_keys=keys)
        assert "\n" not in str(error.value)
    # top-level keys reach every command that has them; predict ignores train's own keys there
    path = tmp_path / "shared.yaml"
    path.write_text("batch_size: 7\nepochs: 2\ncommands: {predict: {top_k: 5}}\n")
    assert build_config(TrainConfig, path, {}, command="train", command_keys=keys).epochs == 2
    predict = command_config("predict", path)
    assert (predict.batch_size, predict.top_k) == (7, 5)


def test_random_resized_crop_is_the_seeds_and_deterministic():
    from traffic_retrieval.train.augment import random_resized_crop

    images = torch.rand(6, 3, 40, 40)
    first = random_resized_crop(images, torch.Generator().manual_seed(0))
    again = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, again)
    assert not torch.equal(first, random_resized_crop(images, torch.Generator().manual_seed(1)))
    # a crop of 90-100% of the area stays close to the image: never a zoom into a small part
    smooth = torch.linspace(0, 1, 40).expand(1, 3, 40, 40).repeat(6, 1, 1, 1).contiguous()
    cropped = random_resized_crop(smooth, torch.Generator().manual_seed(2))
    assert (cropped - smooth).abs().max() < 0.2
    # scale (1, 1) with ratio (1, 1) is the identity
    assert torch.equal(random_resized_crop(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0)), images)


def test_one_to_one_recall():
    from traffic_retrieval.train.validate import one_to_one_recall

    texts = torch.eye(4)
    images = torch.eye(4)
    assert one_to_one_recall(texts, images, k=1) == 1.0
    swapped = images[[1, 0, 2, 3]]  # texts 0 and 1 find the other's image first
    assert one_to_one_recall(texts, swapped, k=1) == 0.5 and one_to_one_recall(texts, swapped, k=2) == 1.0
    assert one_to_one_recall(texts, swapped, k=1, block=1) == 0.5
    assert one_to_one_recall(torch.zeros((0, 4)), images) == 0.0


def test_bare_augmented_captions_under_the_sentence_form_are_counted():
    from traffic_retrieval.commands.train import _bare_vehicle_captions

    rows = [{"category": "vehicle", "text": "white Audi Sedan", "augmented_from": "This is a white Audi."},
            {"category": "vehicle", "text": "This is a white Audi Sedan.", "augmented_from": "This is a white Audi."},
            {"category": "vehicle", "text": "white Audi"},  # as labelled, not augmented
            {"category": "pedestrian", "text": "A man", "augmented_from": "x"}]
    assert _bare_vehicle_captions(rows) == 1
