"""`QWenTokenizer`: Qwen-1's (Qwen-7B/14B/72B[-Chat]) byte-level BPE from `qwen.tiktoken`, run by tiktoken.

Qwen-1 ships its tokenizer as code (tokenization_qwen.py); autolm reads the same files as data and runs
none of that code. Two revisions of that file exist on the Hub and behave differently; the loader reads
which one a repo has from the file's text (it never imports it):

- "legacy" (the first release): 208 special tokens right after the vocabulary, `<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>`, `<R>`, `<S>`, `<X>`, `<mask>`, `<sep>`, `<extra_0>`..`<extra_199>`; text that
  contains one of them is refused unless `allowed_special` names it; `skip_special_tokens` drops the 208;
  bos/eos/unk are `<|endoftext|>`.
- "later": `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>`..`<|extra_204|>` from id 151643;
  special-token text in the input is encoded as the special token (`allowed_special="all"`);
  `skip_special_tokens` drops every id from `<|endoftext|>` on.

Both NFC-normalise the text before encoding and decode bytes with `errors="replace"` unless told.
"""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..errors import ChatTemplateError, MissingDependencyError, TokenizerError
from ..fileio import Staging
from .batch_encoding import BatchEncoding
from .tokenizer import TOKENIZER_CONFIG_FILE, VERY_LARGE_INTEGER, PaddingMixin, _as_list, _write_json

VOCAB_FILE = "qwen.tiktoken"
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
LATER_START = 151643  # later revisions fix the first special id
LAYOUTS = ("legacy", "later")


def special_tokens(layout: str, vocab_size: int, more: bool = True) -> dict[str, int]:
    """The special tokens of a revision and their ids."""
    if layout == "legacy":
        names = [ENDOFTEXT, IM_START, IM_END]
        if more:
            names += ["<R>", "<S>", "<X>", "<mask>", "<sep>", *(f"<extra_{i}>" for i in range(200))]
        return {name: vocab_size + i for i, name in enumerate(names)}
    names = [ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205))]
    return {name: LATER_START + i for i, name in enumerate(names)}


def layout_of_code(source: str | None, vocab_size: int) -> str:
    """Which revision a repo's tokenization_qwen.py is, from its text (None: no file; then the vocabulary
    size decides, since later revisions need exactly 151643 mergeable tokens)."""
    if source is not None:
        if "<|extra_" in source:
            return "later"
        if "<extra_" in source:
            return "legacy"
    return "later" if vocab_size == LATER_START else "legacy"


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    try:
        lines = Path(path).read_bytes().splitlines()
        return {
            base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)
        }
    except (ValueError, OSError) as e:
        raise TokenizerError(
            f"{path} is not a tiktoken vocabulary (one 'base64-token rank' pair per line): {e}. "
            "Re-download qwen.tiktoken."
        ) from None


class QWenTokenizer(PaddingMixin):
    """Qwen-1's tokenizer with the API of transformers' tokenizers.

    `QWenTokenizer(vocab_file)`, or `AutoTokenizer.from_pretrained(qwen_repo)` (with or without
    `trust_remote_code`: nothing from the repo runs). Ids, `tokenize` (bytes, and str for special tokens),
    `decode`, padding and truncation behave as the repo's own class does.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}  # noqa: RUF012
    padding_side = "right"
    truncation_side = "right"
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]  # noqa: RUF012

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        errors: str = "replace",
        extra_vocab_file: str | os.PathLike | None = None,
        special_tokens_layout: str | None = None,
        add_more_sp_tokens: bool = True,
        pad_token: str | None = None,
        model_max_length: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        name_or_path: str = "",
        **kwargs: Any,
    ):
        try:
            import tiktoken
        except ImportError:
            raise MissingDependencyError(
                "Qwen-1's tokenizer (qwen.tiktoken) needs the tiktoken library: pip install tiktoken"
            ) from None
        self.vocab_file = str(vocab_file)
        self.mergeable_ranks = read_ranks(vocab_file)
        layout = special_tokens_layout or layout_of_code(None, len(self.mergeable_ranks))
        if layout not in LAYOUTS:
            raise TokenizerError(f"special_tokens_layout must be one of {LAYOUTS}, got {layout!r}.")
        self.special_tokens_layout = layout
        self.special_tokens = special_tokens(layout, len(self.mergeable_ranks), add_more_sp_tokens)
        if extra_vocab_file is not None:  # later revisions: extra ranks, skipping tokens or ids in use
            used = set(self.mergeable_ranks.values()) | set(self.special_tokens.values())
            for token, rank in read_ranks(extra_vocab_file).items():
                if token not in self.mergeable_ranks and rank not in used:
                    self.mergeable_ranks[token] = rank
        self.extra_vocab_file = None if extra_vocab_file is None else str(extra_vocab_file)
        self.errors = errors
        ids = set(self.mergeable_ranks.values())
        clash = sorted(ids & set(self.special_tokens.values()))
        if clash:
            raise TokenizerError(
                f"{vocab_file} has {len(self.mergeable_ranks)} tokens, so its ranks overlap the special tokens "
                f"of the {layout!r} layout (first clash: id {clash[0]}). Pass special_tokens_layout='legacy' "
                "(special tokens follow the vocabulary) or use the repo's own qwen.tiktoken."
            )
        self.tokenizer = tiktoken.Encoding(
            "Qwen", pat_str=PATTERN, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )
        self.decoder: dict[int, bytes | str] = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        self.eod_id = self.special_tokens[ENDOFTEXT]
        self.im_start_id = self.special_tokens[IM_START]
        self.im_end_id = self.special_tokens[IM_END]
        self.name_or_path = str(name_or_path)
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = padding_side or self.padding_side
        self.truncation_side = truncation_side or self.truncation_side
        for side, name in ((self.padding_side, "padding_side"), (self.truncation_side, "truncation_side")):
            if side not in ("left", "right"):
                raise TokenizerError(f"{name} must be 'left' or 'right', got {side!r}.")
        named = ENDOFTEXT if layout == "legacy" else None
        self.bos_token = kwargs.pop("bos_token", named)
        self.eos_token = kwargs.pop("eos_token", named)
        self.unk_token = kwargs.pop("unk_token", named)
        self.pad_token = pad_token
        self.chat_template = kwargs.pop("chat_template", None)
        self.init_kwargs = dict(kwargs)

    # --- vocabulary ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.tokenizer.n_vocab

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.n_vocab

    def get_vocab(self) -> dict[bytes, int]:
        """The mergeable tokens (bytes) and their ids, as the repo's class returns them."""
        return dict(self.mergeable_ranks)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(self.special_tokens)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self.special_tokens.values())

    def _token_id(self, name: str) -> int | None:
        token = getattr(self, name)
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def pad_token_id(self) -> int | None:
        return self._token_id("pad_token")

    @pad_token_id.setter
    def pad_token_id(self, value: int | None) -> None:
        self.pad_token = None if value is None else self._id_to_text(int(value))

    @property
    def eos_token_id(self) -> int | None:
        return self._token_id("eos_token")

    @eos_token_id.setter
    def eos_token_id(self, value: int | None) -> None:
        self.eos_token = None if value is None else self._id_to_text(int(value))

    @property
    def bos_token_id(self) -> int | None:
        return self._token_id("bos_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._token_id("unk_token")

    def _id_to_text(self, index: int) -> str:
        token = self.decoder.get(index)
        if token is None:
            raise TokenizerError(f"Token id {index} is not in this vocabulary of {len(self)} ids.")
        return token if isinstance(token, str) else token.decode("utf-8", errors="replace")

    def add_special_tokens(self, special_tokens_dict: dict[str, Any], **kwargs: Any) -> int:
        """Name existing special tokens (pad_token, eos_token, ...); Qwen-1's vocabulary cannot grow."""
        for name, value in special_tokens_dict.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                text = getattr(v, "content", v)
                if text not in self.special_tokens:
                    raise TokenizerError(
                        f"{text!r} is not one of Qwen-1's special tokens and its vocabulary cannot grow; use one "
                        f"of them, e.g. {{'{name}': '<|endoftext|>'}}."
                    )
            if name != "additional_special_tokens":
                setattr(self, name, getattr(values[0], "content", values[0]))
        return 0

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        if not new_tokens:
            return 0
        raise TokenizerError(
            "Qwen-1's tokenizer cannot add tokens (its vocabulary is a fixed tiktoken file); the special "
            f"tokens {IM_START}, {IM_END} and the extra ones are already there."
        )

    def convert_tokens_to_ids(self, tokens: bytes | str | Sequence[bytes | str]) -> int | list[int] | None:
        if isinstance(tokens, (str, bytes)):
            if tokens in self.special_tokens:
                return self.special_tokens[tokens]
            key = tokens.encode("utf-8") if isinstance(tokens, str) else tokens
            return self.mergeable_ranks.get(key)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> bytes | str | list[bytes | str]:
        if isinstance(ids, int):
            return self._token(ids)
        return [
            self._token(int(i)) for i in _as_list(ids) if not (skip_special_tokens and self._skips(int(i)))
        ]

    def _token(self, index: int) -> bytes | str:
        if index not in self.decoder:
            raise TokenizerError(f"Token id {index} is not in this vocabulary of {len(self)} ids.")
        return self.decoder[index]

    def convert_tokens_to_string(self, tokens: Sequence[bytes | str]) -> str:
        text, pending = [], b""
        for t in tokens:
            if isinstance(t, bytes):
                pending += t
                continue
            if pending:
                text.append(pending.decode("utf-8", errors=self.errors))
                pending = b""
            text.append(t)
        if pending:
            text.append(pending.decode("utf-8", errors=self.errors))
        return "".join(text)

    # --- encoding -----------------------------------------------------------------------------

    def _defaults(self, allowed_special: Any, disallowed_special: Any) -> tuple[Any, Any]:
        if self.special_tokens_layout == "later":
            return ("all" if allowed_special is None else allowed_special), (
                () if disallowed_special is None else disallowed_special
            )
        return (set() if allowed_special is None else allowed_special), (
            "all" if disallowed_special is None else disallowed_special
        )

    def encode_ids(
        self,
        text: str,
        allowed_special: Collection[str] | str | None = None,
        disallowed_special: Collection[str] | str | None = None,
    ) -> list[int]:
        """NFC-normalised text -> ids, special-token text handled as this revision handles it."""
        if not isinstance(text, str):
            raise TokenizerError(f"Expected str, got {type(text).__name__}: {text!r:.80}")
        allowed, disallowed = self._defaults(allowed_special, disallowed_special)
        try:
            return self.tokenizer.encode(
                unicodedata.normalize("NFC", text), allowed_special=allowed, disallowed_special=disallowed
            )
        except ValueError as e:
            found = next((t for t in self.special_tokens if t in str(e)), "a special token")
            raise TokenizerError(
                f"The text contains {found}, which this tokenizer does not encode from text by default. Pass "
                f"allowed_special={{{found!r}}} (or 'all') to encode it as the special token, or "
                "disallowed_special=() to encode it as plain text."
            ) from None

    def tokenize(
        self,
        text: str,
        allowed_special: Collection[str] | str | None = None,
        disallowed_special: Collection[str] | str | None = None,
        **kwargs: Any,
    ) -> list[bytes | str]:
        """Text -> tokens: bytes for vocabulary tokens, str for special tokens (as the repo's class)."""
        return [self.decoder[i] for i in self.encode_ids(text, allowed_special, disallowed_special)]

    def __call__(
        self,
        text: str | list[str] | None = None,
        text_pair: str | list[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        allowed_special: Collection[str] | str | None = None,
        disallowed_special: Collection[str] | str | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode a string, a pair, or a batch of them; returns a `BatchEncoding` (input_ids,
        token_type_ids, attention_mask). Qwen-1 adds no special tokens around the text."""
        if text is None:
            raise TokenizerError("The tokenizer was called without text. Pass a string or a list of strings.")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise TokenizerError(
                    f"Got {len(texts)} texts but {len(pairs)} text pairs; pass one per text."
                )
        pad, trunc, max_length = self._strategies(padding, truncation, max_length)
        rows = []
        for i, t in enumerate(texts):
            first = self.encode_ids(t, allowed_special, disallowed_special)
            second = None if pairs is None else self.encode_ids(pairs[i], allowed_special, disallowed_special)
            if trunc is not None and max_length is not None:
                first, second = self._truncate(first, second, max_length, trunc)
            types = [0] * len(first) + ([1] * len(second) if second is not None else [])
            rows.append((first + (second or []), types))
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data: dict[str, list] = {"input_ids": [ids for ids, _ in rows]}
        if return_token_type_ids:
            data["token_type_ids"] = [types for _, types in rows]
        if return_attention_mask:
            data["attention_mask"] = [[1] * len(ids) for ids, _ in rows]
        if pad is not None:
            data = dict(
                self.pad(
                    data,
                    padding=padding,
                    max_length=max_length,
                    pad_to_multiple_of=pad_to_multiple_of,
                    padding_side=padding_side,
                    return_attention_mask=return_attention_mask,
                )
            )
        if return_length:
            data["length"] = [len(ids) for ids in data["input_ids"]]
        if not batched:
            data = {k: (v if k == "length" else v[0]) for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)

    def _truncate(
        self, first: list[int], second: list[int] | None, max_length: int, strategy: str
    ) -> tuple[list[int], list[int] | None]:
        def cut(ids: list[int], n: int) -> list[int]:
            if n <= 0:
                return ids
            return ids[: len(ids) - n] if self.truncation_side == "right" else ids[n:]

        excess = len(first) + len(second or []) - max_length
        if excess <= 0:
            return first, second
        if second is None or strategy == "only_first":
            return cut(first, excess), second
        if strategy == "only_second":
            return first, cut(second, excess)
        for _ in range(excess):  # longest_first: one token at a time from the longer sequence
            if len(first) > len(second):
                first = cut(first, 1)
            else:
                second = cut(second, 1)
        return first, second

    def encode(
        self, text: str, text_pair: str | None = None, return_tensors: str | None = None, **kwargs: Any
    ):
        """Text -> list of ids (a (1, T) tensor with return_tensors)."""
        return self(text, text_pair=text_pair, return_tensors=return_tensors, **kwargs)["input_ids"]

    # --- decoding -----------------------------------------------------------------------------

    def _skips(self, index: int) -> bool:
        if self.special_tokens_layout == "later":
            return index >= self.eod_id
        return index in self.decoder and isinstance(self.decoder[index], str)

    def decode(
        self,
        token_ids: int | Sequence[int] | Any,
        skip_special_tokens: bool = False,
        errors: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Ids -> text; bytes that are not valid UTF-8 (e.g. half a character) follow `errors`
        (default: the tokenizer's, "replace")."""
        if isinstance(token_ids, (dict, BatchEncoding)):
            token_ids = token_ids["input_ids"]
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in _as_list(token_ids)]
        if ids and isinstance(_as_list(token_ids)[0], list):
            raise TokenizerError("decode() takes one sequence; use batch_decode() for a batch of sequences.")
        if skip_special_tokens:
            ids = [i for i in ids if not self._skips(i)]
        unknown = [i for i in ids if i not in self.decoder]
        if unknown:
            raise TokenizerError(
                f"Token id {unknown[0]} is not in this vocabulary of {len(self)} ids; the ids come from another "
                "tokenizer or model."
            )
        return self.tokenizer.decode(ids, errors=errors or self.errors)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        if isinstance(sequences, (dict, BatchEncoding)):
            sequences = sequences["input_ids"]
        return [self.decode(seq, skip_special_tokens, **kwargs) for seq in _as_list(sequences)]

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        tools: list | None = None,
        **kwargs: Any,
    ):
        """Render a chat template given at load time (`chat_template=`); Qwen-1's files have none."""
        if self.chat_template is None:
            raise ChatTemplateError(
                "Qwen-1's tokenizer has no chat template: chat with model.chat(tokenizer, query, history) (ChatML, "
                "as Qwen-7B-Chat does), or pass chat_template= when loading the tokenizer."
            )
        from .chat_template import render_chat_template

        kwargs.pop("return_dict", None)
        text = render_chat_template(
            conversation,
            self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **kwargs,
        )
        return self.encode(text, allowed_special="all") if tokenize else text

    # --- files --------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> tuple[str, ...]:
        """Write qwen.tiktoken and tokenizer_config.json; the directory loads back with AutoTokenizer."""
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise TokenizerError(f"{out} exists and is a file; save_pretrained needs a directory path.")
        out.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in self.init_kwargs.items() if _is_plain(v) and k != "auto_map"}
        config.update(
            tokenizer_class="QWenTokenizer",
            special_tokens_layout=self.special_tokens_layout,
            errors=self.errors,
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
        )
        for name in ("pad_token", "bos_token", "eos_token", "unk_token"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with Staging() as staging:
            staging.temp(out / VOCAB_FILE).write_text(
                "".join(
                    f"{base64.b64encode(k).decode('ascii')} {v}\n" for k, v in self.mergeable_ranks.items()
                )
            )
            _write_json(staging.temp(out / TOKENIZER_CONFIG_FILE), config)
        return tuple(str(out / f) for f in (TOKENIZER_CONFIG_FILE, VOCAB_FILE))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        from .auto import load_tokenizer

        return load_tokenizer(cls, pretrained_model_name_or_path, *args, **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["tokenizer"]
        return state

    def __setstate__(self, state: dict) -> None:
        import tiktoken

        self.__dict__.update(state)
        self.tokenizer = tiktoken.Encoding(
            "Qwen", pat_str=PATTERN, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )

    def __repr__(self) -> str:
        return (
            f"QWenTokenizer(name_or_path={self.name_or_path!r}, vocab_size={len(self)}, "
            f"special_tokens_layout={self.special_tokens_layout!r}, padding_side={self.padding_side!r})"
        )


def _is_plain(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
