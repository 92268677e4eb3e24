"""Encoding images and texts with a loaded model: streamed, batched, with image
decoding in DataLoader workers; unreadable images are counted, not fatal."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.images import normalize_uint8_batch, read_image_batches
from ..runtime import inference


INFERENCE_TEXT_LENGTH_MULTIPLE = 16  # few text shapes at inference: bounded kernel caches (model.factory.encode_text)


@dataclass
class ImageEncoding:
    embeddings: object  # [n_readable, d], L2-normalised
    readable: list[int]  # indices into the input paths
    errors: list[str]  # one-line messages of the images that could not be read
    flipped: object = None  # embeddings of the horizontally flipped images (for re-ranking)


def encode_image_files(loaded, paths: list[str], device: str, dtype, batch_size: int = 256, workers: int = 2, progress: bool = True,
                       description: str = "encode gallery", with_flipped: bool = False, image_tta: str = "none") -> ImageEncoding:
    """Stream images through the one reader (``read_image_batches``) and the image tower
    (``image_tta``: ``encode_uint8_images``). ``with_flipped``: also the mirror images'
    own embeddings (re-ranking's flipped twins; with ``flip`` they equal the embeddings,
    which already are the mean of both views, so they are not encoded twice; with
    ``exposure`` the mirror images are exposed alike)."""
    import torch

    from .adapt import image_tta_parts

    parts = image_tta_parts(image_tta)
    embeddings, flipped, readable, errors = [], [], [], []
    model = loaded.model.eval()
    for batch in read_image_batches(paths, loaded.preprocess, batch_size, workers, progress=progress, description=description):
        if batch.images is not None:
            embeddings.append(encode_uint8_images(model, batch.images, loaded.preprocess, device, dtype, batch_size, image_tta))
            if with_flipped:
                flipped.append(embeddings[-1] if "flip" in parts else
                               encode_uint8_images(model, batch.images.flip(-1), loaded.preprocess, device, dtype, batch_size, image_tta))
            readable += batch.readable
        errors += list(batch.errors.values())
    dim = embeddings[0].shape[1] if embeddings else 0
    stack = lambda parts: torch.cat(parts) if parts else torch.zeros((0, dim))
    return ImageEncoding(stack(embeddings), readable, errors, stack(flipped) if with_flipped else None)


def adapt_batchnorm_to_files(loaded, paths: list[str], runtime, batch_size: int, workers: int, progress: bool,
                             image_tta: str = "none") -> dict | None:
    """AdaBN on a gallery of image files (``retrieval.adapt.estimate_batchnorm`` over its
    ``adaptation_sample``, exposed as ``image_tta`` will encode them): the model keeps the new
    statistics; returns them (None: no BatchNorm)."""
    from .adapt import adaptation_sample, batchnorm_layers, estimate_batchnorm, image_tta_parts

    if not batchnorm_layers(loaded.model):
        return None
    sample = [paths[i] for i in adaptation_sample(len(paths))]
    batches = (batch.images for batch in read_image_batches(sample, loaded.preprocess, batch_size, workers, progress=progress,
                                                             description="adapt BatchNorm"))
    return estimate_batchnorm(loaded.model, batches, loaded.preprocess, runtime.device, runtime.dtype, "exposure" in image_tta_parts(image_tta))


def encode_uint8_images(model, images_uint8, preprocess, device: str, dtype, batch_size: int = 256, image_tta: str = "none"):
    """L2-normalised embeddings of already decoded uint8 NCHW images (the training cache).

    ``image_tta`` (``options.ImageTta``): ``none``, each image as it is; ``flip``, the mean
    of the unit embeddings of the image and of its mirror image, re-normalised (the same
    for an image and its mirror; twice the compute); ``exposure``, each under-exposed image
    first brightened to middle grey (``data.exposure.auto_exposure``); ``flip+exposure``, both."""
    import torch

    def encode(batch):
        features = model.encode_image(batch.contiguous(memory_format=torch.channels_last), normalize=True)
        return torch.nn.functional.normalize(features.float(), dim=-1)  # unit length in fp32, whatever the autocast

    from .adapt import image_tta_parts

    parts = image_tta_parts(image_tta)
    outputs = []
    with inference(device, dtype):
        for start in range(0, len(images_uint8), batch_size):
            batch = normalize_uint8_batch(images_uint8[start : start + batch_size], preprocess, "exposure" in parts).to(device)
            features = encode(batch)
            if "flip" in parts:
                features = torch.nn.functional.normalize(features + encode(batch.flip(-1)), dim=-1)
            outputs.append(features.cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, 1))


def encode_tokens(model, tokens, device: str, dtype, batch_size: int = 512):
    """L2-normalised embeddings of tokenized texts."""
    import torch

    from ..model.factory import encode_text

    outputs = []
    with inference(device, dtype):
        for start in range(0, len(tokens), batch_size):
            features = encode_text(model, tokens[start : start + batch_size].to(device), length_multiple=INFERENCE_TEXT_LENGTH_MULTIPLE)
            outputs.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, 1))


def encode_texts(loaded, texts: list[str], device: str, dtype, batch_size: int = 512):
    """L2-normalised text embeddings; each distinct text is encoded once."""
    from ..model.tokens import tokenize

    unique_texts = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(unique_texts)}
    unique_embeddings = encode_tokens(loaded.model.eval(), tokenize(loaded.tokenizer, unique_texts), device, dtype, batch_size)
    return unique_embeddings[[position[text] for text in texts]] if texts else unique_embeddings


ZERO_SHOT_CATEGORY_TEXTS = {
    "pedestrian": ["a photo of a pedestrian.", "a person walking.", "a man walking on the street.", "a woman walking on the street."],
    "vehicle": ["a photo of a vehicle.", "a photo of a car.", "a bus on the road.", "a truck on the road."],
}


def gallery_categories(loaded, gallery_embeddings, device: str, dtype, votes: int = 10, block: int = 8192) -> list[str]:
    """Category of each gallery image by a vote of its nearest category texts.

    Training stores a sample of its captions per category in the checkpoint; a
    gallery image takes the majority category of its ``votes`` most similar
    captions. Text embeddings do not suffer the camera domain shift that image
    centroids do. A model without stored captions (zero-shot) uses prompts.
    """
    import torch

    category_texts = (loaded.checkpoint or {}).get("category_texts") or ZERO_SHOT_CATEGORY_TEXTS
    names = sorted(category_texts)
    texts = [text for name in names for text in category_texts[name]]
    text_category = torch.tensor([i for i, name in enumerate(names) for _ in category_texts[name]])
    if len(gallery_embeddings) == 0:
        return []
    text_embeddings = encode_texts(loaded, texts, device, dtype)
    # an odd number of voters, no more than the smallest category has, so there are no ties
    votes = max(1, min(votes, min(len(category_texts[name]) for name in names)))
    votes -= 1 - votes % 2
    choices = []
    for start in range(0, len(gallery_embeddings), block):
        nearest = (gallery_embeddings[start : start + block] @ text_embeddings.T).topk(votes, dim=1).indices
        counts = torch.nn.functional.one_hot(text_category[nearest], len(names)).sum(dim=1)
        choices += counts.argmax(dim=1).tolist()
    return [names[i] for i in choices]


def bank_captions(category_texts: dict | None) -> list[str]:
    """The query bank of ``query_bank: captions`` (``adapt.bank_offsets``): the training
    captions a checkpoint stores per category (``category_texts``), all categories together.
    None or empty (a model not trained here) is a one-line error."""
    from ..errors import TrafficRetrievalError

    texts = [text for name in sorted(category_texts or {}) for text in category_texts[name]]
    if not texts:
        raise TrafficRetrievalError("query_bank captions: the checkpoint stores no training captions (a model not trained by traffic-retrieval, "
                                    "e.g. an open_clip pretrained tag); use --query-bank none")
    return texts


def encode_bank(loaded, device: str, dtype, category_texts: dict | None = None):
    """The query bank's embeddings: the checkpoint's stored captions (``category_texts``:
    these instead, ``bank_captions``), encoded by ``loaded``'s text tower (float32)."""
    texts = bank_captions(category_texts if category_texts is not None else (loaded.checkpoint or {}).get("category_texts"))
    return encode_texts(loaded, texts, device, dtype).float()


def gallery_bank_offsets(loaded, gallery_embeddings, query_bank: str, beta: float, device: str, dtype, category_texts: dict | None = None):
    """The querybank offsets of ``gallery_embeddings`` (as they are ranked: after any
    ``gallery_norm``) for a ``query_bank`` setting: None for ``none``; for ``captions``,
    ``adapt.bank_offsets`` against the checkpoint's stored captions (``category_texts``:
    these instead), encoded by ``loaded``'s text tower."""
    from .adapt import bank_offsets, check_query_bank

    if check_query_bank(query_bank) == "none":
        return None
    return bank_offsets(gallery_embeddings, encode_bank(loaded, device, dtype, category_texts), beta)
