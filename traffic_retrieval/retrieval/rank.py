"""Ranking in bounded memory: top-k by cosine similarity, computed in blocks of
queries x gallery and merged, so memory never grows with queries x gallery."""

from __future__ import annotations


def topk_similar(query_embeddings, gallery_embeddings, k: int, query_block: int = 1024, gallery_block: int = 65536):
    """Top-``k`` gallery indices and scores for each query (both L2-normalised).

    Ties are broken by the lower gallery index, so results are deterministic.
    Returns ``(scores [Q, k'], indices [Q, k'])`` with ``k' = min(k, gallery size)``.
    """
    import torch

    num_queries, num_gallery = query_embeddings.shape[0], gallery_embeddings.shape[0]
    k = min(k, num_gallery)
    scores_out = torch.empty((num_queries, k), dtype=torch.float32)
    indices_out = torch.empty((num_queries, k), dtype=torch.long)
    if num_queries == 0 or k == 0:
        return scores_out, indices_out
    gallery = gallery_embeddings.float()
    for q_start in range(0, num_queries, query_block):
        queries = query_embeddings[q_start : q_start + query_block].float()
        best_scores = best_indices = None
        for g_start in range(0, num_gallery, gallery_block):
            similarities = queries @ gallery[g_start : g_start + gallery_block].T
            block_scores, block_indices = similarities.topk(min(k, similarities.shape[1]), dim=1)
            block_indices += g_start
            if best_scores is None:
                best_scores, best_indices = block_scores, block_indices
            else:
                merged_scores = torch.cat([best_scores, block_scores], dim=1)
                merged_indices = torch.cat([best_indices, block_indices], dim=1)
                order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
                best_scores, best_indices = merged_scores.gather(1, order), merged_indices.gather(1, order)
        # deterministic tie order: sort by (-score, index)
        order = torch.argsort(best_indices, dim=1, stable=True)
        best_scores, best_indices = best_scores.gather(1, order), best_indices.gather(1, order)
        order = torch.argsort(-best_scores, dim=1, stable=True)
        scores_out[q_start : q_start + len(queries)] = best_scores.gather(1, order)
        indices_out[q_start : q_start + len(queries)] = best_indices.gather(1, order)
    return scores_out, indices_out
