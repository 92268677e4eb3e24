"""Encoding images and texts with a loaded model: streamed, batched, with image
decoding in DataLoader workers; unreadable images are counted, not fatal."""

from __future__ import annotations

from ..data.images import ImageFileDataset, collate_images, normalize_uint8_batch


def encode_image_files(loaded, paths: list[str], device: str, dtype, batch_size: int = 256, workers: int = 2, progress: bool = True, description: str = "encode gallery"):
    """Returns ``(embeddings [n_readable, d], readable_indices, errors)``; embeddings are L2-normalised."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(ImageFileDataset(paths, loaded.preprocess), batch_size=batch_size, num_workers=workers, collate_fn=collate_images)
    embeddings, readable, errors = [], [], []
    model = loaded.model.eval()
    with torch.no_grad(), tqdm(total=len(paths), desc=description, unit="img", disable=not progress, leave=False) as bar:
        for indices, batch, batch_errors in loader:
            if batch is not None:
                images = normalize_uint8_batch(batch, loaded.preprocess).to(device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
                    embeddings.append(model.encode_image(images, normalize=True).float().cpu())
                readable += indices
            errors += [message for _, message in batch_errors]
            bar.update(len(indices) + len(batch_errors))
    dim = embeddings[0].shape[1] if embeddings else 0
    return (torch.cat(embeddings) if embeddings else torch.zeros((0, dim))), readable, errors


def encode_uint8_images(model, images_uint8, preprocess, device: str, dtype, batch_size: int = 256):
    """L2-normalised embeddings of already decoded uint8 NCHW images (the training cache)."""
    import torch

    outputs = []
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
        for start in range(0, len(images_uint8), batch_size):
            batch = normalize_uint8_batch(images_uint8[start : start + batch_size], preprocess).to(device)
            outputs.append(model.encode_image(batch.contiguous(memory_format=torch.channels_last), normalize=True).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, 1))


def encode_tokens(model, tokens, device: str, dtype, batch_size: int = 512):
    """L2-normalised embeddings of tokenized texts."""
    import torch

    from ..model.factory import encode_text

    outputs = []
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
        for start in range(0, len(tokens), batch_size):
            outputs.append(encode_text(model, tokens[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, 1))


def encode_texts(loaded, texts: list[str], device: str, dtype, batch_size: int = 512):
    """L2-normalised text embeddings; each distinct text is encoded once."""
    from ..train.data import tokenize

    unique_texts = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(unique_texts)}
    unique_embeddings = encode_tokens(loaded.model.eval(), tokenize(loaded.tokenizer, unique_texts), device, dtype, batch_size)
    return unique_embeddings[[position[text] for text in texts]] if texts else unique_embeddings


def gallery_categories(loaded, gallery_embeddings, device: str, dtype) -> list[str]:
    """Category of each gallery image: nearest category centroid stored by training,
    or, for a model without them (zero-shot), the closer of two text prompts."""
    import torch

    centroids = (loaded.checkpoint or {}).get("category_centroids") or {}
    if len(centroids) == 2:
        names = sorted(centroids)
        prototypes = torch.tensor([centroids[name] for name in names])
    else:
        names = ["pedestrian", "vehicle"]
        prototypes = encode_texts(loaded, ["a photo of a pedestrian, a person walking.", "a photo of a vehicle, a car."], device, dtype)
    if len(gallery_embeddings) == 0:
        return []
    choice = (gallery_embeddings @ prototypes.T).argmax(dim=1).tolist()
    return [names[i] for i in choice]
