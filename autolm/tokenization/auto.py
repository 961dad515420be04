"""`AutoTokenizer.from_pretrained`: a repo's tokenizer files -> `PreTrainedTokenizerFast`.

Reads tokenizer_config.json, special_tokens_map.json, added_tokens.json and chat_template.jinja/.json,
then builds the backend from tokenizer.json, or else from vocab.json + merges.txt, tokenizer.model, spiece.model
(T5) or vocab.txt.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .. import remote_code
from ..errors import AutolmOSError, TokenizerError
from ..hub import Repo, open_repo, pop_hub_kwargs
from . import converters
from .tokenizer import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, PreTrainedTokenizerFast

logger = logging.getLogger("autolm")

VOCAB_FILES = (TOKENIZER_FILE, "vocab.json + merges.txt", "tokenizer.model", "spiece.model", "vocab.txt")

# What transformers' tokenizer classes assume when the config is silent (class attributes and __init__ defaults)
_LLAMA = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "padding_side": "left"}
_GPT2 = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
_QWEN2 = {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
_BERT = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
}
_T5 = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 100}
# class name (without "Fast") -> (defaults, how to build it without tokenizer.json)
TOKENIZER_CLASSES: dict[str, tuple[dict[str, Any], str]] = {
    "LlamaTokenizer": (_LLAMA, "sentencepiece"),
    "CodeLlamaTokenizer": (_LLAMA, "sentencepiece"),
    "GPT2Tokenizer": (_GPT2, "gpt2"),
    "Qwen2Tokenizer": (_QWEN2, "qwen2"),
    "T5Tokenizer": (_T5, "t5"),
    "BertTokenizer": (_BERT, "wordpiece"),
    "DistilBertTokenizer": (_BERT, "wordpiece"),
    "QWenTokenizer": ({}, "qwen"),
    "PreTrainedTokenizerFast": ({}, "auto"),
    "TokenizersBackend": ({}, "auto"),
}
# config.json's model_type -> tokenizer class, for repos whose tokenizer_config.json names none (as transformers)
MODEL_TYPE_TOKENIZERS = {"t5": "T5Tokenizer", "mt5": "T5Tokenizer", "qwen": "QWenTokenizer"}


class AutoTokenizer:
    """Load a tokenizer from a directory or hub id, like `transformers.AutoTokenizer`."""

    def __init__(self):
        raise AutolmOSError("AutoTokenizer is built with AutoTokenizer.from_pretrained(name_or_path).")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *inputs: Any, **kwargs: Any
    ) -> PreTrainedTokenizerFast:
        """Load the tokenizer of a model directory (or hub id, or .gguf file).

        Args:
            pretrained_model_name_or_path: a directory, a hub id, or a path to a `.gguf` file.
            gguf_file: name of a .gguf file inside the repo to take the tokenizer from.
            kwargs: hub arguments (revision, cache_dir, token, ...) and overrides of tokenizer_config.json
                (bos_token, padding_side, chat_template, model_max_length, ...).

        Raises:
            TokenizerError: no tokenizer files, or malformed ones.
        """
        remote = remote_code.pop_remote_kwargs(kwargs)
        gguf = kwargs.get("gguf_file") is not None or str(pretrained_model_name_or_path).endswith(".gguf")
        if not gguf:
            hub_kwargs = pop_hub_kwargs(kwargs)
            reference = _remote_reference(open_repo(pretrained_model_name_or_path, **hub_kwargs), remote)
            if reference is not None:
                tokenizer_class = remote_code.get_class(
                    pretrained_model_name_or_path,
                    reference,
                    remote.get("trust_remote_code"),
                    lock_file=remote.get("lock_file"),
                    hub_kwargs=hub_kwargs,
                    code_revision=remote.get("code_revision"),
                    auto_class="AutoTokenizer",
                )
                return tokenizer_class.from_pretrained(
                    pretrained_model_name_or_path, *inputs, **hub_kwargs, **kwargs
                )
            kwargs.update(hub_kwargs)
        return load_tokenizer(PreTrainedTokenizerFast, pretrained_model_name_or_path, *inputs, **kwargs)


def _remote_reference(repo: Repo, remote: dict) -> str | None:
    """The repo's own tokenizer class (auto_map), when its tokenizer_class is not one autolm knows."""
    path = repo.get_optional(TOKENIZER_CONFIG_FILE)
    config = _read_json(path) if path is not None else {}
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map:
        model_config = repo.get_optional("config.json")
        auto_map = (_read_json(model_config) if model_config is not None else {}).get("auto_map")
    class_name = str(config.get("tokenizer_class") or "") if isinstance(config, dict) else ""
    return remote_code.remote_reference(
        auto_map,
        "AutoTokenizer",
        native=class_name.removesuffix("Fast") in TOKENIZER_CLASSES,
        prefer_remote_code=remote.get("prefer_remote_code", False),
        trust_remote_code=remote.get("trust_remote_code"),
        source=str(path or repo.name),
    )


def load_tokenizer(
    cls: type[PreTrainedTokenizerFast],
    pretrained_model_name_or_path: str | os.PathLike,
    *inputs: Any,
    **kwargs: Any,
) -> PreTrainedTokenizerFast:
    """Build `cls` (PreTrainedTokenizerFast or a subclass) from a repo's tokenizer files; runs no repo code."""
    for ignored in ("use_fast", "_from_auto", "tokenizer_type", *remote_code.REMOTE_KWARGS):
        kwargs.pop(ignored, None)  # autolm has only the fast path
    hub_kwargs = pop_hub_kwargs(kwargs)
    gguf_file = kwargs.pop("gguf_file", None)
    if gguf_file is not None or str(pretrained_model_name_or_path).endswith(".gguf"):
        return _from_gguf(pretrained_model_name_or_path, gguf_file, hub_kwargs)

    repo = open_repo(pretrained_model_name_or_path, **hub_kwargs)
    config = read_tokenizer_config(repo)
    config["name_or_path"] = str(pretrained_model_name_or_path)
    if not config.get("tokenizer_class"):
        # config.json's model_type names the class (and a save then names it, as transformers does)
        config["tokenizer_class"] = _class_from_model_type(repo) or config.get("tokenizer_class")
    class_name = str(config.get("tokenizer_class") or "PreTrainedTokenizerFast").removesuffix("Fast")
    defaults, recipe = TOKENIZER_CLASSES.get(class_name, ({}, "auto"))
    if class_name not in TOKENIZER_CLASSES:
        logger.debug("tokenizer_class %s has no recipe here; building from the files present", class_name)

    tokenizer_json = repo.get_optional(TOKENIZER_FILE)
    if tokenizer_json is not None:
        # tokenizer.json's post-processor already says whether bos/eos are added (transformers does the same)
        config.pop("add_bos_token", None)
        config.pop("add_eos_token", None)
    init = {**defaults, **config, **kwargs}
    files = [p for p in (repo.get_optional(TOKENIZER_CONFIG_FILE), tokenizer_json) if p is not None]
    try:
        if recipe == "t5":
            return _load_t5(cls, repo, tokenizer_json, init, kwargs)
        if recipe == "qwen":
            return _load_qwen(cls, repo, init)
        if tokenizer_json is not None:
            return cls(tokenizer_file=tokenizer_json, **init)
        backend, extra_added = _build_backend(repo, recipe, init)
        if extra_added:
            backend.add_tokens(extra_added)
        return cls(tokenizer_object=backend, _owns_tokenizer_object=True, **init)
    except BaseException as e:
        # the tokenizers library raises plain Exceptions (and a PanicException on some malformed
        # vocabularies); anything else is a bug and keeps its traceback
        if type(e) is not Exception and type(e).__name__ != "PanicException":
            raise
        names = ", ".join(str(f) for f in files) or f"the tokenizer files of {repo.name}"
        raise TokenizerError(
            f"The tokenizers library refused {names}: {str(e)[:300]}. The files are corrupt or inconsistent "
            "(e.g. a merge or special token missing from the vocabulary); re-download them.",
            files=files or None,
        ) from None


def _class_from_model_type(repo: Repo) -> str | None:
    path = repo.get_optional("config.json")
    if path is None:
        return None
    config = _read_json(path)
    return MODEL_TYPE_TOKENIZERS.get(config.get("model_type")) if isinstance(config, dict) else None


def _load_t5(
    cls: type[PreTrainedTokenizerFast],
    repo: Repo,
    tokenizer_json: Path | None,
    init: dict[str, Any],
    kwargs: dict[str, Any],
) -> PreTrainedTokenizerFast:
    """T5's Unigram tokenizer, from tokenizer.json or else spiece.model, built the way transformers builds it.

    Of a tokenizer.json only the scored vocabulary, the character map and any padding/truncation are kept; the
    pipeline is rebuilt (older files carry other pre-tokenizers, which transformers 5 replaces too).
    """
    from tokenizers import processors

    init = {
        k: v for k, v in init.items() if k not in ("add_bos_token", "add_eos_token")
    }  # T5 always adds </s>
    extra_ids = init.get("extra_ids")
    if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or not 0 <= extra_ids < 100_000:
        raise TokenizerError(
            f"tokenizer_config.json: extra_ids is {extra_ids!r}; expected the number of <extra_id_N> sentinel "
            "tokens, an integer >= 0 (T5 has 100, mT5 0).",
            key="extra_ids",
        )
    controls: list[str] = []
    padding = truncation = None
    if tokenizer_json is not None:
        data = _read_json(tokenizer_json, dict)
        vocab, charsmap = converters.t5_from_tokenizer_json(data)
        if data.get("padding") or data.get("truncation"):
            from tokenizers import Tokenizer

            # the file's own settings, parsed by the tokenizers library on an empty model
            settings = Tokenizer.from_str(
                json.dumps(
                    {
                        "version": "1.0",
                        "padding": data.get("padding"),
                        "truncation": data.get("truncation"),
                        "added_tokens": [],
                        "model": {"type": "WordLevel", "vocab": {}, "unk_token": "<unk>"},
                    }
                )
            )
            padding, truncation = settings.padding, settings.truncation
    else:
        path = repo.get_optional("spiece.model")
        if path is None:
            found = ", ".join(f for f in _safe_list(repo) if not f.startswith(".")) or "nothing"
            raise TokenizerError(
                f"{repo.name} has tokenizer_class T5Tokenizer but neither tokenizer.json nor spiece.model (the "
                f"SentencePiece model T5 tokenizers are built from). Found: {found}. Copy one of the two from "
                "the original model."
            )
        spm = converters.read_sentencepiece_model(path)
        if spm.model_type != 1:
            raise TokenizerError(
                f"{path} is a SentencePiece BPE model; T5Tokenizer needs a Unigram one. Set tokenizer_class "
                "in tokenizer_config.json to the tokenizer this model was trained with (e.g. LlamaTokenizer).",
                files=[path],
            )
        vocab, charsmap = converters.t5_vocab(spm, extra_ids), spm.precompiled_charsmap
        # control pieces (<pad>, </s>) lead the extra special tokens when the config lists none
        controls = [piece for piece, _, kind in spm.pieces if kind == converters.CONTROL]
    if len(vocab) <= converters.T5_UNK_ID:
        raise TokenizerError(
            f"The T5 vocabulary of {tokenizer_json or repo.name} has {len(vocab)} pieces; T5 keeps <unk> at id "
            f"{converters.T5_UNK_ID}, so it needs at least {converters.T5_UNK_ID + 1}. Re-download the file."
        )
    backend = converters.t5_unigram(vocab, charsmap)
    if padding is not None:
        backend.enable_padding(**padding)
    if truncation is not None:
        backend.enable_truncation(**truncation)
    init.pop("additional_special_tokens", None)
    init["extra_special_tokens"] = _t5_extra_special_tokens(repo, kwargs, controls, tokenizer_json, extra_ids)
    tok = cls(tokenizer_object=backend, _owns_tokenizer_object=True, **init)
    if tok.eos_token_id is None:
        raise TokenizerError(
            "T5 tokenizers append the eos token to every sequence, but eos_token is unset. Set eos_token "
            '(T5 uses "</s>") in tokenizer_config.json or pass eos_token=... .',
            key="eos_token",
        )
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", tok.eos_token_id)]
    )
    return tok


def _load_qwen(cls: type, repo: Repo, init: dict[str, Any]):
    """Qwen-1's qwen.tiktoken; which revision of its tokenizer code the repo has is read from that file's text
    (never imported): the revisions number and treat special tokens differently."""
    from .qwen import VOCAB_FILE, QWenTokenizer, layout_of_code, read_ranks

    vocab = repo.get_optional(VOCAB_FILE)
    if vocab is None:
        raise TokenizerError(
            f"{repo.name} names QWenTokenizer but has no {VOCAB_FILE}; download the repo's {VOCAB_FILE} too.",
            files=[str(repo.name)],
        )
    if not init.get("special_tokens_layout"):
        code = repo.get_optional("tokenization_qwen.py")
        source = code.read_text(encoding="utf-8", errors="replace") if code is not None else None
        init["special_tokens_layout"] = layout_of_code(source, len(read_ranks(vocab)))
    for key in ("tokenizer_class", "_chat_template_source", "added_tokens_decoder"):
        init.pop(key, None)
    extra = init.pop("extra_vocab_file", None)
    if extra is not None and not Path(extra).is_absolute():
        extra = repo.get(extra)
    target = cls if isinstance(cls, type) and issubclass(cls, QWenTokenizer) else QWenTokenizer
    return target(vocab, extra_vocab_file=extra, **init)


def _t5_extra_special_tokens(
    repo: Repo, kwargs: dict[str, Any], controls: list[str], tokenizer_json: Path | None, extra_ids: int
) -> list | dict:
    """The extra special tokens of a T5 tokenizer, chosen as transformers 5 chooses them.

    A list in tokenizer_config.json (or passed by the caller) is taken as it is, even an empty one. Otherwise the
    sentinels are appended to the spiece.model's control pieces, or to special_tokens_map.json's list when
    loading from tokenizer.json, unless that list already holds them.
    """
    path = repo.get_optional(TOKENIZER_CONFIG_FILE)
    own = {**(_read_json(path, dict) if path is not None else {}), **kwargs}
    if "additional_special_tokens" in own and not own.get("extra_special_tokens"):
        return own["additional_special_tokens"] or []
    if "extra_special_tokens" in own:
        return own["extra_special_tokens"] or []
    base: list | None = controls if tokenizer_json is None else None
    specials_path = repo.get_optional(SPECIAL_TOKENS_MAP_FILE)
    if tokenizer_json is not None and specials_path is not None and "added_tokens_decoder" not in own:
        base = _read_json(specials_path, dict).get("additional_special_tokens")
    sentinels = converters.t5_sentinels(extra_ids)
    if base is None:
        return sentinels
    listed = [t for t in base if "<extra_id_" in _content(t)]
    if not listed:
        return [*base, *sentinels]
    if extra_ids > 0 and len(listed) != extra_ids:
        raise TokenizerError(
            f"{specials_path} lists {len(listed)} <extra_id_N> tokens but tokenizer_config.json says extra_ids "
            f"is {extra_ids}. Make them agree: list all {extra_ids} sentinels, or set extra_ids to {len(listed)}.",
            files=[specials_path],
            key="extra_ids",
        )
    return base


def _from_gguf(
    name_or_path: str | os.PathLike, gguf_file: str | None, hub_kwargs: dict
) -> PreTrainedTokenizerFast:
    from ..gguf import tokenizer_from_gguf  # GGUF support loads only when asked for

    if gguf_file is None:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise TokenizerError(
                f"{path} does not exist. Pass the path of a .gguf file or a directory and gguf_file=."
            )
    else:
        path = open_repo(name_or_path, **hub_kwargs).get(gguf_file)
    return tokenizer_from_gguf(Path(path))


def _read_json(path: Path, kind: type | None = None) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise TokenizerError(
            f"Could not read {path} as JSON: {str(e)[:200]}. Fix or re-download the file.", files=[path]
        ) from None
    if kind is not None and not isinstance(data, kind):
        raise TokenizerError(
            f"{path} holds a {type(data).__name__}; expected a JSON {'object' if kind is dict else kind.__name__}.",
            files=[path],
        )
    return data


_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BOOL_KEYS = (
    "add_bos_token",
    "add_eos_token",
    "add_prefix_space",
    "clean_up_tokenization_spaces",
    "split_special_tokens",
    "do_lower_case",
    "legacy",
)


def _is_text(value: Any) -> bool:
    """A str that is valid Unicode text (JSON can spell lone surrogates, which no tokenizer can hold)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_token(value: Any) -> bool:
    return _is_text(value) or (isinstance(value, dict) and _is_text(value.get("content")))


def check_tokenizer_settings(config: dict[str, Any], path: Path | str) -> None:
    """Check the values of tokenizer_config.json (or special_tokens_map.json) that the tokenizer uses.

    Raises:
        TokenizerError: naming the file and the key, and what a valid value looks like.
    """

    def fail(key: str, what: str) -> None:
        value = repr(config[key])
        raise TokenizerError(
            f"{path}: {key} is {value if len(value) < 80 else value[:77] + '...'}; expected {what}. "
            "Fix the file or re-download it.",
            files=[path],
            key=key,
        )

    for key in _TOKEN_KEYS:
        if config.get(key) is not None and not _is_token(config[key]):
            fail(key, 'a token string or {"content": "..."}')
    for key in _BOOL_KEYS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            fail(key, "true or false")
    for key in ("padding_side", "truncation_side"):
        if key in config and config[key] not in ("left", "right"):
            fail(key, '"left" or "right"')
    limit = config.get("model_max_length")
    if limit is not None and not (
        (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0)
        or (isinstance(limit, float) and limit >= 0 and limit < float("inf"))
    ):
        fail("model_max_length", "a number >= 0")
    names = config.get("model_input_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        fail("model_input_names", "a list of strings")
    for key in ("tokenizer_class",):
        if config.get(key) is not None and not isinstance(config[key], str):
            fail(key, "a class name")
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key)
        if extra is None:
            continue
        values = extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else None
        if values is None or not all(_is_token(t) for t in values):
            fail(key, "a list of tokens (or an object of name -> token)")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            fail("added_tokens_decoder", 'an object of id -> {"content": ...}')
        for index, token in decoder.items():
            if not (
                isinstance(index, int) or (isinstance(index, str) and index.isdigit() and len(index) < 10)
            ):
                fail("added_tokens_decoder", f"token ids as keys, not {index!r}")
            if not _is_token(token):
                fail("added_tokens_decoder", f'{{"content": ...}} for id {index}, not {token!r}')
    template = config.get("chat_template")
    if template is not None and not (
        _is_text(template)
        or (isinstance(template, dict) and all(_is_text(v) for v in template.values()))
        or (
            isinstance(template, list)
            and all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and _is_text(t.get("template"))
                for t in template
            )
        )
    ):
        fail("chat_template", 'a template string, or a list of {"name": ..., "template": ...}')


def read_tokenizer_config(repo: Repo) -> dict[str, Any]:
    """tokenizer_config.json merged with the older side files and any separate chat template file."""
    path = repo.get_optional(TOKENIZER_CONFIG_FILE)
    config: dict[str, Any] = _read_json(path, dict) if path is not None else {}
    if path is not None:
        check_tokenizer_settings(config, path)
        if "chat_template" in config:
            config["_chat_template_source"] = str(path)
    config.pop("init_inputs", None)
    config.pop("auto_map", None)  # custom code is AutoTokenizer's business (autolm.remote_code)

    if "added_tokens_decoder" not in config:
        # Older layout: special tokens in special_tokens_map.json, added tokens in added_tokens.json
        specials_path = repo.get_optional(SPECIAL_TOKENS_MAP_FILE)
        if specials_path is not None:
            specials_map = _read_json(specials_path, dict)
            check_tokenizer_settings(specials_map, specials_path)
            for key, value in specials_map.items():
                if key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                    existing = list(
                        config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
                    )
                    config["extra_special_tokens"] = existing + [v for v in value if v not in existing]
                    config.pop("additional_special_tokens", None)
                else:
                    config[key] = value
        added_path = repo.get_optional("added_tokens.json")
        if added_path is not None:
            specials = {
                _content(config[k])
                for k in (
                    "bos_token",
                    "eos_token",
                    "unk_token",
                    "sep_token",
                    "pad_token",
                    "cls_token",
                    "mask_token",
                )
                if config.get(k)
            }
            specials |= {_content(t) for t in config.get("extra_special_tokens") or []}
            added = _read_json(added_path, dict)
            for token, index in added.items():
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    raise TokenizerError(
                        f"{added_path}: the token {token!r} has the id {index!r}; ids are integers >= 0.",
                        files=[added_path],
                        key=token,
                    )
            config["added_tokens_decoder"] = {
                index: {"content": token, "normalized": token not in specials, "special": token in specials}
                for token, index in added.items()
            }

    # A separate template file wins over the config entry
    jinja_path = repo.get_optional("chat_template.jinja")
    json_path = repo.get_optional("chat_template.json")
    if jinja_path is not None:
        config["chat_template"] = converters.read_text(jinja_path)
        config["_chat_template_source"] = str(jinja_path)
    elif json_path is not None:
        template = _read_json(json_path)
        template = template.get("chat_template") if isinstance(template, dict) else template
        config["chat_template"] = template
        config["_chat_template_source"] = str(json_path)
        check_tokenizer_settings({"chat_template": template}, json_path)
    extra_templates = _named_templates(repo)
    if extra_templates:
        named = config.get("chat_template")
        if isinstance(named, list):
            named = {t["name"]: t["template"] for t in named}
        elif isinstance(named, str):
            named = {"default": named}
        config["chat_template"] = {**(named or {}), **extra_templates}
    return config


def _named_templates(repo: Repo) -> dict[str, str]:
    # additional_chat_templates/<name>.jinja: extra templates selectable by name
    try:
        files = repo.list_files()
    except (NotImplementedError, OSError):
        return {}  # a repo that cannot list its files (offline hub) just has no extra templates
    names = [f for f in files if f.startswith("additional_chat_templates/") and f.endswith(".jinja")]
    return {Path(f).stem: converters.read_text(repo.get(f)) for f in names}


def _content(token: Any) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def _build_backend(repo: Repo, recipe: str, init: dict[str, Any]):
    """Build the backend without tokenizer.json; returns (tokenizer, tokens to register as added)."""
    has = {name: repo.exists(name) for name in ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")}
    if recipe == "auto":
        if has["tokenizer.model"]:
            recipe = "sentencepiece"
        elif has["vocab.json"] and has["merges.txt"]:
            recipe = "gpt2"
        elif has["vocab.txt"]:
            recipe = "wordpiece"
    if recipe in ("gpt2", "qwen2") and has["vocab.json"] and has["merges.txt"]:
        vocab = converters.read_vocab_json(repo.get("vocab.json"))
        merges = converters.read_merges_txt(repo.get("merges.txt"))
        return converters.byte_level_bpe(
            vocab, merges, recipe, bool(init.get("add_prefix_space") or False)
        ), []
    if recipe == "sentencepiece" and has["tokenizer.model"]:
        spm = converters.read_sentencepiece_model(repo.get("tokenizer.model"))
        add_prefix_space = init.get("add_prefix_space")
        return converters.sentencepiece_tokenizer(
            spm,
            add_prefix_space=True if add_prefix_space is None else bool(add_prefix_space),
            legacy=bool(init.get("legacy", False)),
        )
    if recipe == "wordpiece" and has["vocab.txt"]:
        from tokenizers import processors

        vocab = converters.read_vocab_txt(repo.get("vocab.txt"))
        unk = _content(init.get("unk_token") or "[UNK]")
        if unk not in vocab:
            raise TokenizerError(
                f"{repo.get('vocab.txt')} has no {unk!r} token (the unk_token), which WordPiece needs for any "
                "word it cannot split. Re-download vocab.txt, or set unk_token in tokenizer_config.json.",
                files=[repo.get("vocab.txt")],
                key="unk_token",
            )
        tok = converters.wordpiece(
            vocab,
            unk_token=_content(init.get("unk_token") or "[UNK]"),
            do_lower_case=init.get("do_lower_case", True),
            tokenize_chinese_chars=init.get("tokenize_chinese_chars", True),
            strip_accents=init.get("strip_accents"),
        )
        cls_tok, sep_tok = (
            _content(init.get("cls_token") or "[CLS]"),
            _content(init.get("sep_token") or "[SEP]"),
        )
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_tok}:0 $A:0 {sep_tok}:0",
            pair=f"{cls_tok}:0 $A:0 {sep_tok}:0 $B:1 {sep_tok}:1",
            special_tokens=[(cls_tok, vocab.get(cls_tok, 2)), (sep_tok, vocab.get(sep_tok, 3))],
        )
        return tok, []
    found = ", ".join(f for f in _safe_list(repo) if not f.startswith(".")) or "nothing"
    needs = (
        f" (tokenizer_class {init.get('tokenizer_class')} needs the {recipe} files)"
        if recipe != "auto"
        else ""
    )
    raise TokenizerError(
        f"No tokenizer files in {repo.name}: looked for {', '.join(VOCAB_FILES)}{needs}. Found: {found}. "
        "Copy the tokenizer files from the original model, or pass a directory that has them."
    )


def _safe_list(repo: Repo) -> list[str]:
    try:
        return repo.list_files()
    except (NotImplementedError, OSError):
        return []
