"""Building the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.

A GGUF ships no `tokenizer.json`; it lists the vocabulary, the merges (or SentencePiece scores),
each token's type and the special token ids. Two vocabulary kinds are read here:

- "gpt2": byte-level BPE. Tokens are spelled in GPT-2's byte alphabet; `tokenizer.ggml.pre` names
  the pre-tokenizer split.
- "llama": SentencePiece BPE with `<0xNN>` byte-fallback tokens; merges, when the file has none,
  are rebuilt from the scores.

The result follows transformers' GGUF tokenizer (`AutoTokenizer.from_pretrained(..., gguf_file=)`)
so that token ids are the same.
"""

from __future__ import annotations

import logging
from functools import cache
from os import PathLike
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import GGUFError
from .reader import GGUFFile, read_gguf

if TYPE_CHECKING:
    from ..tokenization import PreTrainedTokenizerFast

logger = logging.getLogger("autolm")

# llama.cpp's token types (tokenizer.ggml.token_type)
CONTROL, USER_DEFINED = 3, 4

# Pre-tokenizer splits named by `tokenizer.ggml.pre`; any other name gets GPT-2's byte-level split.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CASED_WORD = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_SPLIT = (
    rf"{_CASED_WORD}*[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]+{_CONTRACTION}"
    rf"|{_CASED_WORD}+[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]*{_CONTRACTION}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}

# Architectures transformers gives its GemmaTokenizer: their SentencePiece scores do not follow the merge
# order, so with no merges in the file a token's position in the vocabulary ranks its merges (earlier
# first); and batches are padded on the left
GEMMA_ARCHITECTURES = {"gemma", "gemma2", "gemma3"}

_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


@cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves,
    the rest take the code points from 256 up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    extra = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(extra)
            extra += 1
    return table


def _byte_level_backend(tokens: list[str], merges: list[str], pre: str | None) -> Tokenizer:
    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        # a token spelled with raw text (not the byte alphabet) is re-spelled so BPE can reach it
        if not letters.issuperset(token):
            token = "".join(alphabet[byte] for byte in token.encode("utf-8"))
        vocab[token] = index
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = Tokenizer(
        models.BPE(
            vocab, pairs, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(pre or "")
    if split is None:
        if pre:
            logger.debug("GGUF pre-tokenizer %r has no split of its own; using GPT-2's", pre)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens,
    best score first (ties: shorter left piece, then shorter right piece, then vocabulary order)."""
    ids = {token: index for index, token in enumerate(tokens)}
    candidates: list[tuple[float, int, int, str, str]] = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:cut], token[cut:]) for cut in range(1, len(token))]
        splits = [(left, right) for left, right in splits if left in ids and right in ids]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        candidates += [(score, len(left), len(right), left, right) for left, right in splits]
    # a stable sort keeps vocabulary order among equal keys, which decides between equal-score merges
    candidates.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)
    return [(left, right) for _, _, _, left, right in candidates]


def _sentencepiece_backend(
    tokens: list[str], merges: list[str] | None, scores: list[float] | None, prefix_space: bool = True
) -> Tokenizer:
    """SentencePiece BPE with byte fallback; `prefix_space` (the file's `tokenizer.ggml.add_space_prefix`,
    true when absent) puts "▁" before the text and strips it again when decoding."""
    if merges is not None:
        pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    elif scores is not None:
        pairs = sentencepiece_merges(tokens, scores)
    else:
        pairs = []
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab, pairs, fuse_unk=True, byte_fallback=True, dropout=None))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix_space else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if prefix_space else steps)
    return backend


def _post_processor(
    bos: str | None, eos: str | None, add_bos: bool, add_eos: bool, backend: Tokenizer
) -> processors.TemplateProcessing:
    """Add bos/eos around each sequence as the flags ask (the layout transformers writes)."""
    single, pair, special = ["$A:0"], ["$B:1"], []
    for token, wanted, position in ((bos, add_bos, 0), (eos, add_eos, None)):
        if not wanted or token is None or backend.token_to_id(token) is None:
            continue
        if position == 0:
            single.insert(0, f"{token}:0")
            pair.insert(0, f"{token}:1")
        else:
            single.append(f"{token}:0")
            pair.append(f"{token}:1")
        special.append((token, backend.token_to_id(token)))
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(single + pair), special_tokens=sorted(set(special))
    )


def _backend(gguf: GGUFFile, build, *args) -> Tokenizer:
    """Build the tokenizers backend; the library's own errors on a corrupt vocabulary name the file."""
    try:
        return build(*args)
    except Exception as error:  # tokenizers raises a bare Exception on a malformed vocabulary
        raise GGUFError(
            f"GGUF file {gguf.path}: the tokenizers library refused its vocabulary ({type(error).__name__}: "
            f"{str(error)[:200]}). The file is corrupt; convert it again, or load the original tokenizer.json.",
            files=[gguf.path],
        ) from error


def gguf_tokenizer_parts(path_or_reader: str | PathLike[str] | GGUFFile) -> tuple[Tokenizer, dict[str, Any]]:
    """The `tokenizers.Tokenizer` a GGUF file describes, and the keyword arguments (special tokens,
    `add_bos_token`, `chat_template`, ...) that `PreTrainedTokenizerFast` takes with it.

    Raises:
        GGUFError: the file has no tokenizer metadata, or a vocabulary kind autolm cannot build.
    """
    gguf = read_gguf(path_or_reader)
    kind = gguf.get("tokenizer.ggml.model", kind=str)
    tokens = gguf.get("tokenizer.ggml.tokens", kind=list, items=str)
    if kind is None or tokens is None:
        raise GGUFError(
            f"GGUF file {gguf.path} has no tokenizer metadata (tokenizer.ggml.model and tokenizer.ggml.tokens). "
            "Load the tokenizer from the original model's tokenizer.json instead, or use a GGUF converted "
            "with its vocabulary."
        )
    token_types = gguf.get("tokenizer.ggml.token_type", [], list, int)
    merges = gguf.get("tokenizer.ggml.merges", kind=list, items=str)
    if merges is not None and not all(" " in merge for merge in merges):
        raise GGUFError(
            f"GGUF file {gguf.path}: tokenizer.ggml.merges holds an entry that is not two tokens separated by "
            "a space. The file is corrupt; convert it again.",
            files=[gguf.path],
            key="tokenizer.ggml.merges",
        )
    if kind == "gpt2":
        backend = _backend(
            gguf, _byte_level_backend, tokens, merges or [], gguf.get("tokenizer.ggml.pre", kind=str)
        )
        letters = set(_byte_alphabet().values())
        # a control token outside the byte alphabet is a converter mislabel: adding it would grow the vocabulary
        control = [t for t, kind_ in zip(tokens, token_types) if kind_ == CONTROL and letters.issuperset(t)]
        add_bos_default = False
    elif kind == "llama":
        scores = gguf.get("tokenizer.ggml.scores", kind=list, items=float)
        if gguf.architecture in GEMMA_ARCHITECTURES and merges is None:
            scores = [-float(index) for index in range(len(tokens))]
        # a token of spaces only is stored as real spaces, but text reaches the vocabulary with "▁" for " "
        tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]
        prefix_space = gguf.get("tokenizer.ggml.add_space_prefix", True, bool)
        backend = _backend(gguf, _sentencepiece_backend, tokens, merges, scores, bool(prefix_space))
        control = [t for t, kind_ in zip(tokens, token_types) if kind_ == CONTROL]
        # llama.cpp adds BOS for a SentencePiece vocabulary unless the file says otherwise
        add_bos_default = True
    else:
        raise GGUFError(
            f"GGUF file {gguf.path} has a tokenizer of kind {kind!r} (tokenizer.ggml.model), which autolm "
            "cannot build. Supported kinds: 'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE). Load the "
            "tokenizer from the original model's tokenizer.json instead."
        )
    kwargs: dict[str, Any] = {}
    for name, key in _SPECIAL_IDS.items():
        index = gguf.get(key, kind=int)
        kwargs[name] = tokens[index] if index is not None and 0 <= index < len(tokens) else None
    model = backend.model  # membership in the vocabulary itself (get_vocab would copy it into a dict)
    # the named special tokens (e.g. an "unknown"-typed <unk>) are matched whole too
    named = [
        t for t in kwargs.values() if t is not None and model.token_to_id(t) is not None and t not in control
    ]
    special = control + list(dict.fromkeys(named))
    if special:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    # user-defined tokens (e.g. "<think>") are matched whole in text, but are not special
    user = [
        t
        for t, kind_ in zip(tokens, token_types)
        if kind_ == USER_DEFINED and model.token_to_id(t) is not None
    ]
    if user:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    add_bos = gguf.get("tokenizer.ggml.add_bos_token", kind=bool)
    kwargs["add_bos_token"] = add_bos_default if add_bos is None else bool(add_bos)
    kwargs["add_eos_token"] = bool(gguf.get("tokenizer.ggml.add_eos_token", False, bool))
    backend.post_processor = _backend(
        gguf,
        _post_processor,
        kwargs["bos_token"],
        kwargs["eos_token"],
        kwargs["add_bos_token"],
        kwargs["add_eos_token"],
        backend,
    )
    if gguf.architecture in GEMMA_ARCHITECTURES:
        kwargs["padding_side"] = "left"
    template = gguf.get("tokenizer.chat_template", kind=str)
    if template is not None:
        kwargs["chat_template"] = template
    return backend, kwargs


def tokenizer_from_gguf(path: str | PathLike[str] | GGUFFile) -> PreTrainedTokenizerFast:
    """The tokenizer stored in a GGUF file, as a `PreTrainedTokenizerFast`.

    Args:
        path: the `.gguf` file (or a `GGUFFile` from `read_gguf`).

    Raises:
        GGUFError: no tokenizer metadata, or an unsupported vocabulary kind.
    """
    from ..tokenization import PreTrainedTokenizerFast  # the tokenizer package loads only when asked for

    gguf = read_gguf(path)
    backend, kwargs = gguf_tokenizer_parts(gguf)
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=str(gguf.path), **kwargs)
