"""Logits processors: each a callable `(input_ids (B, L), scores (B, vocab)) -> scores`, as transformers'.

`processors_for(plan)` lists the ones a call's settings turn on, in transformers' order (penalties and
bans, then the user's own, then the sampling warpers); `LogitsProcessorList` runs a list of them. A
user may pass autolm's or transformers' processor objects: anything with that call signature works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import sampling

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LogitsProcessor:
    """Base class of a user's processor (transformers' name): override `__call__(input_ids, scores)`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores).")


class LogitsProcessorList(list):
    """Processors applied in order; extra keyword arguments reach those that take them."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            scores = processor(input_ids, scores, **kwargs) if kwargs else processor(input_ids, scores)
        return scores


def no_repeat_ngram(input_ids: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid any token that would repeat an n-gram already in the row (prompt included)."""
    length = input_ids.shape[1]
    if length + 1 < n:
        return scores
    scores = scores.clone()
    for row, ids in enumerate(input_ids.tolist()):
        prefix = tuple(ids[length - n + 1 :])
        banned = [ids[i + n - 1] for i in range(length - n + 1) if tuple(ids[i : i + n - 1]) == prefix]
        if banned:
            scores[row, banned] = -float("inf")
    return scores


def bad_words(input_ids: torch.Tensor, scores: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
    """Forbid the last token of each banned sequence wherever the row ends with the rest of it."""
    ban = torch.zeros_like(scores, dtype=torch.bool)
    rows = input_ids.tolist()
    for seq in sequences:
        head, last = seq[:-1], seq[-1]
        if last >= scores.shape[-1]:
            continue
        if not head:
            ban[:, last] = True
            continue
        for r, ids in enumerate(rows):
            if len(ids) >= len(head) and ids[len(ids) - len(head) :] == head:
                ban[r, last] = True
    return scores.masked_fill(ban, -float("inf"))


def typical(scores: torch.Tensor, mass: float, min_keep: int = 1) -> torch.Tensor:
    """Locally typical sampling: keep the tokens closest to the expected information, up to `mass`."""
    log_probs = torch.nn.functional.log_softmax(scores, dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
    shifted = torch.abs(-log_probs - entropy)
    ordered, order = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)
    drop = ordered > ordered.gather(1, last.view(-1, 1))
    drop[..., :min_keep] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def epsilon(scores: torch.Tensor, cutoff: float, min_keep: int = 1) -> torch.Tensor:
    """Drop tokens with probability below `cutoff`."""
    drop = scores.softmax(dim=-1) < cutoff
    k = min(min_keep, scores.shape[-1])
    drop &= scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(drop, -float("inf"))


def eta(scores: torch.Tensor, cutoff: float, min_keep: int = 1) -> torch.Tensor:
    """Drop tokens below min(cutoff, sqrt(cutoff) * exp(-entropy))."""
    probs = scores.softmax(dim=-1)
    entropy = torch.distributions.Categorical(logits=scores).entropy()
    value = torch.min(torch.tensor(cutoff, device=scores.device), cutoff**0.5 * torch.exp(-entropy))[
        ..., None
    ]
    drop = probs < value
    k = min(min_keep, scores.shape[-1])
    drop &= scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(drop, -float("inf"))


def processors_for(plan, user: list | None = None) -> list[Processor]:
    """The processors `plan`'s settings turn on, then `user`'s, then the warpers (sampling only)."""
    config, prompt_len = plan.config, plan.input_ids.shape[1]
    out: list[Processor] = []
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        padding = plan.attention_mask == 0 if plan.attention_mask is not None else None

        def penalty(ids, scores):
            if padding is not None:  # padding is not a repetition: mark it out of vocabulary
                ids = ids.clone()
                ids[:, : padding.shape[1]].masked_fill_(padding, scores.shape[-1])
            return sampling.repetition_penalty(scores, ids, config.repetition_penalty)

        out.append(penalty)
    if config.no_repeat_ngram_size:
        out.append(lambda ids, scores: no_repeat_ngram(ids, scores, config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        eos = plan.eos.tolist() if plan.eos is not None else []
        banned = [list(s) for s in config.bad_words_ids if list(s) not in [[e] for e in eos]]
        out.append(lambda ids, scores: bad_words(ids, scores, banned))
    if plan.min_new_tokens and plan.eos is not None:
        eos_ids = plan.eos
        out.append(
            lambda ids, scores: (
                sampling.suppress(scores, eos_ids)
                if ids.shape[1] - prompt_len < plan.min_new_tokens
                else scores
            )
        )
    if config.suppress_tokens is not None:
        suppressed = torch.tensor(
            list(config.suppress_tokens), dtype=torch.long, device=plan.input_ids.device
        )
        out.append(lambda ids, scores: sampling.suppress(scores, suppressed))
    if config.begin_suppress_tokens is not None:
        begin = torch.tensor(
            list(config.begin_suppress_tokens), dtype=torch.long, device=plan.input_ids.device
        )
        out.append(
            lambda ids, scores: sampling.suppress(scores, begin) if ids.shape[1] == prompt_len else scores
        )
    out.extend(user or [])
    if config.do_sample:
        keep = plan.min_tokens_to_keep
        out.append(lambda ids, scores: sampling.warp(scores, config, keep))
        if config.typical_p is not None and config.typical_p < 1.0:
            out.append(lambda ids, scores: typical(scores, config.typical_p, keep))
        if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
            out.append(lambda ids, scores: epsilon(scores, config.epsilon_cutoff, keep))
        if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
            out.append(lambda ids, scores: eta(scores, config.eta_cutoff, keep))
    if config.renormalize_logits:
        out.append(lambda ids, scores: scores.log_softmax(dim=-1))
    return out


def apply(processors: list[Processor], input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores
