"""Qwen-1's tokenizer (qwen.tiktoken, run by tiktoken) and model.chat against what Qwen-7B-Chat's own code
computed: tests/data/qwen1/expected_tokenizer.json and expected_chat.json, written by
scripts/make_qwen1_tokenizer_fixtures.py under transformers 4.32.1 with the repo's tokenization_qwen.py of
two revisions ("legacy": `<extra_N>` tokens after the vocabulary; "later": `<|extra_N|>` from id 151643),
on a small vocabulary learned from the test corpus (tests/qwen1_vocab.py).
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

import autolm
from autolm import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, QWenTokenizer
from autolm.errors import ChatTemplateError, TokenizerError
from autolm.generation.chat import chatml_context

sys.path.insert(0, str(Path(__file__).parent))
import qwen1_vocab  # noqa: E402

DATA = Path(__file__).parent / "data" / "qwen1"
EXPECTED = json.loads((DATA / "expected_tokenizer.json").read_text(encoding="utf-8"))
CHAT = json.loads((DATA / "expected_chat.json").read_text(encoding="utf-8"))
BATCH = ["Hello, world!", "你好", "def f(x): return x"]


@pytest.fixture(scope="module")
def later_dir(tmp_path_factory) -> Path:
    """The test vocabulary padded to 151643 tokens, as later revisions need, with a tokenization_qwen.py
    that says which revision it is (and would fail the test if anything imported it)."""
    folder = tmp_path_factory.mktemp("qwen1_later")
    ranks = qwen1_vocab.read_ranks(DATA / "tokenizer" / "qwen.tiktoken")
    qwen1_vocab.write_ranks(qwen1_vocab.padded_ranks(ranks), folder / "qwen.tiktoken")
    (folder / "tokenizer_config.json").write_text((DATA / "tokenizer" / "tokenizer_config.json").read_text())
    (folder / "tokenization_qwen.py").write_text(
        'raise RuntimeError("imported")\nEXTRAS = tuple((f"<|extra_{i}|>" for i in range(205)))\n'
    )
    return folder


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qwen1_legacy")
    for f in (DATA / "tokenizer").iterdir():
        shutil.copy(f, folder / f.name)
    (folder / "tokenization_qwen.py").write_text(
        'raise RuntimeError("imported")\nextras = tuple([f"<extra_{i}>" for i in range(200)])\n'
    )
    return folder


def tokenizers(legacy_dir: Path, later_dir: Path):
    return {
        "legacy": AutoTokenizer.from_pretrained(legacy_dir, trust_remote_code=True),
        "later": AutoTokenizer.from_pretrained(later_dir),
    }


@pytest.mark.parametrize("revision", ["legacy", "later"])
def test_ids_tokens_and_text_equal_the_repo_code(revision, legacy_dir, later_dir):
    tok = tokenizers(legacy_dir, later_dir)[revision]
    expected = EXPECTED[revision]
    assert isinstance(tok, QWenTokenizer) and tok.special_tokens_layout == revision
    assert (len(tok), tok.eod_id, tok.im_start_id, tok.im_end_id) == (
        expected["len"],
        expected["eod_id"],
        expected["im_start_id"],
        expected["im_end_id"],
    )
    assert [list(item) for item in tok.special_tokens.items()] == expected["special_tokens"]
    assert len(tok.special_tokens) == 208
    checked = 0
    for item in expected["lines"]:
        text = item["text"]
        if "error" in item:
            with pytest.raises(TokenizerError, match="allowed_special"):
                tok(text)
        else:
            enc = tok(text)
            assert {k: list(v) for k, v in enc.items()} == item["call"], text
            assert tok.decode(enc["input_ids"]) == item["decode"], text
            assert [t if isinstance(t, str) else t.hex() for t in tok.tokenize(text)] == item["tokens"], text
            checked += 1
        allowed = tok(text, allowed_special="all")["input_ids"]
        assert allowed == item["allowed_all"], text
        assert tok(text, allowed_special=set(), disallowed_special=())["input_ids"] == item["allowed_none"]
        assert tok.decode(allowed) == item["decode_allowed"]
        assert tok.decode(allowed, skip_special_tokens=True) == item["decode_allowed_skip"], text
        if item["disallowed_all"] == "ValueError":
            with pytest.raises(ValueError):
                tok(text, disallowed_special="all")
        else:
            assert tok(text, disallowed_special="all")["input_ids"] == item["disallowed_all"]
    assert checked >= 50  # English, Chinese, code, whitespace lines of the corpus


@pytest.mark.parametrize("revision", ["legacy", "later"])
def test_partial_characters_batches_padding_truncation(revision, legacy_dir, later_dir):
    tok = tokenizers(legacy_dir, later_dir)[revision]
    expected = EXPECTED[revision]
    partial = expected["partial"]
    ids = partial["ids"]
    assert tok("你好，世界")["input_ids"] == ids
    assert [tok.decode(ids[:k]) for k in range(len(ids) + 1)] == partial["replace"]
    if revision == "later":  # the legacy code ignores errors=; autolm honours it for both
        assert [tok.decode(ids[:k], errors="ignore") for k in range(len(ids) + 1)] == partial["ignore"]
    assert "\ufffd" not in "".join(tok.decode(ids[:k], errors="ignore") for k in range(len(ids) + 1))
    assert {k: [list(x) for x in v] for k, v in tok(BATCH).items()} == expected["batch"]
    with pytest.raises(TokenizerError, match="pad token"):
        tok(BATCH, padding=True)
    tok.pad_token_id = tok.eod_id  # how Qwen-1 users set one
    assert tok.pad_token == "<|endoftext|>"
    assert {k: [list(x) for x in v] for k, v in tok(BATCH, padding=True).items()} == expected["batch_right"]
    tok.padding_side = "left"
    left = tok(BATCH, padding=True)
    assert {k: [list(x) for x in v] for k, v in left.items()} == expected["batch_left"]
    assert tok(BATCH, truncation=True, max_length=4)["input_ids"] == expected["truncated"]
    assert (
        tok.batch_decode(expected["batch_left"]["input_ids"], skip_special_tokens=True)
        == expected["batch_decode"]
    )
    pt = tok(BATCH, padding=True, return_tensors="pt")
    assert pt["input_ids"].tolist() == expected["batch_left"]["input_ids"]


def test_save_load_pickle_and_errors(legacy_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(legacy_dir)
    text = "我们在模型加载的时候 trust_remote_code"
    ids = tok(text)["input_ids"]
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.special_tokens_layout == "legacy" and again(text)["input_ids"] == ids
    assert pickle.loads(pickle.dumps(tok))(text)["input_ids"] == ids
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.im_end_id
    assert tok.convert_ids_to_tokens(tok.im_start_id) == "<|im_start|>"
    assert tok.convert_tokens_to_string(tok.tokenize(text)) == text
    with pytest.raises(TokenizerError, match="cannot add tokens"):
        tok.add_tokens(["newword"])
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.decode([5000])
    with pytest.raises(ChatTemplateError, match="model.chat"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text('{"tokenizer_class": "QWenTokenizer"}')
    with pytest.raises(TokenizerError, match="qwen.tiktoken"):
        AutoTokenizer.from_pretrained(broken)
    (broken / "qwen.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(TokenizerError, match="tiktoken vocabulary"):
        AutoTokenizer.from_pretrained(broken)
    assert autolm.QWenTokenizer is QWenTokenizer


@pytest.fixture(scope="module")
def chat_repo(tmp_path_factory) -> Path:
    """The chat fixture as a repo with auto_map'd code files that must never be imported."""
    folder = tmp_path_factory.mktemp("qwen1_chat")
    for f in (DATA / "chat").iterdir():
        shutil.copy(f, folder / f.name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoTokenizer"] = ["tokenization_qwen.QWenTokenizer", None]
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py"):
        (folder / name).write_text('raise RuntimeError("repo code was imported")\n')
    (folder / "tokenization_qwen.py").write_text(
        'raise RuntimeError("repo code was imported")\n# tuple([f"<extra_{i}>" for i in range(200)])\n'
    )
    return folder


def test_chat_turns_and_history_equal_the_repo_code(chat_repo):
    # the articles' call: device_map="auto" puts the model on the CPU on a machine without a GPU
    model = AutoModelForCausalLM.from_pretrained(chat_repo, device_map="auto", trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(chat_repo, trust_remote_code=True)
    assert type(model).__module__.startswith("autolm.") and isinstance(tok, QWenTokenizer)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    history = None
    for turn in CHAT["turns"]:
        assert [list(t) for t in history or []] == turn["history_before"]
        kwargs = {} if turn["system"] is None else {"system": turn["system"]}
        response, history = model.chat(tok, turn["query"], history=history, **kwargs)
        assert response == turn["response"], turn["query"]
    assert [list(t) for t in history] == CHAT["history"]
    # the stream yields the decoded reply so far, unstripped, as the repo's stream generator does
    streamed = list(model.chat_stream(tok, CHAT["turns"][0]["query"], history=None))
    assert streamed and streamed[-1].strip() == CHAT["turns"][0]["response"]
    assert all(later.startswith(earlier.rstrip("\ufffd")) for earlier, later in zip(streamed, streamed[1:]))


def test_chatml_context_drops_old_turns_past_max_window_size(chat_repo):
    tok = AutoTokenizer.from_pretrained(chat_repo)
    history = [tuple(t) for t in CHAT["long_history"]]
    for case in CHAT["contexts"]:
        text, ids = chatml_context(
            tok, "last question", history, "You are a helpful assistant.", case["max_window_size"]
        )
        assert (text, ids) == (case["raw_text"], case["context_tokens"]), case["max_window_size"]
    assert len({len(c["context_tokens"]) for c in CHAT["contexts"]}) == 3  # 2, 1 and 0 old turns kept


def test_generation_config_and_flag_dtype(chat_repo, tmp_path):
    generation = GenerationConfig.from_pretrained(chat_repo, trust_remote_code=True)
    written = json.loads((chat_repo / "generation_config.json").read_text())
    assert (
        generation.chat_format,
        generation.top_p,
        generation.repetition_penalty,
        generation.max_new_tokens,
    ) == (
        written["chat_format"],
        written["top_p"],
        written["repetition_penalty"],
        written["max_new_tokens"],
    )
    config = json.loads((chat_repo / "config.json").read_text())
    for flags, dtype in (
        ({"bf16": True, "fp16": False, "fp32": False}, torch.bfloat16),
        ({"bf16": False, "fp16": True, "fp32": False}, torch.float16),
        ({"bf16": False, "fp16": False, "fp32": False}, torch.float32),  # automatic: float32 on the CPU
    ):
        folder = tmp_path / "_".join(k for k, v in flags.items() if v) or tmp_path / "auto"
        shutil.copytree(chat_repo, folder, dirs_exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**config, **flags}))
        assert AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).dtype == dtype
        # an explicit dtype is the caller's choice
        assert AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).dtype == torch.float32
