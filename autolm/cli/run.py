"""The model-running commands of `autolm`: `generate`, `chat` and `inspect`.

`cli.py` registers them (`add_run_commands`); its thin `cmd_*` functions call the `run_*` ones here.
Every command that takes a model falls back to the embedded default (SmolLM2-135M-Instruct GGUF) and
says so on stderr. Text goes to stdout as it is generated; timings, the model in use and progress bars
go to stderr.

`chat`: an interrupted reply (Ctrl-C) is dropped together with the message that asked for it, so the
history only ever holds complete turns.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _size  # one formatter for the CLI's file sizes

logger = logging.getLogger("autolm")

CHAT_HELP = "Commands: /reset clears the conversation, /exit (or Ctrl-D) quits, Ctrl-C stops a reply."


# --- shared: options, the model, loading ---------------------------------------------------------


def _info(args: argparse.Namespace, message: str) -> None:
    """A status line on stderr (which model, load time, speed); --quiet drops it."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def setup(args: argparse.Namespace) -> None:
    """Logging to stderr (warnings, or everything with --debug) and progress bars (off with --quiet)."""
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("autolm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if args.quiet:
        from ..hub import disable_progress_bars

        disable_progress_bars()


def resolve_model(args: argparse.Namespace) -> str:
    """The model argument (a packaged model's name, e.g. "gemma3-270m", gives its file), or the default
    model's path (announced on stderr)."""
    if args.model:
        from ..defaults import PACKAGED_MODELS, packaged_model_path

        if args.model in PACKAGED_MODELS and not Path(args.model).exists():
            path = packaged_model_path(args.model)
            _info(args, f"Using the packaged model {PACKAGED_MODELS[args.model]}: {path}")
            return str(path)
        return args.model
    from ..defaults import DEFAULT_MODEL_DESCRIPTION, default_model_path

    path = default_model_path()
    _info(args, f"No model given; using the default model {DEFAULT_MODEL_DESCRIPTION}: {path}")
    return str(path)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Model and tokenizer for `args.model` (or the default); reports the load time on stderr."""
    from ..auto import AutoModelForCausalLM
    from ..tokenization import AutoTokenizer

    name = resolve_model(args)
    start = time.perf_counter()
    kwargs = {"dtype": args.dtype} if args.dtype else {}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name)
    _info(
        args,
        f"Loaded {type(model).__name__} ({model.dtype}) and its tokenizer in {time.perf_counter() - start:.2f} s.",
    )
    return model, tokenizer


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy unless --temperature > 0; --seed makes sampling repeatable."""
    import torch

    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.threads:
        # on a busy machine one thread can beat several that wait for each other
        torch.set_num_threads(args.threads)
    settings: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.temperature and args.temperature > 0:
        settings |= {"do_sample": True, "temperature": args.temperature}
    else:
        settings |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return settings


@dataclass
class Reply:
    text: str
    tokens: int
    seconds: float  # from the call to the last token
    first_token_s: float | None  # from the call to the first token
    interrupted: bool = False


def _stdout_streamer(tokenizer):
    """A `TextStreamer` printing to stdout (flushed per word) that also keeps the text in `.parts`.
    Built on call: the generation package imports torch, which `autolm cache` should not pay for."""
    from ..generation import TextStreamer

    class StdoutStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.parts.append(text)
            super().on_finalized_text(text, stream_end)

    streamer = StdoutStreamer(tokenizer, file=sys.stdout, skip_special_tokens=True)
    streamer.parts = []
    return streamer


def stream_reply(model, tokenizer, input_ids, settings: dict[str, Any]) -> Reply:
    """Generate from `input_ids` (1, P), printing text to stdout as it completes.

    Ctrl-C stops the reply; what was generated so far is returned with `interrupted=True`.
    """
    from ..generation import generate_tokens

    streamer = _stdout_streamer(tokenizer)
    start = time.perf_counter()
    first: float | None = None
    count = 0
    interrupted = False
    try:
        for token in generate_tokens(model, input_ids, tokenizer=tokenizer, **settings):
            if first is None:
                first = time.perf_counter() - start
            count += 1
            streamer.put(token.cpu())
    except KeyboardInterrupt:
        interrupted = True
    streamer.end()
    return Reply("".join(streamer.parts), count, time.perf_counter() - start, first, interrupted)


def _speed(reply: Reply) -> str:
    rate = reply.tokens / reply.seconds if reply.seconds > 0 else float("inf")
    first = f"; first token after {reply.first_token_s:.2f} s" if reply.first_token_s is not None else ""
    return f"{reply.tokens} tokens in {reply.seconds:.2f} s, {rate:.1f} tokens/s{first}"


def _prompt_ids(tokenizer, messages: list[dict[str, str]]):
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]


# --- generate ------------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    setup(args)
    model, tokenizer = load(args)
    use_chat = args.chat if args.chat is not None else bool(tokenizer.chat_template)
    if use_chat and not tokenizer.chat_template:
        from ..errors import ChatTemplateError

        raise ChatTemplateError(
            f"{args.model or 'The model'} has no chat template, so --chat cannot apply one. "
            "Run without --chat to continue the prompt as plain text."
        )
    if use_chat:
        input_ids = _prompt_ids(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    reply = stream_reply(model, tokenizer, input_ids.to(model.device), sampling_settings(args))
    _info(args, ("Interrupted: " if reply.interrupted else "") + _speed(reply) + ".")
    return 130 if reply.interrupted else 0


# --- chat ----------------------------------------------------------------------------------------


def run_chat(args: argparse.Namespace) -> int:
    """An interactive conversation. An interrupted reply (Ctrl-C) is dropped together with the message
    that asked for it, so the history only ever holds complete turns."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform (e.g. Windows)
        pass
    setup(args)
    model, tokenizer = load(args)
    if not tokenizer.chat_template:
        from ..errors import ChatTemplateError

        raise ChatTemplateError(
            f"{args.model or 'The model'} has no chat template, so it cannot hold a conversation. "
            "Use `autolm generate MODEL -p TEXT --no-chat` to continue text, or a chat (instruct) model."
        )
    settings = sampling_settings(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    _info(args, CHAT_HELP)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-C) " + CHAT_HELP)
            continue
        query = line.strip()
        if not query:
            continue
        if query in ("/exit", "/quit", "/bye"):
            return 0
        if query == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        if query in ("/help", "/?"):
            print(CHAT_HELP)
            continue
        messages = [*system, *history, {"role": "user", "content": query}]
        input_ids = _prompt_ids(tokenizer, messages).to(model.device)
        reply = stream_reply(model, tokenizer, input_ids, settings)
        if reply.interrupted:
            print("(reply interrupted and dropped from the conversation)")
            continue
        history += [{"role": "user", "content": query}, {"role": "assistant", "content": reply.text.strip()}]
        if args.verbose:
            _info(args, _speed(reply))


# --- inspect -------------------------------------------------------------------------------------


def _count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix} ({n:,})"
    return f"{n:,}"


def _safetensors_parameters(paths: list[Path]) -> tuple[int, dict[str, int]]:
    """Parameter count and tensors per dtype, from the headers alone."""
    total, dtypes = 0, {}
    for path in paths:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        for info in header.values():
            total += math.prod(info["shape"])
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
    return total, dtypes


def _tokenizer_kind(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    model = type(backend.model).__name__
    if model == "Unigram":
        return "Unigram (SentencePiece)"
    if model == "BPE":
        if getattr(backend.model, "byte_fallback", False) or "Metaspace" in repr(backend.pre_tokenizer):
            return "BPE (SentencePiece, byte fallback)"
        if "ByteLevel" in repr(backend.decoder):
            return "BPE (byte-level)"
    return model


def _custom_code(repo) -> str:
    """Whether the repo ships its own model code: its files, pin and the packages it lacks."""
    from ..remote_code import describe_remote_code

    code = describe_remote_code(repo)
    if code is None:
        return "no"
    lines = ["yes (runs only with trust_remote_code=True or a pin in autolm.lock)"]
    for entry in code["files"]:
        lines.append(f"  {entry['path']}  {_size(entry['size'])}  sha256 {entry['sha256'][:16]}...")
    if code["code_repos"]:
        lines.append(f"  code from other repos: {', '.join(code['code_repos'])}")
    if code["lock"]:
        lines.append(f"  autolm.lock line: {code['lock']}")
    if code["missing"]:
        lines.append(f"  needs packages not installed: {', '.join(code['missing'])}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    setup(args)
    from ..hub import open_repo

    name = resolve_model(args)
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:  # a folder holding one GGUF file describes that file
            path = ggufs[0]
    rows: list[tuple[str, str]] = [("model", str(path) if path.suffix == ".gguf" else name)]
    if path.suffix == ".gguf" and path.is_file():
        rows += _inspect_gguf(path)
    else:
        rows += _inspect_repo(open_repo(name))
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        if key == "files":
            print("files:")
            print(value)
        else:
            print(f"{key + ':':<{width}} {value}")
    return 0


def _tokenizer_rows(tokenizer) -> list[tuple[str, str]]:
    special = " ".join(
        f"{name}={getattr(tokenizer, f'{name}_token', None)!s}" for name in ("bos", "eos", "pad", "unk")
    )
    return [
        ("tokenizer", f"{_tokenizer_kind(tokenizer)}, vocabulary {len(tokenizer)}"),
        ("special tokens", special),
        ("chat template", "yes" if tokenizer.chat_template else "no"),
    ]


def _inspect_gguf(path: Path) -> list[tuple[str, str]]:
    from ..gguf import config_from_gguf, read_gguf, tokenizer_from_gguf

    gguf = read_gguf(path)
    config = config_from_gguf(gguf)
    types: dict[str, int] = {}
    for tensor in gguf.tensors.values():
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    stored = ", ".join(f"{k} ({v} tensors)" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))
    parameters = sum(t.n_elements for t in gguf.tensors.values())
    return [
        ("format", f"GGUF ({gguf.get('general.name') or path.stem})"),
        ("family", f"{config['model_type']} ({config['architectures'][0]})"),
        ("parameters", _count(parameters)),
        ("dtype", f"{stored}; loads as {config['dtype']}"),
        ("context length", str(config["max_position_embeddings"])),
        ("files", f"  {path.name}  {_size(path.stat().st_size)}"),
        *_tokenizer_rows(tokenizer_from_gguf(gguf)),
        ("custom code", "no"),
    ]


def _inspect_repo(repo) -> list[tuple[str, str]]:
    from .. import models
    from ..configuration import PretrainedConfig
    from ..errors import AutolmError

    files = repo.list_files()
    config, _ = PretrainedConfig.get_config_dict(str(repo.local_dir or repo.name))
    model_type = config.get("model_type") or "?"
    architectures = ", ".join(config.get("architectures") or []) or "?"
    supported = models.canonical_model_type(model_type) is not None
    family = f"{model_type} ({architectures})" + ("" if supported else " - not a family autolm implements")
    local = repo.local_dir
    shards = [local / f for f in files if f.endswith(".safetensors") and local and (local / f).is_file()]
    if shards:
        count, dtypes = _safetensors_parameters(shards)
        parameters = _count(count)
        stored = ", ".join(f"{k} ({v} tensors)" for k, v in dtypes.items())
    else:
        parameters, stored = _meta_parameters(config) if supported else "?", "?"
    listing = []
    for f in files:
        size = (local / f).stat().st_size if local and (local / f).is_file() else None
        listing.append(f"  {f}  {_size(size) if size is not None else '-'}")
    rows = [
        (
            "format",
            "safetensors"
            if shards
            else "other (" + (", ".join({Path(f).suffix for f in files}) or "-") + ")",
        ),
        ("family", family),
        ("parameters", parameters),
        ("dtype", f"{stored}; config says {config.get('dtype') or config.get('torch_dtype') or '-'}"),
        ("context length", str(config.get("max_position_embeddings", "?"))),
        ("files", "\n".join(listing) or "  (none)"),
    ]
    try:
        from ..tokenization import AutoTokenizer

        rows += _tokenizer_rows(AutoTokenizer.from_pretrained(str(local or repo.name)))
    except AutolmError as error:
        rows.append(("tokenizer", f"none loadable ({error})"))
    rows.append(("custom code", _custom_code(repo)))
    return rows


def _meta_parameters(config: dict) -> str:
    """Parameter count of a model built on the meta device (no weights read)."""
    import torch

    from ..auto import AutoConfig, AutoModelForCausalLM

    config_object = AutoConfig.for_model(
        config["model_type"], **{k: v for k, v in config.items() if k != "model_type"}
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_object)
    return _count(model.num_parameters())


# --- the parsers ---------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument(
        "model", nargs="?", help=model_help + " (default: the embedded SmolLM2-135M-Instruct GGUF)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines on stderr")
    p.add_argument("--debug", action="store_true", help="debug logging; errors show their traceback")


def _generation_options(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="0 or absent: greedy")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for sampling")
    p.add_argument("--dtype", default=None, help="weights dtype: auto, float32, bfloat16, float16")
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's)"
    )


def add_run_commands(sub: argparse._SubParsersAction, commands: dict[str, Callable]) -> None:
    """Register `generate`, `chat` and `inspect` on the `autolm` parser; `commands` maps each name to
    its `cmd_*` function in `cli.py`."""
    model_help = "a model directory, hub id, .gguf file or packaged model (gemma3-270m)"
    p = sub.add_parser("generate", help="continue a prompt, streaming the text")
    _common(p, model_help)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the chat template (default: when the model has one)",
    )
    _generation_options(p, 256)
    p.set_defaults(func=commands["generate"])

    p = sub.add_parser("chat", help="talk with a model in the terminal")
    _common(p, model_help)
    p.add_argument("--system", metavar="TEXT", help="a system prompt")
    p.add_argument("--verbose", "-v", action="store_true", help="show tokens/s after each reply")
    _generation_options(p, 512)
    p.set_defaults(func=commands["chat"])

    p = sub.add_parser("inspect", help="describe a model without loading its weights")
    _common(p, model_help)
    p.set_defaults(func=commands["inspect"])
