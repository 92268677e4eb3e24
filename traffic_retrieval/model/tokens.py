"""Texts to token tensors with a model's own tokenizer (open_clip's BPE, or an HF tokenizer)."""

from __future__ import annotations


def tokenize(tokenizer, texts: list[str], batch_size: int = 4096):
    """``[len(texts), context_length]`` token ids, tokenised in batches (long caption lists stay in bounded memory)."""
    import torch

    if not texts:
        return torch.zeros((0, getattr(tokenizer, "context_length", 77)), dtype=torch.long)
    return torch.cat([tokenizer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
