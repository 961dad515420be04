"""Build a `tokenizers.Tokenizer` from the older vocabulary files, for repos without tokenizer.json.

Four families: GPT-2-style byte-level BPE (`vocab.json` + `merges.txt`), SentencePiece (`tokenizer.model`,
read here with a small protobuf reader so the `sentencepiece` package is not needed), T5's SentencePiece Unigram
(`spiece.model`, same reader) and WordPiece (`vocab.txt`).
Each recipe builds the same pipeline transformers builds for that tokenizer class, so ids match.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, Unigram, WordPiece

from ..errors import TokenizerError

# Qwen2's split rule: contractions, letters, single digits, punctuation runs, newlines, spaces
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


# --- byte-level BPE ---------------------------------------------------------------------------


def read_vocab_json(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise TokenizerError(
            f"Could not read {path} as a JSON token->id map: {str(e)[:200]}. Re-download the file.",
            files=[path],
        ) from None
    if not isinstance(vocab, dict):
        raise TokenizerError(
            f"{path} holds a {type(vocab).__name__}, expected a JSON object of token -> id.", files=[path]
        )
    for token, index in vocab.items():
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise TokenizerError(
                f"{path}: the token {token!r} holds a lone surrogate, which is not text; re-download the file.",
                files=[path],
                key=token,
            ) from None
        if (
            not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2**24
        ):  # a larger id makes tokenizers allocate that many slots
            raise TokenizerError(
                f"{path}: the token {token!r} has the id {index!r}; ids are integers >= 0. Re-download the file.",
                files=[path],
                key=token,
            )
    return vocab


def read_text(path: Path) -> str:
    """A tokenizer text file (merges.txt, vocab.txt, a template), with an error naming it when unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}). Re-download the file.", files=[path]
        ) from None
    except OSError as e:
        raise TokenizerError(f"Could not read {path}: {e.strerror or e}.", files=[path]) from None


def read_merges_txt(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in read_text(path).split("\n"):
        # The first line is often a "#version: 0.2" header; blank lines carry nothing
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(
                f"{path}: the merge line {line[:100]!r} is not two tokens separated by one space.",
                files=[path],
            )
        merges.append((parts[0], parts[1]))
    return merges


def byte_level_bpe(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    flavour: str = "gpt2",
    add_prefix_space: bool = False,
) -> Tokenizer:
    """GPT-2 (`flavour="gpt2"`) or Qwen2 (`"qwen2"`: NFC + its own split regex) byte-level BPE."""
    for left, right in merges:
        # the tokenizers library panics on some merges outside the vocabulary; say which one instead
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise TokenizerError(
                f"merges.txt has the merge {left!r} {right!r}, but vocab.json lacks "
                f"{next(t for t in (left, right, left + right) if t not in vocab)!r}. The two files do not "
                "belong together; re-download both.",
                files=["merges.txt", "vocab.json"],
            )
    model = BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
    )
    tok = Tokenizer(model)
    if flavour == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return tok


# --- WordPiece --------------------------------------------------------------------------------


def read_vocab_txt(path: Path) -> dict[str, int]:
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":  # the file's final newline is not an empty token
        lines.pop()
    return {token: i for i, token in enumerate(lines)}


def wordpiece(
    vocab: dict[str, int],
    unk_token: str = "[UNK]",
    do_lower_case: bool = True,
    tokenize_chinese_chars: bool = True,
    strip_accents: bool | None = None,
) -> Tokenizer:
    """BERT's pipeline: clean + lowercase (+ CJK spacing) normalizer, whitespace/punctuation split, `##` pieces."""
    tok = Tokenizer(WordPiece(vocab, unk_token=unk_token))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


# --- SentencePiece ----------------------------------------------------------------------------

# Piece types in sentencepiece_model.proto
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece ModelProto that tokenization needs."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = 1  # 1 unigram, 2 bpe
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    precompiled_charsmap: bytes = b""  # the normalization rules (NFKC and friends), compiled by the trainer

    def piece(self, index: int) -> str | None:
        return self.pieces[index][0] if 0 <= index < len(self.pieces) else None


def _fields(buf: bytes):
    """Yield (field number, wire type, value) from a protobuf message; length-delimited values stay bytes."""
    pos, end = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ValueError("truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, value


def _int32(v: int) -> int:
    # Negative int32 values (pad_id = -1) are written as 64-bit two's complement varints
    return v - (1 << 64) if v >= 1 << 63 else v


_FLOAT = struct.Struct("<f")


def _read_piece(buf: bytes) -> tuple[str, float, int]:
    """One SentencePiece message -> (piece, score, type)."""
    # Nearly every piece is laid out as 0x0A <len> <utf-8> 0x15 <float32> [0x18 <type>]: read that directly
    # (a 250k-piece vocabulary loads in a fraction of the general reader's time), anything else field by field
    n = len(buf)
    if n > 2 and buf[0] == 0x0A and buf[1] < 0x80:
        end = 2 + buf[1]
        if end + 5 <= n and buf[end] == 0x15:
            rest = end + 5
            if rest == n:
                return buf[2:end].decode("utf-8"), _FLOAT.unpack_from(buf, end + 1)[0], NORMAL
            if rest + 2 == n and buf[rest] == 0x18 and buf[rest + 1] < 0x80:
                return buf[2:end].decode("utf-8"), _FLOAT.unpack_from(buf, end + 1)[0], buf[rest + 1]
    piece, score, kind = "", 0.0, NORMAL
    for number, _, value in _fields(buf):
        if number == 1:
            piece = value.decode("utf-8")
        elif number == 2:
            score = _FLOAT.unpack(value)[0]
        elif number == 3:
            kind = value
    return piece, score, kind


def _leading_pieces(data: bytes) -> tuple[list[tuple[str, float, int]], int]:
    """The pieces a ModelProto starts with (field 1 is written first), read in one tight loop.

    Returns them and where the rest of the message begins; a piece message of 128 bytes or more ends the loop
    and is left to the general reader.
    """
    pieces: list[tuple[str, float, int]] = []
    append, unpack = pieces.append, _FLOAT.unpack_from
    pos, n = 0, len(data)
    while pos + 1 < n and data[pos] == 0x0A and data[pos + 1] < 0x80:
        start, stop = pos + 2, pos + 2 + data[pos + 1]
        if stop > n:
            raise ValueError("truncated field")
        pos = stop
        # the usual layout, inline: 0x0A <len> <utf-8> 0x15 <float32> [0x18 <type>]
        if data[start] == 0x0A and data[start + 1] < 0x80:
            end = start + 2 + data[start + 1]
            if end + 5 <= stop and data[end] == 0x15:
                rest = end + 5
                if rest == stop:
                    append((data[start + 2 : end].decode("utf-8"), unpack(data, end + 1)[0], NORMAL))
                    continue
                if rest + 2 == stop and data[rest] == 0x18 and data[rest + 1] < 0x80:
                    append((data[start + 2 : end].decode("utf-8"), unpack(data, end + 1)[0], data[rest + 1]))
                    continue
        append(_read_piece(data[start:stop]))
    return pieces, pos


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    try:
        data = path.read_bytes()
        spm = SentencePieceModel()
        spm.pieces, start = _leading_pieces(data)
        for number, _, value in _fields(data[start:]):
            if number == 1:  # repeated SentencePiece
                spm.pieces.append(_read_piece(value))
            elif number == 2:  # TrainerSpec
                for n, _, v in _fields(value):
                    if n == 3:
                        spm.model_type = v
                    elif n == 35:
                        spm.byte_fallback = bool(v)
                    elif n in (40, 41, 42, 43):
                        setattr(spm, {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[n], _int32(v))
            elif number == 3:  # NormalizerSpec
                for n, _, v in _fields(value):
                    if n == 2:
                        spm.precompiled_charsmap = bytes(v)
                    elif n == 3:
                        spm.add_dummy_prefix = bool(v)
                    elif n == 4:
                        spm.remove_extra_whitespaces = bool(v)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise TokenizerError(
            f"{path} is not a readable SentencePiece model ({e}). It may be truncated or a different format "
            "(a tiktoken file?). Re-download it, or provide tokenizer.json."
        ) from e
    if not spm.pieces:
        raise TokenizerError(f"{path} holds no vocabulary pieces; it is not a SentencePiece model.")
    return spm


def merges_from_vocab(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Recover BPE merges from a ranked vocabulary: a piece made of two known pieces is a merge, ranked by the piece.

    SentencePiece stores no merge list; its BPE merges pairs in the order the merged pieces were learnt,
    which is their id. Splits of one piece are tried shortest-left first.
    """
    merges = []
    for piece, rank in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, cut, len(right), left, right))
    merges.sort(key=lambda m: m[:3])
    return [(left, right) for _, _, _, left, right in merges]


def sentencepiece_tokenizer(
    spm: SentencePieceModel, add_prefix_space: bool = True, legacy: bool = False
) -> tuple[Tokenizer, list[AddedToken]]:
    """Llama's pipeline on a SentencePiece vocabulary: Metaspace, BPE with byte fallback, no normalizer.

    Returns the tokenizer and the pieces to register as added tokens (control pieces are special).
    """
    vocab = {piece: i for i, (piece, _, _) in enumerate(spm.pieces)}
    if spm.model_type == 1:  # unigram: keep the scores, the model is a lattice search, not merges
        model = Unigram(
            [(p, s) for p, s, _ in spm.pieces], unk_id=spm.unk_id, byte_fallback=spm.byte_fallback
        )
    else:
        model = BPE(
            vocab=vocab, merges=merges_from_vocab(vocab), fuse_unk=True, byte_fallback=True, dropout=None
        )
    tok = Tokenizer(model)
    # "first": only the start of the text gets the dummy "▁", not text after each special token
    scheme = ("always" if legacy else "first") if add_prefix_space else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    added = [
        AddedToken(piece, normalized=False, special=kind == CONTROL)
        for piece, _, kind in spm.pieces
        if kind in (CONTROL, USER_DEFINED)
    ]
    return tok, added


# --- T5 (SentencePiece Unigram) ----------------------------------------------------------------

T5_UNK_ID = (
    2  # T5's layout: <pad> 0, </s> 1, <unk> 2; transformers' T5Tokenizer fixes unk there, and so do we
)


def t5_sentinels(extra_ids: int) -> list[str]:
    """`<extra_id_0>` ... `<extra_id_{n-1}>`, the span-corruption sentinels T5 appends to its vocabulary."""
    return [f"<extra_id_{i}>" for i in range(extra_ids)]


def t5_vocab(spm: SentencePieceModel, extra_ids: int) -> list[tuple[str, float]]:
    """The pieces with their scores, then the sentinels at the top of the vocabulary in reverse order.

    So `<extra_id_0>` is the last id (32099 in T5), as in the original T5 vocabulary.
    """
    return [(p, s) for p, s, _ in spm.pieces] + [(t, 0.0) for t in reversed(t5_sentinels(extra_ids))]


def t5_unigram(vocab: list[tuple[str, float]], precompiled_charsmap: bytes | None) -> Tokenizer:
    """T5's pipeline, as transformers' T5Tokenizer builds it: the model's own character map (NFKC-like),
    a split on whitespace, "▁" before every word, and a Unigram lattice over the scored pieces.

    The post-processor (append `</s>`) needs the eos id, so the tokenizer class adds it.
    """
    tok = Tokenizer(Unigram(vocab, unk_id=T5_UNK_ID, byte_fallback=False))
    if precompiled_charsmap:
        tok.normalizer = normalizers.Precompiled(precompiled_charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok


def t5_from_tokenizer_json(data: dict) -> tuple[list[tuple[str, float]], bytes | None]:
    """The scored vocabulary and the character map of a T5 tokenizer.json (the rest is rebuilt, as transformers does).

    Raises:
        TokenizerError: the file's model is not a Unigram vocabulary.
    """
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not (
        isinstance(vocab, list)
        and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) for v in vocab)
    ):
        kind = model.get("type") if isinstance(model, dict) else None
        raise TokenizerError(
            f"tokenizer.json has a {kind or 'missing'} model, but tokenizer_class T5Tokenizer needs a Unigram "
            "vocabulary (a list of [piece, score]). Re-download tokenizer.json, or fix tokenizer_class in "
            "tokenizer_config.json.",
            files=["tokenizer.json"],
        )
    charsmap = None
    normalizer = data.get("normalizer")
    steps = normalizer.get("normalizers", []) if isinstance(normalizer, dict) else []
    for step in [normalizer, *steps]:
        if isinstance(step, dict) and step.get("type") == "Precompiled" and step.get("precompiled_charsmap"):
            charsmap = base64.b64decode(step["precompiled_charsmap"])
            break
    return [(piece, float(score)) for piece, score in vocab], charsmap
