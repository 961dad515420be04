"""Small tiktoken vocabularies for the Qwen-1 tokenizer tests (the real qwen.tiktoken is not ours to commit).

`train_ranks` learns byte-level BPE merges from text, split as Qwen's pattern splits it, so the
vocabulary merges real words; `padded_ranks` fills it up to the size later Qwen revisions expect
(their special tokens start at the fixed id 151643) with tokens that start with byte 0xF8, which never
occurs in UTF-8 text, so no text can reach them and the encoding of text does not change. Used by
scripts/make_qwen1_tokenizer_fixtures.py (with the real tokenizer code) and by tests/test_qwen1_tokenizer.py.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import regex

PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LATER_SIZE = 151643  # len(mergeable ranks) the later revisions assert


def train_ranks(text: str, merges: int) -> dict[bytes, int]:
    """256 single bytes, then `merges` merges of the most frequent adjacent pair (ties: smallest bytes)."""
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(regex.findall(PATTERN, text))
    pieces = {w: [bytes([b]) for b in w.encode("utf-8")] for w in words}
    for _ in range(merges):
        pairs: Counter = Counter()
        for w, parts in pieces.items():
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        for w, parts in pieces.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            pieces[w] = out
    return ranks


def padded_ranks(ranks: dict[bytes, int], size: int = LATER_SIZE) -> dict[bytes, int]:
    out = dict(ranks)
    for i in range(size - len(out)):
        out[b"\xf8" + i.to_bytes(3, "big")] = len(out)
    return out


def read_ranks(path: Path) -> dict[bytes, int]:
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in path.read_bytes().splitlines() if line)
    }


def write_ranks(ranks: dict[bytes, int], path: Path) -> None:
    path.write_text("".join(f"{base64.b64encode(k).decode()} {v}\n" for k, v in ranks.items()))
