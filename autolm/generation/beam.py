"""Beam search, step for step as transformers 5's `_beam_search` (same scores, ties, stopping rules).

Beams are rows: a batch of B prompts runs as B * num_beams rows through the same `_Decoder` as greedy
decoding (dynamic or static cache, the native step), and after each step the cache rows are reordered
to follow the beams that survived. Shapes below: B prompts, N beams, K = N * max(2, 1 + n_eos) kept
candidates, L = prompt + new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .processors import apply

_NEG = -1.0e9  # transformers' "impossible" score


@dataclass
class BeamResult:
    sequences: torch.Tensor  # (B * num_return_sequences, L')
    sequences_scores: torch.Tensor  # (B * num_return_sequences,)
    beam_indices: torch.Tensor  # (B * num_return_sequences, L' - prompt)
    scores: tuple | None
    logits: tuple | None


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) rows picked per batch by index (B, k) -> (B, k, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.gather(x, 1, index.expand(*index.shape[:2], *x.shape[2:]))


def reorder_cache(cache, index: torch.Tensor) -> None:
    """Rows of the cache follow `index` (B * N,): in place for a static cache, whose buffers a compiled
    step holds on to."""
    if cache is None or torch.equal(index, torch.arange(index.shape[0], device=index.device)):
        return  # every beam kept its row: nothing to copy
    keys, values = getattr(cache, "keys", None), getattr(cache, "values", None)
    if isinstance(keys, list) and isinstance(values, list):
        for buffer in (*keys, *values):
            buffer.copy_(buffer.index_select(0, index))
    else:
        cache.reorder_cache(index)


def _stopped(decoder, plan, candidates: torch.Tensor, scores: tuple | None) -> torch.Tensor:
    """(rows, L) candidate sequences -> (rows,) True where eos, a stop string, the length or a user's
    criterion ends them (transformers' stopping criteria on every candidate)."""
    done = torch.full(
        (candidates.shape[0],),
        candidates.shape[1] >= decoder.prompt_len + plan.max_new_tokens,
        dtype=torch.bool,
        device=candidates.device,
    )
    if plan.eos is not None:
        done |= torch.isin(candidates[:, -1], plan.eos)
    if plan.stop is not None:
        done |= plan.stop(candidates)
    if plan.criteria is not None:
        done |= plan.criteria(candidates, scores)
    return done


def beam_search(model, plan, decoder_cls, output_scores: bool, output_logits: bool) -> BeamResult:
    """Run beam search for `plan` (its rows already repeated num_beams times)."""
    from ..kernels.decoder import native_decoder
    from .layout import prepare_for_decoding

    config = plan.config
    N = plan.num_beams
    length_penalty = config.length_penalty if config.length_penalty is not None else 1.0
    early_stopping = config.early_stopping
    n_return = config.num_return_sequences or 1
    with torch.inference_mode():
        decoder = decoder_cls(model, plan)
    rows, P = plan.input_ids.shape
    B = rows // N
    max_length = P + plan.max_new_tokens
    device = plan.input_ids.device
    n_eos = plan.eos.shape[0] if plan.eos is not None else 0
    K = max(2, 1 + n_eos) * N
    top_n = torch.cat([torch.ones(N, dtype=torch.bool), torch.zeros(K - N, dtype=torch.bool)]).to(device)
    fill = (plan.pad_token_id or int(plan.eos[0])) if n_eos else -1  # as transformers: pad unless 0, then eos

    running = torch.full((B, N, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :P] = plan.input_ids.view(B, N, P)
    sequences = running.clone()
    running_scores = torch.zeros(B, N, device=device)
    running_scores[:, 1:] = _NEG
    beam_scores = torch.full((B, N), _NEG, device=device)
    finished = torch.zeros(B, N, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    running_indices = torch.full((B, N, max_length - P), -1, dtype=torch.int32, device=device)
    beam_indices = running_indices.clone()
    all_scores: list | None = [] if output_scores else None
    raw: list | None = [] if output_logits else None
    offset = torch.arange(B, device=device).view(-1, 1) * N

    cur = P
    while True:
        with torch.inference_mode():
            logits = decoder.logits
            flat = running[:, :, :cur].reshape(B * N, cur)
            log_probs = apply(plan.processors, flat, torch.log_softmax(logits, dim=-1))
            if raw is not None:
                raw.append(logits.clone())
            if all_scores is not None:
                all_scores.append(log_probs.clone())
            vocab = log_probs.shape[-1]
            total = (log_probs.view(B, N, vocab) + running_scores[:, :, None]).view(B, N * vocab)
            if config.do_sample:
                picked = torch.multinomial(total.softmax(dim=-1), num_samples=K)
                top_scores = total.gather(1, picked)
                top_scores, order = top_scores.sort(dim=-1, descending=True)
                picked = picked.gather(-1, order)
            else:
                top_scores, picked = torch.topk(total, k=K)
            source = picked // vocab  # (B, K) the beam each candidate extends
            top_indices = _gather(running_indices, source)
            top_sequences = _gather(running, source)
            top_sequences[:, :, cur] = picked % vocab
            top_indices[:, :, cur - P] = (source + offset).to(torch.int32)

            stopped = _stopped(
                decoder,
                plan,
                top_sequences[:, :, : cur + 1].reshape(B * K, cur + 1),
                tuple(all_scores) if all_scores is not None else None,
            ).view(B, K)

            # the best N candidates that did not stop keep running
            alive_scores = top_scores + stopped.float() * _NEG
            keep = torch.topk(alive_scores, k=N)[1]
            running = _gather(top_sequences, keep)
            running_scores = _gather(alive_scores, keep)
            running_indices = _gather(top_indices, keep)

            # candidates among the top N that stopped may enter the finished set
            just_done = stopped & top_n[None, :]
            done_scores = top_scores / ((cur + 1 - P) ** length_penalty)
            full = finished.all(dim=-1, keepdim=True) & (early_stopping is True)
            done_scores = (
                done_scores + full.float() * _NEG + (~improvable).float() * _NEG + (~just_done) * _NEG
            )
            merged = torch.topk(torch.cat([beam_scores, done_scores], 1), k=N)[1]
            sequences = _gather(torch.cat([sequences, top_sequences], 1), merged)
            beam_scores = _gather(torch.cat([beam_scores, done_scores], 1), merged)
            beam_indices = _gather(torch.cat([beam_indices, top_indices], 1), merged)
            finished = _gather(torch.cat([finished, just_done], 1), merged)

            cur += 1
            if early_stopping == "never" and length_penalty > 0.0:
                best_length = max_length - P
            else:
                best_length = cur - P
            best_running = running_scores[:, :1] / (best_length**length_penalty)
            worst_done = torch.where(finished, beam_scores.min(dim=1, keepdim=True)[0], _NEG)
            improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
            go_on = (
                bool(improvable.any())
                and not (bool(finished.all()) and early_stopping is True)
                and not bool(stopped.all())
            )
            if not go_on:
                break
            order = (running_indices[:, :, cur - 1 - P]).reshape(-1).long()
            reorder_cache(decoder.cache, order)
            decoder.sequences[:, :cur] = running[:, :, :cur].reshape(B * N, cur)
        if cur == P + 1:  # as in greedy decoding: lay the weights out once the first step is out
            prepare_for_decoding(model, compiled=plan.compile)
            decoder.native = native_decoder(model)
        with torch.inference_mode():
            decoder.advance(running[:, :, cur - 1].reshape(B * N), cur - 1 - P)

    sequences = sequences[:, :n_return].reshape(B * n_return, max_length)
    beam_scores = beam_scores[:, :n_return].reshape(B * n_return)
    beam_indices = beam_indices[:, :n_return].reshape(B * n_return, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    return BeamResult(
        sequences=sequences[:, : P + generated],
        sequences_scores=beam_scores,
        beam_indices=beam_indices[:, :generated],
        scores=tuple(all_scores) if all_scores is not None else None,
        logits=tuple(raw) if raw is not None else None,
    )
