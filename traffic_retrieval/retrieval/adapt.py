"""Transfer to the camera domain at inference time (issue #14): adapting the gallery
embeddings before ranking, and measuring how well gallery images are routed.

The model is trained on clean web images; the gallery is surveillance-camera crops.
Every camera embedding then shares an offset (the camera domain: blur, low light,
the same viewpoints), and that shared direction takes a large part of each raw cosine
similarity while telling images apart not at all. ``gallery_norm: center`` removes it:
the gallery's mean embedding is subtracted from every gallery embedding, which is then
re-normalised to unit length (on an unseen camera dataset this raised official mAP@10
from 0.235 to 0.262).

Design choices:

- one *global* mean over the whole gallery, not one per category: the offset is the
  camera domain's, shared by pedestrians and vehicles, and a single mean keeps the
  scores of the two categories comparable, which ``gallery_scope: all`` and ``soft``
  merge by score (per-category means would also remove the direction that separates
  the categories);
- queries are not centred: text embeddings do not live in the camera domain. For a
  fixed query q, ``q . (x - mean)`` shifts every score by the same ``q . mean``, so the
  ranking changes through the re-normalisation by ``|x - mean|``: the cosine is taken
  around the gallery's centre, and images that are mostly the shared offset (which raw
  cosine ranks high for every query) no longer win by it;
- image categories (``encode.gallery_categories``) are voted on the raw embeddings, as
  before, so routing does not depend on this switch;
- an image equal to the mean (a gallery of one image) becomes the zero vector: it
  scores 0 against every query.

``gallery_bn: adapt`` (AdaBN, Li et al. 2018, "Adaptive Batch Normalization for
practical domain adaptation") acts one step earlier, inside the image tower: a
BatchNorm layer normalises with the mean and variance of the *training* images, which
a camera gallery does not share (darker, blurrier, noisier), so every layer downstream
sees shifted inputs. ``estimate_batchnorm`` re-estimates those statistics on the gallery
itself (a sample of at most ``ADAPT_BN_MAX_IMAGES`` images, evenly spaced, so the same
gallery always gives the same statistics) before it is encoded; weights stay as
trained. A model without BatchNorm (every ViT) is left as it is. Queries by image must
then be encoded with the same statistics (an index stores them, ``index/build.py``).

``query_bank: captions`` (querybank normalisation, QB-Norm, Bogolin et al. 2022, with
the inverted softmax of Smith et al. 2017) acts on the ranking: in a camera gallery some
images sit close to *every* query (hubs: what the degradations left of them is the
typical picture), and raw cosine puts them in every top 10. Each gallery image ``g``
gets an offset, how strongly it matches a bank of typical queries ``B``,
``(logsumexp_b(beta * g.b) - log |B|) / beta`` (a soft maximum of its similarities to the
bank), and is ranked by ``q.g - offset(g)``: the log of the inverted softmax
``exp(beta q.g) / sum_b exp(beta b.g)``, up to the constant ``log |B|``. The bank is the
training captions a checkpoint stores (``category_texts``, up to 500 per category), so
the offset of an image depends only on it and the model, never on the other queries of a
batch: an index computes it once per image, and a query gets the same answer from
``predict``, ``search`` and ``serve``. ``beta`` 10 was chosen on the independent renderer's
dev look (5, 10, 15, 20, 40 tried).

The gallery functions are pure functions of tensors (torch or numpy: the same type
comes back), usable from ``predict``, training's validation and the index build.
"""

from __future__ import annotations

import math

from ..errors import TrafficRetrievalError

GALLERY_NORMS = ("none", "center")  # = options.GalleryNorm
GALLERY_BNS = ("none", "adapt")  # = options.GalleryBn
IMAGE_TTAS = ("none", "flip", "exposure", "flip+exposure")  # = options.ImageTta: "+"-joined parts, flip before exposure
QUERY_BANKS = ("none", "captions")  # = options.QueryBank
DEFAULT_BANK_BETA = 10.0  # query_bank captions: the inverted softmax's inverse temperature
MAX_BANK_BETA = 1000.0
ADAPT_BN_MAX_IMAGES = 8192  # gallery images whose statistics AdaBN takes (more change the estimate little)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _is_numpy(value) -> bool:
    return type(value).__module__ == "numpy"


def gallery_mean(embeddings):
    """The mean embedding ``[dim]`` (float32) of a gallery ``[n, dim]``, accumulated in
    float64; zeros for an empty gallery. Torch in, torch out; numpy in, numpy out."""
    if _is_numpy(embeddings):
        import numpy as np

        if len(embeddings) == 0:
            return np.zeros(embeddings.shape[1], dtype=np.float32)
        return embeddings.astype(np.float64, copy=False).mean(axis=0).astype(np.float32)
    import torch

    embeddings = torch.as_tensor(embeddings)
    if len(embeddings) == 0:
        return torch.zeros(embeddings.shape[1], dtype=torch.float32)
    return embeddings.double().mean(dim=0).float()


def apply_gallery_norm(embeddings, mean):
    """``embeddings`` ``[n, dim]`` minus ``mean`` ``[dim]``, each row re-normalised to unit
    length (float32; a row equal to the mean becomes zeros)."""
    if _is_numpy(embeddings):
        import numpy as np

        centred = embeddings.astype(np.float32) - np.asarray(mean, dtype=np.float32)[None, :]
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        return centred / np.maximum(norms, 1e-12)
    import torch

    centred = torch.as_tensor(embeddings).float() - torch.as_tensor(mean, dtype=torch.float32)[None, :]
    return torch.nn.functional.normalize(centred, dim=1)


def check_gallery_norm(gallery_norm: str) -> str:
    if gallery_norm not in GALLERY_NORMS:
        raise TrafficRetrievalError(f"gallery_norm must be one of {', '.join(GALLERY_NORMS)}, got {gallery_norm!r}")
    return gallery_norm


def adapt_gallery(embeddings, gallery_norm: str, mean=None):
    """The gallery embeddings a search ranks, for a ``gallery_norm`` setting: ``none``: the
    same object, untouched; ``center``: centred on ``mean`` (default: this gallery's own
    mean, ``gallery_mean(embeddings)``) and re-normalised. Pass the unflipped gallery's mean
    when adapting the flipped embeddings re-ranking uses, so both live in one space."""
    if check_gallery_norm(gallery_norm) == "none":
        return embeddings
    return apply_gallery_norm(embeddings, gallery_mean(embeddings) if mean is None else mean)


def routing_accuracy(predicted_categories: list[str], true_categories: list[str]) -> dict:
    """How well gallery images were routed: ``predicted_categories[i]`` (the category an
    image is searched in, e.g. ``encode.gallery_categories``'s vote) against
    ``true_categories[i]`` (its label's). Returns::

        {"images": n, "correct": c, "accuracy": c / n (None when n is 0),
         "per_category": {true category: {"images": n_t, "correct": c_t, "accuracy": c_t / n_t}},
         "confusion": {true category: {predicted category: count}}}
    """
    predicted, truth = list(predicted_categories), list(true_categories)
    if len(predicted) != len(truth):
        raise TrafficRetrievalError(f"routing_accuracy: {len(predicted)} predicted categories but {len(truth)} true ones")
    confusion: dict[str, dict[str, int]] = {}
    for guess, true in zip(predicted, truth):
        row = confusion.setdefault(true, {})
        row[guess] = row.get(guess, 0) + 1
    confusion = {true: dict(sorted(row.items())) for true, row in sorted(confusion.items())}
    per_category = {}
    for true, row in confusion.items():
        images, correct = sum(row.values()), row.get(true, 0)
        per_category[true] = {"images": images, "correct": correct, "accuracy": correct / images}
    correct = sum(entry["correct"] for entry in per_category.values())
    return {"images": len(truth), "correct": correct, "accuracy": correct / len(truth) if truth else None,
            "per_category": per_category, "confusion": confusion}


def format_routing(report: dict) -> str:
    """One line: ``routing accuracy 0.874 over 400 images (pedestrian 0.950 of 200, vehicle 0.798 of 200)``."""
    if not report.get("images"):
        return "routing accuracy: no labelled images"
    parts = ", ".join(f"{category} {entry['accuracy']:.3f} of {entry['images']}" for category, entry in report["per_category"].items())
    return f"routing accuracy {report['accuracy']:.3f} over {report['images']} images ({parts})"


def check_gallery_bn(gallery_bn: str) -> str:
    if gallery_bn not in GALLERY_BNS:
        raise TrafficRetrievalError(f"gallery_bn must be one of {', '.join(GALLERY_BNS)}, got {gallery_bn!r}")
    return gallery_bn


def check_image_tta(image_tta: str) -> str:
    if image_tta not in IMAGE_TTAS:
        raise TrafficRetrievalError(f"image_tta must be one of {', '.join(IMAGE_TTAS)}, got {image_tta!r}")
    return image_tta


def image_tta_parts(image_tta: str) -> frozenset:
    """The parts of an ``image_tta`` (``flip``, ``exposure``; ``none``: none), checked."""
    return frozenset() if check_image_tta(image_tta) == "none" else frozenset(image_tta.split("+"))


def check_query_bank(query_bank: str) -> str:
    if query_bank not in QUERY_BANKS:
        raise TrafficRetrievalError(f"query_bank must be one of {', '.join(QUERY_BANKS)}, got {query_bank!r}")
    return query_bank


def check_bank_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or not 0 < beta <= MAX_BANK_BETA:
        raise TrafficRetrievalError(f"query_bank_beta must be a number in (0, {MAX_BANK_BETA:g}], got {beta!r}")
    return float(beta)


def bank_offsets(gallery_embeddings, bank_embeddings, beta: float = DEFAULT_BANK_BETA, block: int = 8192):
    """Querybank normalisation: each gallery image's offset ``[n]`` (float32),
    ``(logsumexp_b(beta * g.b) - log |B|) / beta`` over the bank's embeddings ``[B, dim]``;
    a search ranks by ``q.g - offset``. Computed ``block`` gallery rows at a time (memory
    ``block x B``), in float32. Torch in, torch out; numpy in, numpy out. An empty bank is
    an error (there is nothing to normalise by)."""
    import torch

    beta = check_bank_beta(beta)
    as_numpy = _is_numpy(gallery_embeddings)
    gallery = torch.as_tensor(gallery_embeddings).float()
    bank = torch.as_tensor(bank_embeddings).float()
    if len(bank) == 0:
        raise TrafficRetrievalError("query_bank: the bank holds no captions")
    offsets = torch.empty(len(gallery), dtype=torch.float32)
    log_size = math.log(len(bank))
    for start in range(0, len(gallery), block):
        similarities = gallery[start : start + block] @ bank.T
        offsets[start : start + block] = (torch.logsumexp(beta * similarities, dim=1) - log_size) / beta
    return offsets.numpy() if as_numpy else offsets


def batchnorm_layers(model) -> list:
    """``(name, module)`` of every BatchNorm layer of the model's image tower (named as in
    ``model.visual.state_dict()``); empty for a tower without any (ViTs use LayerNorm)."""
    import torch

    visual = getattr(model, "visual", model)
    return [(name, module) for name, module in visual.named_modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats]


def adaptation_sample(count: int, limit: int = ADAPT_BN_MAX_IMAGES) -> list[int]:
    """The positions of a gallery of ``count`` images whose statistics AdaBN takes: all of
    them up to ``limit``, else ``limit`` evenly spaced ones (deterministic)."""
    if count <= limit:
        return list(range(count))
    return [int(i * count / limit) for i in range(limit)]


def estimate_batchnorm(model, uint8_batches, preprocess, device: str, dtype, exposure: bool = False) -> dict | None:
    """AdaBN: every BatchNorm layer of ``model``'s image tower takes the mean and variance
    of the images in ``uint8_batches`` (uint8 NCHW tensors, already resized) instead of the
    training images' (``exposure``: the images as ``auto_exposure`` brightens them, as the
    encoding will); the cumulative average over the batches (``momentum=None``), computed
    with no gradient and the weights untouched. The model is left in eval mode with the new
    statistics; returns them (``{"layer.running_mean": tensor, ...}``, on the CPU), or None
    when the tower has no BatchNorm (nothing changed). Batches of one image are skipped
    (a layer with 1x1 maps cannot take a variance from them); no image at all leaves the
    statistics as they were."""
    import torch

    from ..data.images import normalize_uint8_batch
    from ..runtime import autocast

    layers = batchnorm_layers(model)
    if not layers:
        return None
    saved = {name: {buffer: getattr(module, buffer).clone() for buffer in BN_BUFFERS} for name, module in layers}
    momenta = {name: module.momentum for name, module in layers}
    model.eval()
    seen = 0
    try:
        for name, module in layers:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        with torch.no_grad(), autocast(device, dtype):
            for batch in uint8_batches:
                if batch is None or len(batch) < 2:
                    continue
                images = normalize_uint8_batch(batch, preprocess, exposure).to(device)
                model.encode_image(images.contiguous(memory_format=torch.channels_last))
                seen += len(batch)
    finally:
        for name, module in layers:
            module.momentum = momenta[name]
            module.eval()
    if seen == 0:
        load_batchnorm(model, {f"{name}.{buffer}": value for name, buffers in saved.items() for buffer, value in buffers.items()})
        return None
    return batchnorm_state(model)


def batchnorm_state(model) -> dict:
    """The image tower's BatchNorm statistics, ``{"layer.running_mean": tensor, ...}`` on the CPU."""
    return {f"{name}.{buffer}": getattr(module, buffer).detach().cpu().clone() for name, module in batchnorm_layers(model) for buffer in BN_BUFFERS}


def load_batchnorm(model, stats: dict, source: str = "BatchNorm statistics") -> None:
    """Set the image tower's BatchNorm statistics from ``stats`` (as ``batchnorm_state``
    returns them); a missing, extra or mis-shaped entry is a one-line error naming ``source``."""
    import torch

    layers = dict(batchnorm_layers(model))
    expected = {f"{name}.{buffer}" for name in layers for buffer in BN_BUFFERS}
    if set(stats) != expected:
        missing, extra = sorted(expected - set(stats)), sorted(set(stats) - expected)
        raise TrafficRetrievalError(f"{source}: do not fit the model's image tower"
                                    + (f" (missing {missing[0]})" if missing else "") + (f" (unexpected {extra[0]})" if extra else ""))
    for key, value in stats.items():
        name, buffer = key.rsplit(".", 1)
        target = getattr(layers[name], buffer)
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(target.shape):
            raise TrafficRetrievalError(f"{source}: {key} has shape {tuple(value.shape)}, the model's {tuple(target.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrafficRetrievalError(f"{source}: {key} holds non-finite values")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
