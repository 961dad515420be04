"""`PreTrainedTokenizerFast`: a `tokenizers.Tokenizer` plus the special tokens, padding and chat template around it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from ..errors import ChatTemplateError, TokenizerError
from ..fileio import Staging
from .batch_encoding import BatchEncoding
from .chat_template import render_chat_template

logger = logging.getLogger("autolm")

SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
VERY_LARGE_INTEGER = int(1e30)  # "no limit" for model_max_length, as in transformers' files
LARGE_INTEGER = int(1e20)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# Keys of tokenizer_config.json that are state of this object, rewritten on save rather than copied through
_OWN_KEYS = {
    "added_tokens_decoder",
    "additional_special_tokens",
    "extra_special_tokens",
    "chat_template",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "clean_up_tokenization_spaces",
    "add_bos_token",
    "add_eos_token",
    "model_input_names",
    "tokenizer_class",
    "tokenizer_file",
    "name_or_path",
    *SPECIAL_TOKEN_NAMES,
}


def as_added_token(value: Any, special: bool = True) -> AddedToken | None:
    """A token from a config (str, AddedToken, or its {"content": ...} dict form) -> AddedToken."""
    if value is None or isinstance(value, AddedToken):
        return value
    if isinstance(value, dict):
        fields = {
            k: v
            for k, v in value.items()
            if k in ("content", "single_word", "lstrip", "rstrip", "normalized")
        }
        return AddedToken(**fields, special=value.get("special", special))
    if isinstance(value, str):
        return AddedToken(value, special=special, normalized=not special)
    raise TokenizerError(f"A special token must be a string or an AddedToken dict, got {value!r}.")


def _added_token_dict(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "single_word": token.single_word,
        "lstrip": token.lstrip,
        "rstrip": token.rstrip,
        "normalized": token.normalized,
        "special": token.special,
    }


class PaddingMixin:
    """Padding and truncation arguments resolved the way transformers resolves them, and `pad`; shared by
    every tokenizer class here. Needs `model_max_length`, `padding_side`, `model_input_names`, `pad_token_id`."""

    def _strategies(
        self, padding: bool | str, truncation: bool | str | None, max_length: int | None
    ) -> tuple[str | None, str | None, int | None]:
        """Resolve the padding/truncation arguments the way transformers does."""
        if padding is True or padding == "longest":
            pad = "longest"
        elif padding == "max_length":
            pad = "max_length"
        elif padding in (False, None, "do_not_pad"):
            pad = None
        else:
            raise TokenizerError(f"padding={padding!r} is not one of True, 'longest', 'max_length', False.")
        if truncation is None and max_length is not None and pad is None:
            truncation = True  # transformers truncates when only max_length is given
        if truncation is True:
            trunc = "longest_first"
        elif truncation in (False, None, "do_not_truncate"):
            trunc = None
        elif truncation in ("longest_first", "only_first", "only_second"):
            trunc = truncation
        else:
            raise TokenizerError(
                f"truncation={truncation!r} is not one of True, 'longest_first', 'only_first', ..."
            )
        if max_length is None and (pad == "max_length" or trunc is not None):
            if self.model_max_length > LARGE_INTEGER:
                # The model states no limit: nothing to cut, and "max_length" padding has no length
                trunc = None
                if pad == "max_length":
                    pad = "longest"
            else:
                max_length = self.model_max_length
        return pad, trunc, max_length

    def pad(
        self,
        encoded_inputs: dict[str, list] | list[dict[str, list]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad already-encoded sequences (a dict of lists, or a list of dicts) to one length."""
        if isinstance(encoded_inputs, (list, tuple)):
            encoded_inputs = {k: [e[k] for e in encoded_inputs] for k in encoded_inputs[0]}
        ids = [_as_list(x) for x in encoded_inputs["input_ids"]]
        pad, _, max_length = self._strategies(padding, False, max_length)
        if pad is not None and self.pad_token_id is None:
            raise TokenizerError(
                "Padding was asked for but the tokenizer has no pad token. Set one, e.g. "
                "`tokenizer.pad_token = tokenizer.eos_token`, or call add_special_tokens({'pad_token': '[PAD]'})."
            )
        target = max(len(x) for x in ids) if pad != "max_length" else max_length
        if pad is None:
            target = 0
        if pad_to_multiple_of and target % pad_to_multiple_of:
            target += pad_to_multiple_of - target % pad_to_multiple_of
        side = padding_side or self.padding_side
        out: dict[str, list] = {k: [] for k in encoded_inputs}
        if return_attention_mask is not False and "attention_mask" in self.model_input_names:
            out.setdefault("attention_mask", [])
        fill = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": 0,
            "special_tokens_mask": 1,
        }
        for i, seq in enumerate(ids):
            missing = max(0, target - len(seq))
            for key in out:
                if key == "attention_mask" and "attention_mask" not in encoded_inputs:
                    value = [1] * len(seq)
                else:
                    value = _as_list(encoded_inputs[key][i])
                padding_values = [fill.get(key, 0)] * missing
                out[key].append(padding_values + value if side == "left" else value + padding_values)
        return BatchEncoding(out, tensor_type=return_tensors)


class PreTrainedTokenizerFast(PaddingMixin):
    """A fast tokenizer with transformers' API, backed by a `tokenizers.Tokenizer`.

    Build it with `AutoTokenizer.from_pretrained(...)`, or directly:
    `PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", chat_template=...)`.
    """

    padding_side: str = "right"
    truncation_side: str = "right"
    model_input_names: list[str] = ["input_ids", "attention_mask"]  # noqa: RUF012

    def __init__(
        self,
        tokenizer_object: Tokenizer | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ):
        owned = kwargs.pop("_owns_tokenizer_object", False)  # built by the loader for this object alone
        if tokenizer_object is not None:
            # A copy: the caller's object must not change when we add tokens or switch padding on
            self._tokenizer = tokenizer_object if owned else Tokenizer.from_str(tokenizer_object.to_str())
        elif tokenizer_file is not None:
            try:
                self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            except BaseException as e:  # tokenizers raises a bare Exception on malformed JSON (or panics)
                if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                    raise
                raise TokenizerError(
                    f"Could not load {tokenizer_file} with the tokenizers library: {e}. The file may be corrupt, "
                    "or written by a newer tokenizers version; upgrade `tokenizers` or re-download it."
                ) from e
        else:
            raise TokenizerError(
                "PreTrainedTokenizerFast needs tokenizer_object=tokenizers.Tokenizer(...) or tokenizer_file=... "
                "To load a saved tokenizer use AutoTokenizer.from_pretrained(path)."
            )
        # where the chat template was read from, for error messages (not a setting: never saved)
        self._chat_template_source: str | None = kwargs.pop("_chat_template_source", None)
        self.init_kwargs = dict(kwargs)
        self.name_or_path = str(kwargs.pop("name_or_path", ""))
        # Padding/truncation stored in tokenizer.json are not call defaults here; keep them to save them back
        self._json_padding = self._tokenizer.padding
        self._json_truncation = self._tokenizer.truncation
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        if self._json_padding is not None:
            kwargs.setdefault("pad_token", self._json_padding["pad_token"])

        max_len = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length: int = int(max_len) if max_len is not None else VERY_LARGE_INTEGER
        self.padding_side = kwargs.pop("padding_side", self.padding_side)
        self.truncation_side = kwargs.pop("truncation_side", self.truncation_side)
        for side, name in ((self.padding_side, "padding_side"), (self.truncation_side, "truncation_side")):
            if side not in ("left", "right"):
                raise TokenizerError(f"{name} must be 'left' or 'right', got {side!r}.")
        self.model_input_names = list(kwargs.pop("model_input_names", self.model_input_names))
        self.clean_up_tokenization_spaces: bool = bool(kwargs.pop("clean_up_tokenization_spaces", False))
        self.split_special_tokens: bool = bool(kwargs.pop("split_special_tokens", False))
        self.chat_template: str | dict[str, str] | None = _normalize_chat_template(
            kwargs.pop("chat_template", None)
        )

        # Special tokens: named ones, then the unnamed extra list
        self._special: dict[str, AddedToken | None] = {
            name: as_added_token(kwargs.pop(name, None)) for name in SPECIAL_TOKEN_NAMES
        }
        extra = (
            kwargs.pop("extra_special_tokens", None) or kwargs.pop("additional_special_tokens", None) or []
        )
        if isinstance(extra, dict):  # {"image_token": "<image>"}: model-specific named tokens
            for name, value in extra.items():
                self._special[name] = as_added_token(value)
            extra = []
        self._extra_special: list[AddedToken] = [as_added_token(t) for t in extra]

        # Tokens the config lists by id come first, so they keep their ids; special tokens missing from the
        # vocabulary are added after them
        decoder = kwargs.pop("added_tokens_decoder", None) or {}
        known = set(self._tokenizer.get_added_tokens_decoder().values())
        known_content = {t.content for t in known}
        to_add = [
            as_added_token(t)
            for _, t in sorted(((int(i), t) for i, t in decoder.items()), key=lambda x: x[0])
            if as_added_token(t).content not in known_content
        ]
        seen = known_content | {t.content for t in to_add}
        for token in [*self._special.values(), *self._extra_special]:
            if token is not None and token.content not in seen:
                to_add.append(AddedToken(token.content, special=True, normalized=False))
                seen.add(token.content)
        if to_add:
            self._tokenizer.add_tokens(to_add)
        self._tokenizer.encode_special_tokens = self.split_special_tokens

        explicit = "add_bos_token" in kwargs or "add_eos_token" in kwargs
        self._add_bos_token = bool(kwargs.pop("add_bos_token", False))
        self._add_eos_token = bool(kwargs.pop("add_eos_token", False))
        # tokenizer.json's own post-processor wins unless the config asks for bos/eos explicitly
        if explicit or self._tokenizer.post_processor is None:
            self.update_post_processor()
        # Everything else in the config (do_lower_case, legacy, ...) stays readable as an attribute
        self._extra_config = kwargs
        for key, value in kwargs.items():
            if not hasattr(type(self), key) and not key.startswith("_"):
                self.__dict__.setdefault(key, value)

    # --- special tokens -----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        special = self.__dict__.get("_special")
        if special is not None:
            if name in special:
                token = special[name]
                return None if token is None else token.content
            if name.endswith("_token_id") and name[: -len("_id")] in special:
                token = special[name[: -len("_id")]]
                return None if token is None else self.convert_tokens_to_ids(token.content)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        special = self.__dict__.get("_special")
        if special is not None and (name in SPECIAL_TOKEN_NAMES or name in special):
            special[name] = as_added_token(value)
            if name in ("bos_token", "eos_token") and (self._add_bos_token or self._add_eos_token):
                self.update_post_processor()
            return
        if special is not None and name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_TOKEN_NAMES:
            self._special[name[: -len("_id")]] = (
                None if value is None else as_added_token(self._id_to_token(value))
            )
            return
        super().__setattr__(name, value)

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Rebuild the post-processor from `add_bos_token` / `add_eos_token` and the current bos/eos tokens."""
        bos, eos = self.bos_token, self.eos_token
        add_bos = self._add_bos_token and bos is not None
        add_eos = self._add_eos_token and eos is not None
        single = " ".join([*([f"{bos}:0"] if add_bos else []), "$A:0", *([f"{eos}:0"] if add_eos else [])])
        pair = " ".join(
            [single, *([f"{bos}:1"] if add_bos else []), "$B:1", *([f"{eos}:1"] if add_eos else [])]
        )
        special = []
        if add_bos:
            special.append((bos, self.bos_token_id))
        if add_eos:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special
        )

    @property
    def special_tokens_map(self) -> dict[str, str | list[str]]:
        """Named special tokens that are set, plus `additional_special_tokens`; chat templates see these."""
        out: dict[str, Any] = {k: v.content for k, v in self._special.items() if v is not None}
        if self._extra_special:
            out["additional_special_tokens"] = [t.content for t in self._extra_special]
        return out

    @property
    def additional_special_tokens(self) -> list[str]:
        return [t.content for t in self._extra_special]

    @property
    def all_special_tokens(self) -> list[str]:
        out: list[str] = []
        for token in [*self._special.values(), *self._extra_special]:
            if token is not None and token.content not in out:
                out.append(token.content)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in self.convert_tokens_to_ids(self.all_special_tokens) if i is not None]

    def add_tokens(
        self, new_tokens: str | AddedToken | Sequence[str | AddedToken], special_tokens: bool = False
    ) -> int:
        """Add tokens to the vocabulary; returns how many were new."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        tokens = [as_added_token(t, special=special_tokens) for t in new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(tokens)
        return self._tokenizer.add_tokens(tokens)

    def add_special_tokens(
        self, special_tokens_dict: dict[str, Any], replace_additional_special_tokens: bool = True
    ) -> int:
        """Set named special tokens (`{"pad_token": "<pad>"}`) and add them to the vocabulary; returns how many were new."""
        to_add: list[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                extra = [as_added_token(t) for t in value]
                if replace_additional_special_tokens:
                    self._extra_special = extra
                else:
                    self._extra_special += [
                        t for t in extra if t.content not in self.additional_special_tokens
                    ]
                to_add += extra
            elif key in SPECIAL_TOKEN_NAMES or key.endswith("_token"):
                token = as_added_token(value)
                self._special[key] = token
                to_add.append(token)
            else:
                raise TokenizerError(
                    f"add_special_tokens got the key {key!r}; keys are {', '.join(SPECIAL_TOKEN_NAMES)} "
                    "or 'additional_special_tokens'."
                )
        added = self.add_tokens(to_add, special_tokens=True)
        if self._add_bos_token or self._add_eos_token:
            self.update_post_processor()
        return added

    # --- vocabulary ---------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def is_fast(self) -> bool:
        return True

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (as transformers)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    def _id_to_token(self, index: int) -> str | None:
        return self._tokenizer.id_to_token(int(index))

    def convert_tokens_to_ids(self, tokens: str | Sequence[str] | None) -> int | list[int] | None:
        """Token string(s) -> id(s); unknown tokens map to `unk_token_id` (None when there is no unk token)."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return index if index is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i)) for i in _as_list(ids) if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def tokenize(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs
    ) -> list[str]:
        """Text -> token strings (no special tokens unless asked)."""
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    # --- encoding -----------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | None = None,
        text_pair: str | list[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode a string, a pair, or a batch of them; returns a `BatchEncoding`.

        Args:
            text: a string, or a list of strings (a batch; with `is_split_into_words`, a list of words).
            text_pair: the second sequence(s) of pairs.
            add_special_tokens: add bos/eos/cls/sep as the tokenizer's post-processor says.
            padding: True/"longest" pads to the longest in the batch, "max_length" to `max_length`.
            truncation: True/"longest_first"/"only_first"/"only_second" cut to `max_length`.
            max_length: limit for truncation and "max_length" padding (default: `model_max_length`).
            return_tensors: "pt" for torch tensors, "np" for numpy arrays, None for lists.

        Raises:
            TokenizerError: bad input types, or padding asked for without a pad token.
        """
        if text is None:
            raise TokenizerError("The tokenizer was called without text. Pass a string or a list of strings.")
        if kwargs.pop("return_dict", True) is False:
            pass  # accepted for compatibility; a BatchEncoding is always returned
        kwargs.pop("verbose", None)
        if kwargs:
            logger.debug("tokenizer call ignores unknown arguments: %s", sorted(kwargs))
        batched = _is_batch(text, is_split_into_words)
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise TokenizerError(
                    f"Got {len(texts)} texts but {len(pairs)} text pairs; pass one pair per text."
                )
        for t in texts + (pairs or []):
            ok = (
                isinstance(t, (list, tuple)) and all(isinstance(w, str) for w in t)
                if is_split_into_words
                else isinstance(t, str)
            )
            if not ok:
                raise TokenizerError(
                    f"Expected str (or a list of str with is_split_into_words=True), got {type(t).__name__}: {t!r:.80}"
                )
        inputs = list(zip(texts, pairs)) if pairs is not None else texts

        pad_strategy, trunc_strategy, max_length = self._strategies(padding, truncation, max_length)
        backend = self._tokenizer
        try:
            if trunc_strategy is not None:
                backend.enable_truncation(
                    max_length, stride=stride, strategy=trunc_strategy, direction=self.truncation_side
                )
            if pad_strategy is not None:
                if self.pad_token is None or self.pad_token_id is None:
                    raise TokenizerError(
                        "Padding was asked for but the tokenizer has no pad token. Set one, e.g. "
                        "`tokenizer.pad_token = tokenizer.eos_token`, or call add_special_tokens({'pad_token': '[PAD]'})."
                    )
                backend.enable_padding(
                    length=max_length if pad_strategy == "max_length" else None,
                    direction=padding_side or self.padding_side,
                    pad_id=self.pad_token_id,
                    pad_type_id=0,
                    pad_token=self.pad_token,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            encodings = backend.encode_batch(
                inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
            )
        finally:
            backend.no_padding()
            backend.no_truncation()

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        sequences = []
        for enc in encodings:  # overflowing windows follow their sequence when asked for
            sequences.append(enc)
            if return_overflowing_tokens:
                sequences.extend(enc.overflowing)
        data: dict[str, list] = {"input_ids": [e.ids for e in sequences]}
        if return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in sequences]
        if return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in sequences]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in sequences]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in sequences]
        if return_length:
            data["length"] = [len(e.ids) for e in sequences]
        if not batched and return_tensors is None and not return_overflowing_tokens:
            # transformers keeps "length" a one-item list even for one text
            data = {k: (v if k == "length" else v[0]) for k, v in data.items()}
        return BatchEncoding(data, encodings=sequences, tensor_type=return_tensors)

    def encode(
        self,
        text: str | list[str],
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> list[int] | Any:
        """Text (or pre-split words) -> list of ids; a (1, T) tensor with return_tensors."""
        enc = self(
            text,
            text_pair=text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **kwargs,
        )
        return enc["input_ids"]

    # --- decoding -----------------------------------------------------------------------------

    def decode(
        self,
        token_ids: int | Sequence[int] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """Ids -> text. `skip_special_tokens` drops bos/eos/pad and other special tokens."""
        if isinstance(token_ids, dict) or isinstance(token_ids, BatchEncoding):
            token_ids = token_ids["input_ids"]
        ids = [int(token_ids)] if isinstance(token_ids, int) else _as_list(token_ids)
        if ids and isinstance(ids[0], list):
            raise TokenizerError("decode() takes one sequence; use batch_decode() for a batch of sequences.")
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        cleanup = (
            self.clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is None
            else clean_up_tokenization_spaces
        )
        if cleanup:
            # The cleanup was written for WordPiece: on BPE it would delete real spaces before punctuation,
            # so (as transformers does) it only applies to other models unless forced
            is_bpe = type(self._tokenizer.model).__name__ == "BPE"
            if not is_bpe or kwargs.get(
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
            ):
                text = clean_up_tokenization(text)
        return text

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        if isinstance(sequences, (dict, BatchEncoding)):
            sequences = sequences["input_ids"]
        return [
            self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)
            for seq in _as_list(sequences)
        ]

    # --- chat ---------------------------------------------------------------------------------

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to use: an explicit one, a named one, or the tokenizer's ("tool_use" when tools are given)."""
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None and chat_template in templates:
                return templates[chat_template]
            if chat_template is not None:
                return chat_template
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ChatTemplateError(
                f"This tokenizer has several chat templates ({', '.join(sorted(templates))}) and none is named "
                "'default'. Pass chat_template=<name> to pick one."
            )
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise ChatTemplateError(
                f"The tokenizer {self.name_or_path or ''} has no chat template: tokenizer_config.json has no "
                "'chat_template' and there is no chat_template.jinja. Pass chat_template=<jinja string>."
            )
        return templates

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        tokenizer_kwargs: dict[str, Any] | None = None,
        return_assistant_tokens_mask: bool = False,
        **template_kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | BatchEncoding:
        """Render a conversation (or a batch) with the chat template, and tokenize it unless `tokenize=False`.

        As in transformers 5, a tokenized result is a `BatchEncoding` (`return_dict=True`, the default);
        `return_dict=False` gives the ids alone. The template's own special tokens are not added twice.
        `tools` may hold Python functions (described from their signature and Google-style docstring).
        `return_assistant_tokens_mask`: an `assistant_masks` entry, 1 on every token that overlaps a
        `{% generation %}` block of the template.

        Raises:
            ChatTemplateError: no template, malformed messages, or the template called raise_exception.
            TemplateSecurityError: the template tried to escape the sandbox.
        """
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ChatTemplateError("The conversation is empty; pass at least one message.")
        template = self.get_chat_template(chat_template, tools)
        spans: list | None = [] if return_assistant_tokens_mask else None
        variables = {**self.special_tokens_map, **template_kwargs}
        own = chat_template is None or (
            isinstance(self.chat_template, dict) and chat_template in self.chat_template
        )
        rendered = render_chat_template(
            conversation,
            template,
            template_source=self._chat_template_source if own else "the chat_template argument",
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            generation_spans=spans,
            **variables,
        )
        if not tokenize:
            return rendered
        out = self(
            rendered,
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **(tokenizer_kwargs or {}),
        )
        if spans is not None and return_dict:
            masks = [_span_mask(enc.offsets, s) for enc, s in zip(out.encodings, spans)]
            batched = not isinstance(rendered, str)
            value = masks if batched or return_tensors else masks[0]
            if return_tensors == "pt":
                import torch

                value = torch.tensor(masks)
            out["assistant_masks"] = value
        return out if return_dict else out["input_ids"]

    # --- saving -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json.

        The directory loads back with `AutoTokenizer.from_pretrained` here and in transformers.
        """
        if kwargs.get("push_to_hub"):
            raise TokenizerError(
                "push_to_hub is not supported by autolm; upload the saved directory yourself."
            )
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise TokenizerError(f"{out} exists and is a file; save_pretrained needs a directory path.")
        out.mkdir(parents=True, exist_ok=True)

        backend = Tokenizer.from_str(self._tokenizer.to_str())
        if self._json_padding is not None:
            backend.enable_padding(**self._json_padding)
        if self._json_truncation is not None:
            backend.enable_truncation(**self._json_truncation)

        config = {k: v for k, v in self._extra_config.items() if k not in _OWN_KEYS and _is_json(v)}
        config.update(
            {
                "added_tokens_decoder": {
                    str(i): _added_token_dict(t) for i, t in self.added_tokens_decoder.items()
                },
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                "model_max_length": self.model_max_length,
                "padding_side": self.padding_side,
                "truncation_side": self.truncation_side,
                "model_input_names": self.model_input_names,
                "add_bos_token": self._add_bos_token,
                "add_eos_token": self._add_eos_token,
                "tokenizer_class": self.init_kwargs.get("tokenizer_class") or "PreTrainedTokenizerFast",
            }
        )
        for name, token in self._special.items():
            if token is not None:
                config[name] = token.content
        if self._extra_special:
            config["extra_special_tokens"] = [t.content for t in self._extra_special]
        if self.chat_template is not None:
            config["chat_template"] = (
                [{"name": k, "template": v} for k, v in self.chat_template.items()]
                if isinstance(self.chat_template, dict)
                else self.chat_template
            )
        # the three files are written first and renamed one after the other, so they switch together
        with Staging() as staging:
            backend.save(str(staging.temp(out / TOKENIZER_FILE)))
            _write_json(staging.temp(out / TOKENIZER_CONFIG_FILE), config)
            _write_json(staging.temp(out / SPECIAL_TOKENS_MAP_FILE), self.special_tokens_map)
        from ..remote_code import save_code

        save_code(self, out, TOKENIZER_CONFIG_FILE)  # a class from a repo's code: its files come along
        return tuple(str(out / f) for f in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_FILE))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        from .auto import load_tokenizer

        return load_tokenizer(cls, pretrained_model_name_or_path, *args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces WordPiece decoding leaves before punctuation and English contractions."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def _normalize_chat_template(value: Any) -> str | dict[str, str] | None:
    # Configs store several templates as [{"name": ..., "template": ...}]
    if isinstance(value, list):
        return {item["name"]: item["template"] for item in value}
    return value


def _as_list(value: Any) -> list:
    if hasattr(value, "tolist"):  # torch / numpy
        return value.tolist()
    return list(value)


def _is_batch(text: Any, is_split_into_words: bool) -> bool:
    if isinstance(text, str):
        return False
    if isinstance(text, (list, tuple)):
        if is_split_into_words:
            return len(text) > 0 and isinstance(text[0], (list, tuple))
        return True
    raise TokenizerError(f"Expected a string or a list of strings, got {type(text).__name__}.")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _span_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap one of `spans` (both in order: one pass)."""
    mask = [0] * len(offsets)
    i = 0
    for t, (start, end) in enumerate(offsets):
        while i < len(spans) and start >= spans[i][1]:
            i += 1
        if i == len(spans):
            break
        if end > spans[i][0]:
            mask[t] = 1
    return mask
