import math

import torch

from traffic_retrieval.commands import command_config
from traffic_retrieval.data.vocabulary import VehicleVocabulary
from traffic_retrieval.model.factory import create_model
from traffic_retrieval.train.attribute_heads import IGNORE, attribute_loss, attribute_targets, head_logits, make_attribute_heads
from traffic_retrieval.train.schedule import cosine_lr, plan_schedule
from traffic_retrieval.train.setup import lock_towers


def test_warmup_then_cosine():
    assert cosine_lr(0, 1.0, 10, 110) == 0.1
    assert cosine_lr(9, 1.0, 10, 110) == 1.0
    assert math.isclose(cosine_lr(60, 1.0, 10, 110), 0.5)
    assert cosine_lr(110, 1.0, 10, 110) == 0.0


def test_schedule_splits_an_epoch_into_micro_batches():
    import torch

    schedule = plan_schedule(num_samples=50, batch_size=8, grad_accum=2, epochs=3, lr=1.0, warmup=0)
    assert (schedule.steps_per_epoch, schedule.total_steps, schedule.samples_per_step) == (3, 9, 16)
    order = torch.arange(50)
    assert [m.tolist() for m in schedule.micro_batches(order, 1)] == [list(range(16, 24)), list(range(24, 32))]
    tiny = plan_schedule(num_samples=5, batch_size=8, grad_accum=2, epochs=1, lr=1.0, warmup=0)
    assert (tiny.batch_size, tiny.grad_accum, tiny.steps_per_epoch) == (5, 1, 1)  # never more than the data, never an empty micro-batch


def test_seed_preset_builds_real_vit_bigg_with_gradient_checkpointing_without_weights():
    config = command_config("train", "a3r-vit-bigg")
    assert not config.grad_checkpointing  # the seed's params.txt; a user short of memory turns it on:
    loaded = create_model(config.model, pretrained=None, device="meta", gradient_checkpointing=True)
    model = loaded.model
    assert next(model.parameters()).device.type == "meta"  # no memory allocated for 2.5B weights
    assert 2.5e9 < sum(p.numel() for p in model.parameters()) < 2.6e9
    assert model.visual.transformer.grad_checkpointing and model.transformer.grad_checkpointing
    assert loaded.preprocess.size == 224 and config.resize_mode == "pad"
    features = model.encode_image(torch.empty(2, 3, 224, 224, device="meta"))
    assert tuple(features.shape) == (2, 1280)


def test_attribute_targets_and_loss():
    vocabulary = VehicleVocabulary(colors=["red", "white"], types=["SUV", "Truck"], brands=["Audi", "BMW"])
    flags = ["0"] * 21
    flags[0] = "1"
    rows = [
        {"category": "pedestrian", "attr": ",".join(flags)},
        {"category": "vehicle", "attr": "white Audi."},
        {"category": "vehicle", "attr": "Truck."},
    ]
    targets = attribute_targets(rows, vocabulary)
    assert targets["flags"][0, 0] == 1 and targets["flags"][0].sum() == 1 and targets["is_pedestrian"].tolist() == [True, False, False]
    assert targets["color"].tolist() == [IGNORE, 1, IGNORE] and targets["brand"].tolist() == [IGNORE, 0, IGNORE]
    assert targets["type"].tolist() == [IGNORE, IGNORE, 1]
    heads = make_attribute_heads(8, vocabulary)
    features = torch.randn(3, 8, requires_grad=True)
    loss = attribute_loss(head_logits(heads, features), targets, torch.arange(3))
    loss.backward()
    assert torch.isfinite(loss) and heads["vehicle_brand"].weight.grad.abs().sum() > 0 and heads["flags"].weight.grad.abs().sum() > 0


def test_lock_towers_freezes_what_it_says():
    loaded = create_model("TR-Tiny-RN")
    # open_clip's groups, from the end: the projection, then the last block with ln_final, ...
    lock_towers(loaded.model, loaded.model_name, lock_image=True, lock_text=True, text_unlocked_layers=2)
    assert not any(p.requires_grad for p in loaded.model.visual.parameters())
    assert not loaded.model.token_embedding.weight.requires_grad
    assert not any(p.requires_grad for p in loaded.model.transformer.resblocks[0].parameters())
    assert all(p.requires_grad for p in loaded.model.transformer.resblocks[-1].parameters())
    assert loaded.model.text_projection.requires_grad
