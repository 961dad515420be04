"""`compute_transition_scores`: the score of each generated token, from `generate`'s scores (as transformers')."""

from __future__ import annotations

import torch


def compute_transition_scores(
    model,
    sequences: torch.Tensor,
    scores: tuple[torch.Tensor, ...],
    beam_indices: torch.Tensor | None = None,
    normalize_logits: bool = False,
) -> torch.Tensor:
    """Scores of the chosen tokens, (rows, new tokens); 0 where a beam had already finished.

    Args:
        model: the model that generated (its vocab size is read) or None (read from `scores`).
        sequences, scores, beam_indices: `generate(..., return_dict_in_generate=True, output_scores=True)`'s.
        normalize_logits: log-softmax the scores over the vocabulary first.
    """
    vocab = scores[0].shape[-1]
    config = getattr(model, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab = getattr(text, "vocab_size", None) or vocab
    if beam_indices is None:  # greedy or sampling: every row is its own single beam
        beam_indices = torch.arange(scores[0].shape[0], device=sequences.device).view(-1, 1)
        beam_indices = beam_indices.expand(-1, len(scores))
    stacked = torch.stack(scores).reshape(len(scores), -1).transpose(0, 1)  # (rows * vocab, steps)
    if normalize_logits:
        stacked = stacked.reshape(-1, vocab, stacked.shape[-1]).log_softmax(dim=1)
        stacked = stacked.reshape(-1, stacked.shape[-1])
    finished = beam_indices < 0
    longest = int((~finished).long().sum(-1).max())
    beam_indices = beam_indices.clone()[:, :longest].long()
    finished = finished[:, :longest]
    beam_indices[finished] = 0
    indices = sequences[:, sequences.shape[-1] - longest :] + beam_indices * vocab
    transition = stacked.gather(0, indices)
    transition[finished] = 0
    return transition
