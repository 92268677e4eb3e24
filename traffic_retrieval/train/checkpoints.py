"""A run's checkpoints, in RUN/checkpoints/:

- ``epoch_N.pt`` after every ``save_every``-th epoch, the last and the ``keep_epochs`` (the
  newest ``keep`` kept, 0 keeps all; ``keep_epochs`` never deleted),
- ``best.pt`` when an epoch beats the best official mAP@10 so far on the deciding val split (the camera-domain one where it exists; a hard link to that
  epoch's ``epoch_N.pt`` when it was written),
- ``last.pt`` every epoch: ``TrainingState.state_dict()`` (history, scaler and, unless
  ``save_optimizer="none"``, the optimizer), for ``--resume``,
- ``final.pt`` at the end, with the whole history.

Every file but ``last.pt`` is a self-describing model checkpoint (``model/factory.py``)
that ``--checkpoint`` and plain open_clip load. ``checkpoint_disk_estimate`` says what a
policy writes and holds, from parameter counts (``benchmarks/checkpoint_disk.py``,
``docs/scale.md``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError


def category_texts(rows: list[dict], per_category: int = 500, seed: int = 0, text_form: str = "sentence") -> dict[str, list[str]]:
    """A sample of distinct training captions per category (in the run's text form), stored in
    the checkpoint so inference can tell pedestrian from vehicle gallery images (see ``gallery_categories``)."""
    import random

    from ..data.text_forms import training_caption

    sample = {}
    for category in ("pedestrian", "vehicle"):
        texts = sorted({training_caption(r["text"], category, text_form) for r in rows if r["category"] == category})
        random.Random(seed).shuffle(texts)
        if texts:
            sample[category] = texts[:per_category]
    return sample


SAVE_OPTIMIZER_CHOICES = ("last", "none")
OPTIMIZER_RESTART_MESSAGE = "optimizer state not saved (save_optimizer: none): restarting AdamW moments"


def epoch_file_due(epoch: int, save_every: int, final_epoch: int | None, keep_epochs=()) -> bool:
    """Whether ``epoch_N.pt`` is written after epoch ``epoch``: every ``save_every``-th epoch,
    the run's last (``final_epoch``; None: unknown) and the ``keep_epochs``."""
    return epoch % save_every == 0 or epoch == final_epoch or epoch in keep_epochs


def epochs_to_drop(epochs, keep: int, keep_epochs=()) -> list[int]:
    """Of the epochs whose ``epoch_N.pt`` exists, those the keep-newest policy deletes: all
    but the ``keep`` newest of those not in ``keep_epochs`` (keep 0: none)."""
    if keep <= 0:
        return []
    others = sorted({int(e) for e in epochs} - {int(e) for e in keep_epochs})
    return others[:-keep]


def _link_atomically(source: Path, target: Path) -> bool:
    """Make ``target`` a hard link to ``source``: a link under a temporary name in the same
    folder, then ``os.replace`` over ``target`` (atomic: readers see the old file or the new,
    never none). False, with nothing changed, where the file system has no hard links."""
    import contextlib
    import os
    import uuid

    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.link.tmp")
    try:
        os.link(source, temporary)
        os.replace(temporary, target)
        return True
    except OSError:
        return False
    finally:  # after a failed replace; or a replace of two links to one file, which POSIX makes a no-op
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


class Checkpointer:
    """Writes (atomically) and reads a run's checkpoints. ``metadata`` goes into every
    model checkpoint (the training captions by category, the run's config).

    - ``keep``: the newest ``epoch_N.pt`` files kept (0: all), not counting ``keep_epochs``;
    - ``keep_epochs``: epochs whose ``epoch_N.pt`` is always written and never deleted
      (the seed submitted the checkpoint after epoch 5 of a 30-epoch cosine);
    - ``save_every`` K: ``epoch_N.pt`` only when N % K == 0, N is the run's last epoch or N
      is in ``keep_epochs``; ``last.pt`` is still written every epoch;
    - ``save_optimizer``: ``"last"``: ``last.pt`` carries the AdamW and loss-scaler state (an
      exact ``--resume``); ``"none"``: it does not (2/3 smaller at fp32: a resume restarts
      the AdamW moments, see ``optimizer_restarted``).

    ``best.pt`` is a hard link to the epoch's ``epoch_N.pt`` when that was written this
    epoch (a copy where the file system has no links), else a file of its own.
    """

    def __init__(self, run_dir: str | Path, loaded, metadata: dict, keep: int = 2, keep_epochs=(), save_every: int = 1,
                 save_optimizer: str = "last"):
        if not isinstance(save_every, int) or isinstance(save_every, bool) or save_every < 1:
            raise TrafficRetrievalError(f"save_every must be a positive integer, got {save_every!r}")
        if save_optimizer not in SAVE_OPTIMIZER_CHOICES:
            raise TrafficRetrievalError(f"save_optimizer must be one of {', '.join(SAVE_OPTIMIZER_CHOICES)}, got {save_optimizer!r}")
        keep_epochs = tuple(keep_epochs or ())
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in keep_epochs):
            raise TrafficRetrievalError(f"keep_epochs must be epoch numbers (1 or more), got {list(keep_epochs)!r}")
        self.directory = Path(run_dir) / "checkpoints"
        self.loaded = loaded  # model/factory.LoadedModel: name, architecture, preprocessing
        self.metadata = metadata
        self.keep = keep
        self.keep_epochs = frozenset(keep_epochs)
        self.save_every = save_every
        self.save_optimizer = save_optimizer
        self.optimizer_restarted = False  # set by resume(): last.pt had no optimizer state (log OPTIMIZER_RESTART_MESSAGE)

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def final_path(self) -> Path:
        return self.directory / "final.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def epoch_path(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch}.pt"

    def _model_checkpoint(self, state, weights: dict, extra: dict) -> dict:
        from ..model.factory import checkpoint_payload

        heads = {"attribute_heads": state.heads.state_dict()} if state.heads is not None else {}
        return checkpoint_payload(self.loaded, {**self.metadata, **extra, **heads}, model_state=weights)

    def _configured_final_epoch(self) -> int | None:
        epochs = (self.metadata.get("train_config") or {}).get("epochs") if isinstance(self.metadata, dict) else None
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    def save_epoch(self, state, is_best: bool, final_epoch: int | None = None) -> list[Path]:
        """The files of the epoch ``state`` just finished (its record is ``state.history[-1]``);
        returns the paths written. ``final_epoch``: the run's last epoch, whose ``epoch_N.pt``
        is always written (default: ``metadata["train_config"]["epochs"]``; where neither is
        known only ``save_every`` and ``keep_epochs`` decide, and ``final.pt`` has the weights)."""
        from ..io import atomic_torch_save

        if final_epoch is None:
            final_epoch = self._configured_final_epoch()
        self.directory.mkdir(parents=True, exist_ok=True)
        resume_state = state.state_dict(optimizer=self.save_optimizer == "last")
        payload = self._model_checkpoint(state, resume_state["state_dict"], {"epoch": state.epoch, "metrics": state.history[-1]})
        written = []
        epoch_file = None
        if epoch_file_due(state.epoch, self.save_every, final_epoch, self.keep_epochs):
            epoch_file = self.epoch_path(state.epoch)
            atomic_torch_save(payload, epoch_file)
            written.append(epoch_file)
        if is_best:
            if epoch_file is None or not _link_atomically(epoch_file, self.best_path):
                atomic_torch_save(payload, self.best_path)
            written.append(self.best_path)
        self._drop_old_epochs()  # after the link: best.pt keeps its data when its epoch_N.pt goes
        atomic_torch_save(resume_state, self.last_path)  # last: a kill before it leaves the previous epoch's
        return written + [self.last_path]

    def saved_epochs(self) -> list[int]:
        """The epochs whose ``epoch_N.pt`` is in the folder, oldest first."""
        found = [p.stem.split("_", 1)[1] for p in self.directory.glob("epoch_*.pt")]
        return sorted(int(e) for e in found if e.isdigit())

    def _drop_old_epochs(self) -> None:
        for epoch in epochs_to_drop(self.saved_epochs(), self.keep, self.keep_epochs):
            self.epoch_path(epoch).unlink(missing_ok=True)

    def save_final(self, state) -> Path:
        from ..io import atomic_torch_save

        atomic_torch_save(self._model_checkpoint(state, state.model_weights(), {"epoch": state.epoch, "history": state.history}), self.final_path)
        return self.final_path

    def resume(self, state) -> bool:
        """Load ``last.pt`` into ``state`` when there is one; a damaged or foreign file is a one-line error.

        A ``last.pt`` written with ``save_optimizer="none"`` (it says ``optimizer_saved: False``)
        restores everything but the optimizer, which starts fresh: ``optimizer_restarted``
        is then True (the caller logs ``OPTIMIZER_RESTART_MESSAGE``).

        Loaded as data only (tensors and plain values, ``weights_only``): a run folder from
        someone else cannot run code; ``TrainingState.state_dict`` writes nothing else.
        """
        from ..model.factory import load_plain

        self.optimizer_restarted = False
        if not self.last_path.is_file():
            return False
        payload = load_plain(self.last_path, "cannot resume from it")
        try:
            restored = state.load_state_dict(payload)
        except TrafficRetrievalError as exc:
            raise TrafficRetrievalError(f"{self.last_path}: cannot resume from it ({exc}); delete it to start over") from None
        except Exception as exc:  # torch raises many types for weights that do not fit
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise TrafficRetrievalError(f"{self.last_path}: cannot resume from it ({reason}); delete it to start over") from None
        self.optimizer_restarted = restored is False
        return True


FP32_BYTES = 4  # a float32 weight
ADAMW_STATE_BYTES = 8  # AdamW's exp_avg + exp_avg_sq, float32 each, per trainable parameter


def parameter_counts(model) -> tuple[int, int]:
    """(the numbers ``model.state_dict()`` holds, the trainable parameters): the two inputs
    of ``checkpoint_disk_estimate``. Works on a model built on the meta device."""
    stored = sum(value.numel() for value in model.state_dict().values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(stored), int(trainable)


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size < 1e11 else f"{size / 1e9:.0f} GB"


def checkpoint_disk_estimate(parameter_count: int, trainable_count: int, *, epochs: int, save_every: int = 1, keep: int = 2,
                             keep_epochs=(), save_optimizer: str = "last", best_epochs_estimate=None) -> dict:
    """What a run's checkpoints write and hold on disk, from parameter counts, under the
    ``Checkpointer`` policy (it shares ``epoch_file_due`` and ``epochs_to_drop``).

    ``parameter_count``: the numbers a model checkpoint stores (``parameter_counts``: the
    model's ``state_dict``, persistent buffers included); ``trainable_count``: the
    parameters AdamW updates. ``epochs``: the epochs the run trains (its last writes
    ``epoch_N.pt`` and ``final.pt``; a longer cosine, ``schedule_epochs``, changes nothing
    here). ``best_epochs_estimate``: the epochs that beat the best val score so far: None
    (default) every epoch, the most a run writes (the seed's R@10 rose every epoch); an int
    n, the first n (a rise, then a plateau); or the epoch numbers themselves.

    Assumptions:
    - fp32 master weights: 4 bytes a number (mixed precision autocasts the compute, the
      weights stay fp32), so a model checkpoint (``epoch_N.pt``, ``best.pt``, ``final.pt``)
      is 4 x ``parameter_count`` bytes;
    - ``last.pt`` is the same weights plus, with ``save_optimizer="last"``, AdamW's state:
      ``exp_avg`` and ``exp_avg_sq`` in fp32, 8 bytes per trainable parameter (amsgrad off;
      the scalar ``step`` per tensor and the loss scaler's few numbers ignored);
    - metadata is small and ignored: the caption sample, config and history (tens of KB to
      a few MB) and torch.save's zip framing (a few hundred bytes per tensor);
    - attribute heads, when trained, are counted in ``parameter_count`` by the caller;
    - ``best.pt`` is a hard link (0 bytes written) when its ``epoch_N.pt`` was written that
      epoch; on a file system without hard links it is a copy: add a model checkpoint per
      such best epoch;
    - atomic writes: a file is written under a temporary name beside the old one, so the
      peak is the files held plus the one being written.

    Returns sizes in bytes (per epoch, per run, held at the end, peak) and ``summary``, a
    line for people (GB = 10^9 bytes).
    """
    if save_optimizer not in SAVE_OPTIMIZER_CHOICES:
        raise TrafficRetrievalError(f"save_optimizer must be one of {', '.join(SAVE_OPTIMIZER_CHOICES)}, got {save_optimizer!r}")
    if epochs < 1 or save_every < 1:
        raise TrafficRetrievalError("epochs and save_every must be at least 1")
    keep_epochs = frozenset(int(e) for e in keep_epochs or ())
    if best_epochs_estimate is None:
        best = set(range(1, epochs + 1))
    elif isinstance(best_epochs_estimate, int):
        best = set(range(1, min(best_epochs_estimate, epochs) + 1))
    else:
        best = {int(e) for e in best_epochs_estimate if 1 <= int(e) <= epochs}

    model_bytes = FP32_BYTES * int(parameter_count)
    optimizer_bytes = ADAMW_STATE_BYTES * int(trainable_count) if save_optimizer == "last" else 0
    last_bytes = model_bytes + optimizer_bytes

    files: dict[str, int] = {}  # file name -> inode (a number)
    sizes: dict[int, int] = {}  # inode -> bytes
    peak = 0

    def held() -> int:
        return sum(sizes[inode] for inode in set(files.values()))

    def write(name: str, size: int) -> int:  # atomically: a temporary file beside the old one, then a rename
        nonlocal peak
        peak = max(peak, held() + size)
        sizes[len(sizes)] = size
        files[name] = len(sizes) - 1
        return size

    per_epoch, epoch_files, linked = [], [], 0
    for epoch in range(1, epochs + 1):
        written = 0
        due = epoch_file_due(epoch, save_every, epochs, keep_epochs)
        if due:
            written += write(f"epoch_{epoch}.pt", model_bytes)
            epoch_files.append(epoch)
        if epoch in best:
            if due:
                files["best.pt"] = files[f"epoch_{epoch}.pt"]
                linked += 1
            else:
                written += write("best.pt", model_bytes)
        present = [int(name[6:-3]) for name in files if name.startswith("epoch_")]
        for old in epochs_to_drop(present, keep, keep_epochs):
            del files[f"epoch_{old}.pt"]
        written += write("last.pt", last_bytes)
        per_epoch.append(written)
    final_bytes = write("final.pt", model_bytes)

    at_end = held()
    best_file = next((name for name in files if name.startswith("epoch_") and files.get("best.pt") == files[name]), None)
    kept = sorted((name for name in files if name.startswith("epoch_")), key=lambda name: int(name[6:-3]))
    listing = kept + [f"best.pt{' = ' + best_file if best_file else ''}"] * ("best.pt" in files) + ["last.pt", "final.pt"]
    per_run = sum(per_epoch) + final_bytes
    summary = (f"{parameter_count / 1e9:.3g}B numbers: model checkpoint {_gb(model_bytes)}, last.pt {_gb(last_bytes)} "
               f"({'with' if optimizer_bytes else 'without'} AdamW state); {epochs} epochs, epoch_N.pt after {len(epoch_files)} of them: "
               f"up to {_gb(max(per_epoch))} written an epoch, {_gb(per_run)} a run (final.pt included; best.pt linked {linked} times, "
               f"saving {_gb(linked * model_bytes)}); {_gb(at_end)} held at the end ({', '.join(listing)}), peak {_gb(peak)}")
    return {
        "parameter_count": int(parameter_count),
        "trainable_count": int(trainable_count),
        "settings": {"epochs": epochs, "save_every": save_every, "keep": keep, "keep_epochs": sorted(keep_epochs),
                     "save_optimizer": save_optimizer, "best_epochs": sorted(best)},
        "model_checkpoint_bytes": model_bytes,
        "optimizer_state_bytes": optimizer_bytes,
        "last_bytes": last_bytes,
        "epochs_with_epoch_file": epoch_files,
        "bytes_written_per_epoch": per_epoch,
        "bytes_written_per_epoch_max": max(per_epoch),
        "bytes_written_per_run": per_run,
        "bytes_saved_by_best_links": linked * model_bytes,
        "files_at_end": listing,
        "disk_held_at_end_bytes": at_end,
        "peak_disk_bytes": peak,
        "summary": summary,
    }
