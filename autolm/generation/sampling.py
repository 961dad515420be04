"""Turning logits into the next token: penalties, warpers (temperature, top-k, top-p, min-p) and `sample`.

Each function takes float32 scores of shape (B, vocab) and returns new scores; masked tokens get -inf.
The order and arithmetic follow transformers, so the same seed draws the same tokens.
"""

from __future__ import annotations

import torch

from ..errors import GenerationError


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token in `seen` (B, L) less likely: divide positive logits, multiply negative ones.

    Ids >= vocab size in `seen` are ignored (the loop marks left padding that way).
    """
    vocab = scores.shape[-1]
    hit = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    hit = hit.scatter_(1, seen.clamp(max=vocab), True)[:, :vocab]
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(hit, penalised, scores)


def suppress(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Forbid `token_ids` (e.g. eos before min_new_tokens)."""
    scores = scores.clone()
    scores[:, token_ids] = -float("inf")
    return scores


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    return scores / value


def top_k(scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Keep the k highest scores."""
    k = min(max(k, min_keep), scores.shape[-1])
    threshold = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < threshold, -float("inf"))


def top_p(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability adds up to at least p (always the top one)."""
    ascending, order = torch.sort(scores, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -min_keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def min_p(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Drop tokens less likely than p times the most likely token."""
    probs = scores.softmax(dim=-1)
    drop = probs < p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, torch.topk(probs, min_keep).indices, False)
    return scores.masked_fill(drop, -float("inf"))


def warp(scores: torch.Tensor, config, min_keep: int = 1) -> torch.Tensor:
    """Apply the sampling warpers the config turns on, in transformers' order (typical, epsilon and eta
    follow in `processors`); beam sampling keeps at least `min_keep` tokens."""
    if config.temperature is not None and config.temperature != 1.0:
        scores = temperature(scores, config.temperature)
    if config.top_k:
        scores = top_k(scores, config.top_k, min_keep)
    if config.top_p is not None and config.top_p < 1.0:
        scores = top_p(scores, config.top_p, min_keep)
    if config.min_p is not None:
        scores = min_p(scores, config.min_p, min_keep)
    return scores


def sample(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The next token per row, (B,): a draw from softmax(scores) or the argmax."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


def check_sampling_settings(config) -> None:
    """Reject values transformers would also reject, with what was given and what is allowed."""
    if not config.do_sample:
        return
    t = config.temperature
    if t is not None and (not isinstance(t, (int, float)) or t <= 0):
        raise GenerationError(
            f"temperature must be a number > 0 when do_sample=True, got {t!r}. "
            "For deterministic output use do_sample=False."
        )
    if config.top_k is not None and (not isinstance(config.top_k, int) or config.top_k < 0):
        raise GenerationError(f"top_k must be an int >= 0 (0 turns it off), got {config.top_k!r}.")
    if config.top_p is not None and not 0.0 <= config.top_p <= 1.0:
        raise GenerationError(f"top_p must be between 0 and 1, got {config.top_p!r}.")
    if config.min_p is not None and not 0.0 <= config.min_p <= 1.0:
        raise GenerationError(f"min_p must be between 0 and 1, got {config.min_p!r}.")
