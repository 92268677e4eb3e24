"""Contrastive training of open_clip models, in parts the ``train`` job (``commands/train.py``)
puts together:

- ``setup.py``: the model to train (checkpoint or name, resize mode), tower locking,
  parameter groups, optimizer, loss scaler, the DDP-wrappable forward;
- ``data.py``: training and val sets as decoded uint8 images (cached on disk) and tokens;
- ``augment.py``: surveillance-look batch augmentations;
- ``losses.py``: CLIP and multi-positive contrastive losses; ``attribute_heads.py``: the auxiliary heads;
- ``schedule.py``: batch arithmetic and the warmup + cosine learning rate;
- ``loop.py``: ``train_step`` (one optimizer step) and ``train_epoch``;
- ``state.py``: ``TrainingState``, what ``last.pt`` holds and ``--resume`` restores;
- ``checkpoints.py``: ``Checkpointer`` (epoch_N.pt, best.pt, last.pt, final.pt);
- ``validate.py``: val-split scoring (also used by ``soup``);
- ``callbacks.py``: the public hook (``on_epoch_start``, ``on_epoch_end``);
- ``log.py``, ``curves.py``: train.log, TensorBoard, training_curves.png;
- ``attribute_augment.py``: completing captions with attributes the model scores best.
"""
