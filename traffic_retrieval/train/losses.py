"""Contrastive losses.

``clip_loss`` is the standard symmetric InfoNCE: the i-th image's only positive is
the i-th text. ``multi_positive_loss`` knows the data is many-to-many: every pair
whose ATTR is equal is a positive (the same description fits many images), so
equal-ATTR pairs in a batch are not pushed apart as false negatives. The target
distribution of each row spreads evenly over its positives.
"""

from __future__ import annotations


def similarity_logits(image_features, text_features, logit_scale):
    return logit_scale * image_features @ text_features.T


def clip_loss(image_features, text_features, logit_scale, attr_ids=None):
    import torch
    import torch.nn.functional as F

    logits = similarity_logits(image_features, text_features, logit_scale).float()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def multi_positive_loss(image_features, text_features, logit_scale, attr_ids):
    """Symmetric contrastive loss with positives ``attr_ids[i] == attr_ids[j]``.

    With all ATTRs distinct it equals ``clip_loss`` exactly.
    """
    logits = similarity_logits(image_features, text_features, logit_scale).float()
    positives = (attr_ids[:, None] == attr_ids[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric mask: rows and columns alike
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


LOSSES = {"clip": clip_loss, "multi-positive": multi_positive_loss}
